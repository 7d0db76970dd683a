"""DDIM and DDPM (``DDIMScheduler``, ``DDPMScheduler``) as the affine recurrence of ``paratAA.schedule``.

With ``abar = alphas_cumprod[timesteps[i]]`` and ``abar'`` that of the previous (less noisy)
timestep as the scheduler itself defines it (DDIM: ``t - num_train_timesteps // T`` whatever the
spacing, the final alpha below zero; DDPM: the next entry of the timestep list, 1 after the last),
and the data and noise predictions ``x0 = x0_x x + x0_out out``, ``eps = eps_x x + eps_out out``:

- DDIM(eta): ``x[i] = sqrt(abar') x0 + sqrt(1 - abar' - c^2) eps + c z`` with ``c = eta * sigma``;
- DDPM: the posterior mean ``sqrt(abar') beta / (1 - abar) x0 + sqrt(abar / abar') (1 - abar') / (1 - abar) x``
  plus a fixed standard deviation (``fixed_small``, ``fixed_small_log``: the posterior's;
  ``fixed_large``: ``sqrt(beta)``), no noise at ``t = 0``.

Every timestep spacing (``leading``, ``trailing``, ``linspace``) and final-alpha rule is supported,
as are the prediction types ``epsilon``, ``v_prediction`` and ``sample``. Refused by name: sample
clipping, thresholding, a learned DDPM variance, and a step count whose timesteps leave the
training range (SD's leading spacing with ``steps_offset=1`` at T = num_train_timesteps reaches
timestep 1000 of 0..999; diffusers' ``step`` fails there too).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from paratAA.errors import ScheduleError
from paratAA.schedule.core import PREDICTION_TYPES, Schedule, as_x_and_out, posterior_variance, verify_step_loop

SCHEDULERS = ("DDIMScheduler", "DDPMScheduler")
# DDPM variance rules whose noise is a fixed, input-independent standard deviation.
_DDPM_FIXED_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")


def from_scheduler(cls: type, scheduler: Any, *, eta: float, verify: bool, s_churn: float = 0.0) -> Schedule:
    """``Schedule.from_scheduler`` for DDIM (any ``eta >= 0``) and DDPM (which ignores ``eta``)."""
    kind = type(scheduler).__name__
    _check_affine_config(scheduler)
    if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
        raise ScheduleError(f"eta must be a finite number >= 0, got {eta!r}")

    timesteps = scheduler.timesteps.flip(0).to(torch.int64)  # increasing: step i uses timesteps[i]
    abar_all = scheduler.alphas_cumprod.to(torch.float64)
    _check_timestep_range(scheduler, timesteps, abar_all.shape[0])
    abar = abar_all[timesteps]
    if kind == "DDIMScheduler":
        abar_prev = _ddim_previous_alpha(scheduler, timesteps, abar_all)
        a, b, c, sigma = _ddim_coefficients(abar, abar_prev, float(eta), scheduler.config.prediction_type)
    else:
        abar_prev = _ddpm_previous_alpha(timesteps, abar_all)
        a, b, c, sigma = _ddpm_coefficients(abar, abar_prev, timesteps, scheduler.config)
        eta = 1.0
    result = cls(a=a, b=b, c=c, sigma=sigma, timesteps=timesteps, alphas_cumprod=abar,
                 prediction_type=scheduler.config.prediction_type, eta=float(eta))
    if verify:
        verify_step_loop(result, scheduler, _ddpm_noise if kind == "DDPMScheduler" else _ddim_noise(float(eta)))
    return result


def _ddim_noise(eta: float):
    def noise(gen: torch.Generator, shape: tuple) -> tuple[torch.Tensor, dict]:
        z = torch.randn(shape, generator=gen, dtype=torch.float64)
        return z, {"eta": eta, "variance_noise": z}

    return noise


def _ddpm_noise(gen: torch.Generator, shape: tuple) -> tuple[torch.Tensor, dict]:
    # DDPMScheduler.step draws its own noise: replay that draw from a generator seeded alike.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
    z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return z, {"generator": torch.Generator().manual_seed(seed)}


def _check_affine_config(scheduler: Any) -> None:
    config = scheduler.config
    if getattr(config, "clip_sample", False):
        raise ScheduleError(
            "scheduler: clip_sample=True clips the predicted x0, which is not affine; "
            "use DDIMScheduler.from_config(config, clip_sample=False)")
    if getattr(config, "thresholding", False):
        raise ScheduleError("scheduler: thresholding=True (dynamic thresholding) is not affine; set thresholding=False")
    if config.prediction_type not in PREDICTION_TYPES:
        raise ScheduleError(f"scheduler: prediction_type {config.prediction_type!r} is not one of {PREDICTION_TYPES}")
    variance = getattr(config, "variance_type", None)
    if type(scheduler).__name__ == "DDPMScheduler" and variance not in _DDPM_FIXED_VARIANCES:
        raise ScheduleError(
            f"scheduler: DDPM variance_type {variance!r} is not supported; use one of {_DDPM_FIXED_VARIANCES}")


def _check_timestep_range(scheduler: Any, timesteps: torch.Tensor, num_train: int) -> None:
    """ScheduleError unless every timestep indexes ``alphas_cumprod`` (``step()`` itself would fail)."""
    outside = timesteps[(timesteps < 0) | (timesteps >= num_train)]
    if outside.numel():
        config = scheduler.config
        raise ScheduleError(
            f"{scheduler.num_inference_steps} steps reach timestep {int(outside[0])}, outside the scheduler's "
            f"training timesteps 0..{num_train - 1} ({config.timestep_spacing} spacing, steps_offset="
            f"{config.steps_offset}; diffusers' own step() fails there too): use fewer steps")


def _ddim_previous_alpha(scheduler: Any, timesteps: torch.Tensor, abar_all: torch.Tensor) -> torch.Tensor:
    # DDIMScheduler.step goes to t - num_train_timesteps // T, whatever the spacing, and uses
    # final_alpha_cumprod below zero: mirror that, not the next entry of the timestep list.
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    prev = timesteps - stride
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float64)
    return torch.where(prev >= 0, abar_all[prev.clamp(min=0)], final)


def _ddpm_previous_alpha(timesteps: torch.Tensor, abar_all: torch.Tensor) -> torch.Tensor:
    # DDPMScheduler.previous_timestep: the next (less noisy) entry of the timestep list, 1.0 after the last.
    prev = torch.cat([torch.tensor([-1]), timesteps[:-1]])
    return torch.where(prev >= 0, abar_all[prev.clamp(min=0)], torch.ones((), dtype=torch.float64))


def _ddim_coefficients(abar, abar_prev, eta, prediction_type):
    sigma = posterior_variance(abar, abar_prev).sqrt()
    c = eta * sigma
    direction_sq = 1 - abar_prev - c**2
    if bool((direction_sq < 0).any()):
        raise ScheduleError(f"eta={eta} is too large for this schedule: the DDIM noise exceeds 1 - alpha_bar_prev")
    (x0_x, x0_out), (eps_x, eps_out) = as_x_and_out(abar, prediction_type)
    keep, direction = abar_prev.sqrt(), direction_sq.sqrt()
    a = keep * x0_x + direction * eps_x
    b = keep * x0_out + direction * eps_out
    return a, b, c, sigma


def _ddpm_coefficients(abar, abar_prev, timesteps, config):
    (x0_x, x0_out), _ = as_x_and_out(abar, config.prediction_type)
    beta_t = 1 - abar / abar_prev
    x0_coef = abar_prev.sqrt() * beta_t / (1 - abar)
    x_coef = (abar / abar_prev).sqrt() * (1 - abar_prev) / (1 - abar)
    a = x0_coef * x0_x + x_coef
    b = x0_coef * x0_out
    posterior = posterior_variance(abar, abar_prev)
    variance = beta_t if config.variance_type == "fixed_large" else posterior.clamp(min=1e-20)
    c = torch.where(timesteps > 0, variance.sqrt(), torch.zeros_like(variance))  # step adds noise only for t > 0
    return a, b, c, posterior.sqrt()
