"""Flow-matching (SD3, Flux) and Euler (SDXL) schedules against diffusers' own step loops, and the
analytic rectified-flow Gaussian-mixture velocity."""

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler, LMSDiscreteScheduler

import paratAA
from paratAA import Schedule, ScheduleError
from paratAA.analytic import gaussian_mixture_problem

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
FLUX_CONFIG = dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                   max_image_seq_len=4096)


def sd3_scheduler(steps: int = 28, **overrides) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, **overrides)  # SD3's shipped config
    scheduler.set_timesteps(steps)
    return scheduler


def flux_scheduler(steps: int = 28, mu: float = 0.8) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_CONFIG)
    # What FluxPipeline passes: custom sigmas and a resolution-dependent mu.
    scheduler.set_timesteps(steps, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler


def euler_scheduler(steps: int = 30, **config) -> EulerDiscreteScheduler:
    scheduler = EulerDiscreteScheduler(**{**SD_BETAS, "steps_offset": 1, "timestep_spacing": "leading", **config})
    scheduler.set_timesteps(steps)
    return scheduler


def step_loop_error(schedule: Schedule, scheduler) -> float:
    """Largest relative difference between ``schedule.step`` and diffusers' ``step`` over a whole loop,
    each step on fresh random inputs (the scheduler keeps a step counter, so steps go in its order)."""
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for k, t in enumerate(scheduler.timesteps):
        i = schedule.num_steps - 1 - k
        x, out = (torch.randn(4, 5, generator=gen, dtype=torch.float64) for _ in range(2))
        if hasattr(scheduler, "scale_model_input"):
            scaled = scheduler.scale_model_input(x, t)
            if schedule.input_scale is not None:
                torch.testing.assert_close(scaled.double(), schedule.input_scale[i] * x, rtol=1e-6, atol=1e-6)
        expected = scheduler.step(out, t, x).prev_sample.double()
        got = schedule.step(i, x, out, torch.zeros_like(x))
        worst = max(worst, float(((got - expected).abs() / (1 + expected.abs())).max()))
    return worst


def assert_timesteps_are_the_schedulers(schedule: Schedule, scheduler) -> None:
    assert schedule.timesteps.dtype == scheduler.timesteps.dtype
    assert torch.equal(schedule.timesteps, scheduler.timesteps.flip(0))
    assert torch.all(schedule.timesteps[1:] > schedule.timesteps[:-1])


# ------------------------------------------------------------------------------------ item 1: schedules
@pytest.mark.parametrize("make", [
    lambda: sd3_scheduler(28),
    lambda: sd3_scheduler(50),
    lambda: sd3_scheduler(20, use_karras_sigmas=True),
    lambda: sd3_scheduler(20, use_exponential_sigmas=True),
    lambda: sd3_scheduler(20, shift_terminal=0.1),
    lambda: flux_scheduler(28, mu=0.8),
    lambda: flux_scheduler(4, mu=1.15),
], ids=["sd3-28", "sd3-50", "karras", "exponential", "shift-terminal", "flux-28", "flux-4"])
def test_flow_matching_reproduces_step(make):
    scheduler = make()
    schedule = Schedule.from_scheduler(scheduler)
    assert schedule.prediction_type == "flow_prediction"
    assert torch.all(schedule.a == 1) and torch.all(schedule.c == 0)
    sigmas = scheduler.sigmas.double()
    torch.testing.assert_close(schedule.b, (sigmas[1:] - sigmas[:-1]).flip(0))  # b = sigma_next - sigma
    torch.testing.assert_close(schedule.scheduler_sigmas, sigmas[:-1].flip(0))
    assert_timesteps_are_the_schedulers(schedule, scheduler)
    assert step_loop_error(schedule, scheduler) < 1e-5
    assert torch.all(schedule.sigma >= 0) and float(schedule.sigma[0]) < 1e-6 < float(schedule.sigma[-1])


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("config", [
    dict(timestep_spacing="leading"),
    dict(timestep_spacing="trailing", steps_offset=0),
    dict(timestep_spacing="linspace", steps_offset=0),
    dict(use_karras_sigmas=True),
    dict(final_sigmas_type="sigma_min", use_karras_sigmas=True),
], ids=["leading", "trailing", "linspace", "karras", "karras-sigma-min"])
def test_euler_reproduces_step(prediction, config):
    scheduler = euler_scheduler(30, prediction_type=prediction, **config)
    schedule = Schedule.from_scheduler(scheduler)
    assert schedule.prediction_type == prediction
    torch.testing.assert_close(schedule.input_scale, 1 / (scheduler.sigmas[:-1].double().flip(0) ** 2 + 1).sqrt())
    assert_timesteps_are_the_schedulers(schedule, scheduler)
    assert step_loop_error(schedule, scheduler) < 1e-5
    # Every Euler step with epsilon prediction is x + (s' - s) eps: the same a, b as flow matching.
    if prediction == "epsilon":
        assert torch.all(schedule.a == 1)


def test_euler_continuous_v_prediction_timesteps():
    scheduler = euler_scheduler(20, prediction_type="v_prediction", timestep_type="continuous")
    schedule = Schedule.from_scheduler(scheduler)
    assert_timesteps_are_the_schedulers(schedule, scheduler)
    assert step_loop_error(schedule, scheduler) < 1e-5


@pytest.mark.parametrize("make, kwargs, match", [
    (lambda: sd3_scheduler(10, stochastic_sampling=True), {}, "stochastic_sampling"),
    (lambda: sd3_scheduler(10), dict(eta=0.5), "eta"),
    (lambda: euler_scheduler(10), dict(s_churn=1.0), "s_churn"),
    (lambda: FlowMatchEulerDiscreteScheduler(), {}, "set_timesteps"),
    (lambda: EulerDiscreteScheduler(), {}, "set_timesteps"),
])
def test_non_affine_flow_and_euler_settings_are_refused(make, kwargs, match):
    with pytest.raises(ScheduleError, match=match):
        Schedule.from_scheduler(make(), **kwargs)


def test_unknown_scheduler_names_the_supported_ones():
    scheduler = LMSDiscreteScheduler()
    scheduler.set_timesteps(10)
    with pytest.raises(ScheduleError, match="LMSDiscreteScheduler.*FlowMatchEulerDiscreteScheduler"):
        Schedule.from_scheduler(scheduler)


def test_schedule_to_moves_the_new_fields():
    schedule = Schedule.from_scheduler(euler_scheduler(5)).to("cpu")
    assert schedule.input_scale is not None and schedule.scheduler_sigmas is not None
    assert Schedule.from_scheduler(sd3_scheduler(5)).to("cpu").input_scale is None


# ------------------------------------------------------------- item 2: analytic rectified-flow velocity
def test_velocity_matches_the_noise_prediction_of_the_same_data():
    """v = n_hat - x0_hat with n_hat from the VP-equivalent exact eps, where both are defined."""
    gmm = gaussian_mixture_problem((2, 3, 3), num_components=4, seed=3)
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([0.05, 0.3, 0.7, 0.95], dtype=torch.float64)
    x0 = gmm.sample(4, gen)
    x = (1 - t).view(-1, 1, 1, 1) * x0 + t.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=gen, dtype=torch.float64)
    scale = ((1 - t) ** 2 + t**2).sqrt().view(-1, 1, 1, 1)
    abar = ((1 - t) ** 2 / ((1 - t) ** 2 + t**2))
    eps = gmm.eps(x / scale, abar)
    x0_hat = (x - t.view(-1, 1, 1, 1) * eps) / (1 - t).view(-1, 1, 1, 1)
    torch.testing.assert_close(gmm.velocity(x, t), eps - x0_hat, rtol=1e-9, atol=1e-9)
    # At pure noise (t = 1) the velocity is x - E[x0] and finite.
    ones = torch.ones(4, dtype=torch.float64)
    mean = (gmm.weights.view(-1, 1, 1, 1) * gmm.means).sum(0)
    torch.testing.assert_close(gmm.velocity(x, ones), x - mean, rtol=1e-9, atol=1e-9)


