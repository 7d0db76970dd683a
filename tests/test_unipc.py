"""UniPC (``UniPCMultistepScheduler``): predictor-corrector as a triangular multistep system.

Step i reads x[i+1], out_i and, through the earlier data predictions its predictor and corrector
use, x[i+1+l] and out_{i+l} for l = 1..L (L = 2 with solver_order 2 and the corrector on). The
outside oracle is diffusers' own step loop on the analytic Gaussian mixture's exact denoiser
(flow matching: the exact rectified-flow velocity), in Wan's flow setting and SD's VP setting.
"""

import dataclasses

import pytest
import torch
from diffusers import UniPCMultistepScheduler

from paratAA import Schedule, ScheduleError, sequential, solve
from paratAA.baselines.paradigms import solve_paradigms
from paratAA.baselines.parasolver import solve_parasolver
from tests.mixture_problems import check_warm_start_evaluates_once, mixture_problem, scheduler_loop

pytestmark = pytest.mark.usefixtures("single_thread")

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
# Wan 2.1's scheduler config (flow_shift 3.0 at 480p, 5.0 at 720p), everything else the defaults.
WAN = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000,
           solver_order=2)


def _scheduler(num_steps: int, **config) -> UniPCMultistepScheduler:
    scheduler = UniPCMultistepScheduler(**config)
    scheduler.set_timesteps(num_steps, **(dict(mu=0.8) if config.get("use_dynamic_shifting") else {}))
    return scheduler


def _problem(num_steps: int, **config):
    return mixture_problem(_scheduler(num_steps, **config), num_steps)


def _diffusers_loop(eps_fn, noise, num_steps: int, **config) -> torch.Tensor:
    return scheduler_loop(_scheduler(num_steps, **config), eps_fn, noise)


CONFIGS = {
    "wan": WAN,
    "wan 720p": dict(WAN, flow_shift=5.0),
    "wan bh1": dict(WAN, solver_type="bh1", final_sigmas_type="sigma_min"),
    "wan no corrector": dict(WAN, disable_corrector=list(range(100))),
    "wan corrector partly off": dict(WAN, disable_corrector=[0, 2, 3]),
    "sd eps": SD,
    "sd v": dict(SD, prediction_type="v_prediction"),
    "sd sample": dict(SD, prediction_type="sample"),
    "sd bh1 sigma_min": dict(SD, solver_type="bh1", final_sigmas_type="sigma_min"),
    "sd karras": dict(SD, use_karras_sigmas=True),
    "sd trailing": dict(SD, timestep_spacing="trailing"),
    "sd no lower_order_final": dict(SD, lower_order_final=False, final_sigmas_type="sigma_min"),
    "sd predict eps": dict(SD, predict_x0=False, final_sigmas_type="sigma_min"),
    "sd order 1": dict(SD, solver_order=1),
    "sd order 3": dict(SD, solver_order=3),
    "sd exponential": dict(SD, use_exponential_sigmas=True),
    "zero snr v trailing": dict(SD, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                                timestep_spacing="trailing"),
    "flow dynamic shift": dict(WAN, use_dynamic_shifting=True),
}


