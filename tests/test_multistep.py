"""DPM-Solver++ 2M (``DPMSolverMultistepScheduler``): a multistep sampler as the same triangular system.

Step i reads x[i+1], out_i and, through the previous data prediction, x[i+2] and out_{i+1}. The
outside oracle is diffusers' own step loop on the analytic Gaussian mixture's exact denoiser.
"""

import dataclasses

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from paratAA import Schedule, ScheduleError, sequential, solve
from paratAA.baselines.paradigms import solve_paradigms
from paratAA.baselines.parasolver import solve_parasolver
from tests.mixture_problems import check_warm_start_evaluates_once, mixture_problem, scheduler_loop

pytestmark = pytest.mark.usefixtures("single_thread")

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _scheduler(num_steps: int, **config) -> DPMSolverMultistepScheduler:
    scheduler = DPMSolverMultistepScheduler(**{**SD_BETAS, **config})
    scheduler.set_timesteps(num_steps)
    return scheduler


def _problem(num_steps: int, **config):
    return mixture_problem(_scheduler(num_steps, **config), num_steps)


def _diffusers_loop(eps_fn, noise, num_steps: int, **config) -> torch.Tensor:
    return scheduler_loop(_scheduler(num_steps, **config), eps_fn, noise)


CONFIGS = [dict(), dict(solver_type="heun"), dict(use_karras_sigmas=True), dict(final_sigmas_type="sigma_min"),
           dict(timestep_spacing="trailing"), dict(solver_order=1)]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "default")
@pytest.mark.parametrize("num_steps", [7, 20])
def test_sequential_reproduces_diffusers_step_loop(config, num_steps):
    schedule, eps_fn, noise = _problem(num_steps, **config)
    assert schedule.is_multistep and float(schedule.a2[-1]) == float(schedule.b2[-1]) == 0
    ours = sequential(eps_fn, schedule, noise)[:, 0]
    theirs = _diffusers_loop(eps_fn, noise, num_steps, **config)
    assert float((ours - theirs).abs().max()) < 1e-5 * (1 + float(theirs.abs().max()))  # step() is float32
    second_order = float(schedule.b2.abs().max()) > 0
    assert second_order == (config.get("solver_order", 2) == 2)  # the multistep terms are really there


def test_the_multistep_terms_matter():
    schedule, eps_fn, noise = _problem(20)
    one_step = dataclasses.replace(schedule, levels=())
    apart = sequential(eps_fn, schedule, noise)[:, 0] - sequential(eps_fn, one_step, noise)[:, 0]
    assert float(apart.abs().max()) > 1e-3


METHODS = {"FP": dict(order=1, memory_size=1), "FP+": dict(memory_size=1), "paper": dict(map_form="affine", init="copy"),
           "increment": dict(map_form="increment"), "default": {}, "window 6": dict(window_size=6),
           "memory 3": dict(memory_size=3)}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_converges_to_the_sequential_sample(method):
    schedule, eps_fn, noise = _problem(20)
    reference = sequential(eps_fn, schedule, noise)
    exact = solve(eps_fn, schedule, noise, tol1=0.0, tol2=0.0, **METHODS[method])
    assert exact.iterations <= 20 and float((exact.samples - reference[:, 0]).abs().max()) < 1e-10
    early = solve(eps_fn, schedule, noise, tol1=1e-5, tol2=1e-5, **METHODS[method])
    assert float((early.samples - reference[:, 0]).abs().max()) < 1e-3
    if method not in ("FP", "paper"):  # the order-K equations propagate across several steps
        assert early.iterations < 20


def test_picard_baselines_and_prediction_types_converge():
    for config in (dict(), dict(prediction_type="v_prediction")):
        schedule, eps_fn, noise = _problem(15, **config)
        reference = sequential(eps_fn, schedule, noise)[:, 0]
        for result in (solve_paradigms(eps_fn, schedule, noise, window_size=15, tolerance=1e-9),
                       solve_parasolver(eps_fn, schedule, noise, window_size=8, tolerance=1e-9),
                       solve(eps_fn, schedule, noise, tol1=0.0, tol2=0.0)):
            assert float((result.samples - reference).abs().max()) < 1e-9


def test_warm_start_evaluates_the_step_above_its_frontier_once():
    # Started on the exact trajectory above step 10: step 9 needs step 10's output, made from x[11].
    check_warm_start_evaluates_once(*_problem(20), frontier=10, above=(10,))


def test_unsupported_settings_are_refused_by_name():
    with pytest.raises(ScheduleError, match="algorithm_type='sde-dpmsolver\\+\\+'"):
        Schedule.from_scheduler(_scheduler(10, algorithm_type="sde-dpmsolver++"))
    with pytest.raises(ScheduleError, match="solver_order=3"):
        Schedule.from_scheduler(_scheduler(10, solver_order=3))
    with pytest.raises(ScheduleError, match="thresholding"):
        Schedule.from_scheduler(_scheduler(10, thresholding=True))
    with pytest.raises(ScheduleError, match="eta"):
        Schedule.from_scheduler(_scheduler(10), eta=0.5)
    assert not Schedule.from_scheduler(_ddim(10)).is_multistep


def _ddim(num_steps):
    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False)
    scheduler.set_timesteps(num_steps)
    return scheduler