def _diffusers_loop(scheduler, velocity_fn, schedule: Schedule, x: torch.Tensor) -> torch.Tensor:
    samples = torch.arange(x.shape[0])
    for k, t in enumerate(scheduler.timesteps):
        i = schedule.num_steps - 1 - k
        model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        del model_input  # the analytic field applies the schedule's input scale itself
        out = velocity_fn(x, torch.full_like(samples, i), samples)
        x = scheduler.step(out, t, x).prev_sample.double()
    return x


@pytest.mark.parametrize("make", [lambda: sd3_scheduler(28), lambda: flux_scheduler(28), lambda: sd3_scheduler(50),
                                  lambda: euler_scheduler(30, prediction_type="v_prediction")],
                         ids=["sd3-28", "flux-28", "sd3-50", "euler-v-30"])
@pytest.mark.parametrize("map_form", ["affine", "increment"])
def test_parallel_solve_equals_sequential_and_diffusers_loop(make, map_form):
    scheduler = make()
    schedule = Schedule.from_scheduler(scheduler)
    gmm = gaussian_mixture_problem((2, 4, 4), num_components=6, seed=1)
    velocity_fn = gmm.eps_fn(schedule)
    noise = paratAA.sample_noise(seed=0, num_samples=2, num_steps=schedule.num_steps, latent_shape=(2, 4, 4))
    noise[:, -1] *= float(getattr(scheduler, "init_noise_sigma", 1.0))  # flow matching starts at sigma 1
    reference = paratAA.sequential(velocity_fn, schedule, noise)
    steps = schedule.num_steps
    result = paratAA.solve(velocity_fn, schedule, noise, window_size=steps, order=steps, memory_size=3,
                           tol1=1e-12, tol2=0.0, map_form=map_form)
    assert result.converged and result.iterations <= steps
    assert float((result.samples - reference[:, 0]).abs().max()) < 1e-10
    loop = _diffusers_loop(scheduler, velocity_fn, schedule, noise[:, -1].clone())
    assert float((loop - reference[:, 0]).abs().max()) < 1e-4  # diffusers' step runs in float32
    assert float(reference[:, 0].abs().max()) > 0.1  # a real sample, not a collapse to zero


@pytest.mark.parametrize("make", [lambda: sd3_scheduler(12), lambda: euler_scheduler(12, prediction_type="epsilon"),
                                  lambda: euler_scheduler(12, prediction_type="v_prediction"),
                                  lambda: euler_scheduler(12, prediction_type="sample")],
                         ids=["flow", "euler-eps", "euler-v", "euler-sample"])
def test_denoised_coefficients_are_the_schedulers_predicted_sample(make):
    """``solve(init="denoised")`` holds x0 = p x + q out fixed: diffusers' own pred_original_sample."""
    scheduler = make()
    schedule = Schedule.from_scheduler(scheduler)
    p, q = schedule.denoised_coefficients()
    gen = torch.Generator().manual_seed(2)
    for k, t in enumerate(scheduler.timesteps):
        i = schedule.num_steps - 1 - k
        x, out = (torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(2))
        scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else None
        step = scheduler.step(out, t, x)
        if hasattr(step, "pred_original_sample"):
            expected = step.pred_original_sample.double()
        else:  # flow matching: the clean end of the straight line through x with velocity out
            expected = x - schedule.scheduler_sigmas[i] * out
        torch.testing.assert_close(p[i] * x + q[i] * out, expected, rtol=1e-5, atol=1e-5)