def _levels(config: dict, num_steps: int) -> int:
    """L as the model predicts it (docs/unipc.md): the predictor reads order-1 earlier predictions,
    the corrector at step k the previous step's order of them plus m_{k-1}."""
    order = config.get("solver_order", 2)
    lower_order_final = config.get("lower_order_final", True)
    predictor = (min(order, (num_steps + 1) // 2) if lower_order_final else min(order, num_steps)) - 1
    disabled = set(config.get("disable_corrector", ()))
    corrector = any(k - 1 not in disabled for k in range(1, num_steps))
    if not corrector:
        return max(predictor, 0)
    return max(predictor, 1, *(min(order, k, num_steps - k + 1 if config.get("lower_order_final", True) else order)
                               for k in range(1, num_steps) if k - 1 not in disabled))


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("num_steps", [1, 2, 3, 7, 20])
def test_sequential_reproduces_diffusers_step_loop(config, num_steps):
    schedule, eps_fn, noise = _problem(num_steps, **config)
    assert schedule.num_levels == _levels(config, num_steps)
    ours = sequential(eps_fn, schedule, noise)[:, 0]
    theirs = _diffusers_loop(eps_fn, noise, num_steps, **config)
    assert float((ours - theirs).abs().max()) < 1e-5 * (1 + float(theirs.abs().max()))  # step() is float32


def test_wan_50_steps_reproduces_diffusers_step_loop():
    schedule, eps_fn, noise = _problem(50, **WAN)
    assert schedule.num_levels == 2 and schedule.prediction_type == "flow_prediction"
    assert int(schedule.timesteps[-1]) == 999  # first sigma 1 - 1e-6, timesteps int(1000 sigma)
    theirs = _diffusers_loop(eps_fn, noise, 50, **WAN)
    ours = sequential(eps_fn, schedule, noise)[:, 0]
    assert float((ours - theirs).abs().max()) < 1e-5 * (1 + float(theirs.abs().max()))


def test_the_shared_verification_reads_every_level():
    """``from_scheduler`` runs diffusers' step loop against the recurrence: a wrong level is caught."""
    from paratAA.schedule.core import verify_step_loop

    scheduler = _scheduler(10, **dict(SD, solver_order=3))
    schedule = Schedule.from_scheduler(scheduler)
    verify_step_loop(schedule, scheduler)
    for level in range(schedule.num_levels):
        levels = list(schedule.levels)
        levels[level] = (levels[level][0] * 1.01, levels[level][1])
        with pytest.raises(ScheduleError, match="differs from the affine coefficients"):
            verify_step_loop(dataclasses.replace(schedule, levels=tuple(levels)), scheduler)


def test_every_level_matters():
    schedule, eps_fn, noise = _problem(20, **WAN)
    reference = sequential(eps_fn, schedule, noise)[:, 0]
    for kept in range(schedule.num_levels):  # drop the levels from kept+1 on: a different sampler
        truncated = dataclasses.replace(schedule, levels=schedule.levels[:kept])
        assert float((sequential(eps_fn, truncated, noise)[:, 0] - reference).abs().max()) > 1e-4
    uncorrected = Schedule.from_scheduler(_scheduler(20, **dict(WAN, disable_corrector=list(range(20)))))
    assert uncorrected.num_levels == 1
    assert float((sequential(eps_fn, uncorrected, noise)[:, 0] - reference).abs().max()) > 1e-4


METHODS = {"FP": dict(order=1, memory_size=1), "FP+": dict(memory_size=1),
           "paper": dict(map_form="affine", init="copy"), "increment": dict(map_form="increment"), "default": {},
           "window 6": dict(window_size=6),
           "memory 3": dict(memory_size=3), "denoised": dict(init="denoised", map_form="affine")}


@pytest.mark.parametrize("setting", ["wan", "sd eps"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_converges_to_the_sequential_sample(method, setting):
    schedule, eps_fn, noise = _problem(20, **CONFIGS[setting])
    reference = sequential(eps_fn, schedule, noise)
    exact = solve(eps_fn, schedule, noise, tol1=0.0, tol2=0.0, **METHODS[method])
    assert exact.converged and exact.iterations <= 20
    assert float((exact.samples - reference[:, 0]).abs().max()) < 1e-10
    early = solve(eps_fn, schedule, noise, tol1=1e-5, tol2=1e-5, **METHODS[method])
    assert float((early.samples - reference[:, 0]).abs().max()) < 1e-3


@pytest.mark.parametrize("setting", ["wan", "sd v", "sd order 3", "wan corrector partly off"])
def test_picard_baselines_converge(setting):
    schedule, eps_fn, noise = _problem(15, **CONFIGS[setting])
    reference = sequential(eps_fn, schedule, noise)[:, 0]
    for result in (solve_paradigms(eps_fn, schedule, noise, window_size=15, tolerance=1e-9),
                   solve_paradigms(eps_fn, schedule, noise, window_size=4, tolerance=1e-9),
                   solve_parasolver(eps_fn, schedule, noise, window_size=8, tolerance=1e-9),
                   solve(eps_fn, schedule, noise, tol1=0.0, tol2=0.0, window_size=5)):
        assert result.converged and result.iterations <= 15
        assert float((result.samples - reference).abs().max()) < 1e-9


def test_warm_start_evaluates_each_level_above_its_frontier_once():
    # Started on the exact trajectory above step 10: step 9 needs the outputs of steps 10 and 11, not 12's.
    calls = check_warm_start_evaluates_once(*_problem(20, **WAN), frontier=10, above=(10, 11))
    assert int((calls[0] == 12).sum()) == 0


REFUSED = {
    "thresholding": dict(SD, thresholding=True),
    "solver_type='bh1' and final_sigmas_type='zero'": dict(SD, solver_type="bh1"),
    "lower_order_final=False": dict(SD, lower_order_final=False),
    "predict_x0=False": dict(SD, predict_x0=False),
    "use_flow_sigmas=True and prediction_type='epsilon'": dict(WAN, prediction_type="epsilon"),
    "prediction_type='flow_prediction' without use_flow_sigmas": dict(WAN, use_flow_sigmas=False),
}


@pytest.mark.parametrize("key", REFUSED)
def test_unsupported_settings_are_refused_by_name(key):
    with pytest.raises(ScheduleError, match=key.replace("(", "\\(").replace(")", "\\)")):
        Schedule.from_scheduler(_scheduler(10, **REFUSED[key]))


def test_eta_and_solver_p_are_refused():
    with pytest.raises(ScheduleError, match="eta"):
        Schedule.from_scheduler(_scheduler(10, **WAN), eta=0.5)
    scheduler = _scheduler(10, **SD)
    scheduler.solver_p = _scheduler(10, **SD)
    with pytest.raises(ScheduleError, match="solver_p"):
        Schedule.from_scheduler(scheduler)


# ------------------------------------------------------------------------------ pipelines (tiny, offline)
def test_sample_on_a_pipeline_with_unipc_equals_the_pipeline():
    """``paratAA.pipelines.sample`` on tiny SD with its scheduler swapped to UniPC: the pipeline's own latents."""
    from paratAA.pipelines import sample
    from paratAA.pipelines.tiny import tiny_pipeline

    pipe = tiny_pipeline("sd")
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    kwargs = dict(prompt=["a red cube", "the dog"], guidance_scale=4.0, num_inference_steps=8, output_type="latent")
    reference = pipe(**kwargs, generator=torch.Generator("cpu").manual_seed(0)).images
    parallel = sample(pipe, **kwargs, generator=torch.Generator("cpu").manual_seed(0), tol1=1e-7, tol2=0.0,
                      window_size=8)
    assert parallel.result.converged and parallel.result.iterations <= 8
    assert float((parallel.images - reference).abs().max()) <= 1e-5 * max(1.0, float(reference.abs().max()))


def test_runner_with_the_unipc_sampler_matches_diffusers_step_loop():
    from paratAA.pipelines.runner import PipelineRunner, text_conditioning
    from paratAA.pipelines.tiny import tiny_pipeline

    runner = PipelineRunner(tiny_pipeline("sd"), "tiny", sampler="unipc")
    assert type(runner.pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    schedule = runner.make_schedule(6)
    assert schedule.num_levels == 2
    noise = runner.sample_noise(0, 2, 6)
    conditioning = text_conditioning(["a red cube", "the dog"], ["", ""], 3.0)
    reference = runner.sequential_reference(noise, conditioning)
    result = solve(runner.eps_fn(conditioning), schedule, noise, tol1=1e-7, tol2=0.0)
    assert result.converged and result.iterations <= 6
    assert float((result.samples - reference).abs().max()) <= 1e-5 * max(1.0, float(reference.abs().max()))
