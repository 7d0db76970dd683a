"""Schedule coefficients against diffusers' own DDIMScheduler.step / DDPMScheduler.step."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LMSDiscreteScheduler

from paratAA import Schedule, ScheduleError

SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def _ddim(spacing: str, alpha_to_one: bool, prediction: str = "epsilon", steps: int = 50) -> DDIMScheduler:
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing=spacing, set_alpha_to_one=alpha_to_one,
                              steps_offset=1 if spacing == "leading" else 0, prediction_type=prediction, **SD_BETAS)
    scheduler.set_timesteps(steps)
    return scheduler


# diffusers computes the coefficients in float32; a step's rounding error is a few float32 ulps,
# amplified up to ~30x where the prediction type divides by sqrt(1 - alpha_bar) near t = 0.
FLOAT32_STEP_TOLERANCE = 1e-4


def _max_rel_error(schedule: Schedule, step) -> float:
    """Largest relative difference between ``schedule.step`` and ``step(i, x, out, z)``."""
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    for i in range(schedule.num_steps):
        x, out, z = (torch.randn(4, 5, generator=gen, dtype=torch.float64) for _ in range(3))
        expected = step(i, x, out, z).double()
        got = schedule.step(i, x, out, z)
        worst = max(worst, float(((got - expected).abs() / (1 + expected.abs())).max()))
    return worst


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("alpha_to_one", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_ddim_coefficients_reproduce_step(spacing, alpha_to_one, eta, prediction):
    scheduler = _ddim(spacing, alpha_to_one, prediction)
    schedule = Schedule.from_scheduler(scheduler, eta=eta, verify=False)

    def diffusers_step(i, x, out, z):
        t = int(scheduler.timesteps[schedule.num_steps - 1 - i])
        return scheduler.step(out, t, x, eta=eta, variance_noise=z).prev_sample

    assert _max_rel_error(schedule, diffusers_step) < FLOAT32_STEP_TOLERANCE
    assert torch.equal(schedule.timesteps, scheduler.timesteps.flip(0))
    assert torch.all(schedule.timesteps[1:] > schedule.timesteps[:-1])
    if eta == 0:
        assert torch.all(schedule.c == 0)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("variance", ["fixed_small", "fixed_small_log", "fixed_large"])
@pytest.mark.parametrize("steps", [20, 1000])
def test_ddpm_coefficients_reproduce_step(spacing, variance, steps):
    scheduler = DDPMScheduler(clip_sample=False, timestep_spacing=spacing, variance_type=variance)
    scheduler.set_timesteps(steps)
    schedule = Schedule.from_scheduler(scheduler, verify=False)

    def diffusers_step(i, x, out, z):
        # DDPMScheduler.step draws its own noise (only for t > 0): give it a generator that draws z.
        t = int(scheduler.timesteps[schedule.num_steps - 1 - i])
        seed = 1000 + i
        z.copy_(torch.randn(z.shape, generator=torch.Generator().manual_seed(seed), dtype=z.dtype))
        return scheduler.step(out, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample

    assert _max_rel_error(schedule, diffusers_step) < FLOAT32_STEP_TOLERANCE
    assert schedule.eta == 1.0


def test_sigma_is_the_posterior_std_and_eta_scales_c():
    scheduler = _ddim("leading", False)
    half = Schedule.from_scheduler(scheduler, eta=0.5)
    full = Schedule.from_scheduler(scheduler, eta=1.0)
    torch.testing.assert_close(half.c, 0.5 * full.sigma)
    torch.testing.assert_close(full.c, full.sigma)


@pytest.mark.parametrize("make, match", [
    (lambda: DDIMScheduler(clip_sample=True), "clip_sample"),
    (lambda: DDIMScheduler(clip_sample=False, thresholding=True), "thresholding"),
    (lambda: DDPMScheduler(clip_sample=False, variance_type="learned_range"), "variance_type"),
    (lambda: DDPMScheduler(clip_sample=False, variance_type="fixed_large_log"), "variance_type"),
    (lambda: LMSDiscreteScheduler(), "LMSDiscreteScheduler"),
])
def test_non_affine_configurations_are_refused(make, match):
    scheduler = make()
    scheduler.set_timesteps(10)
    with pytest.raises(ScheduleError, match=match):
        Schedule.from_scheduler(scheduler)


def test_missing_set_timesteps_and_bad_eta_are_refused():
    with pytest.raises(ScheduleError, match="set_timesteps"):
        Schedule.from_scheduler(DDIMScheduler(clip_sample=False))
    scheduler = _ddim("leading", False)
    with pytest.raises(ScheduleError, match="eta"):
        Schedule.from_scheduler(scheduler, eta=-0.1)
    with pytest.raises(ScheduleError, match="eta"):
        Schedule.from_scheduler(scheduler, eta=5.0)


def test_schedule_error_lives_in_errors_and_is_reexported():
    import paratAA
    import paratAA.errors
    import paratAA.schedule

    assert paratAA.schedule.ScheduleError is paratAA.errors.ScheduleError is paratAA.ScheduleError
    assert issubclass(ScheduleError, ValueError)
