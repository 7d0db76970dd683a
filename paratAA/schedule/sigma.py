"""Sigma-based samplers as the affine recurrence of ``paratAA.schedule``: k-diffusion Euler
(``EulerDiscreteScheduler``, SDXL) and flow matching (``FlowMatchEulerDiscreteScheduler``: SD3, Flux).

Both are deterministic (``c = 0``). With the scheduler's noise levels ``s = scheduler_sigmas[i]``
(of ``x[i+1]``) and ``s'`` (of ``x[i]``):

- flow matching: ``out`` is the velocity (``prediction_type = "flow_prediction"``), ``a = 1``,
  ``b = s' - s``;
- Euler: the network sees ``input_scale[i] * x[i+1]`` with ``input_scale = 1 / sqrt(s^2 + 1)``
  (what ``scheduler.scale_model_input`` does; the model adapter applies it), and for epsilon
  ``a = 1, b = s' - s``; for v_prediction ``a = 1 + (s' - s) s / (s^2 + 1)``,
  ``b = (s' - s) / sqrt(s^2 + 1)``; for sample ``a = 1 + (s' - s) / s``, ``b = -(s' - s) / s``.

Their ``alphas_cumprod`` and ``sigma`` are those of the equivalent variance-preserving process
(``x = scale * x_vp``; flow matching: ``abar = (1-s)^2 / ((1-s)^2 + s^2)``, Euler:
``abar = 1 / (1 + s^2)``). Any sigma schedule is supported (static ``shift``, dynamic shifting with
``mu``, custom ``sigmas``, Karras/exponential/beta sigmas). Refused by name: ``eta != 0``, Euler's
churn (``s_churn > 0``, a ``step`` argument no diffusers pipeline passes) and flow matching's
``stochastic_sampling``.
"""

from __future__ import annotations

from typing import Any

import torch

from paratAA.errors import ScheduleError
from paratAA.schedule.core import PREDICTION_TYPES, Schedule, verify_step_loop

_FLOW_MATCH, _EULER = "FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler"
SCHEDULERS = (_EULER, _FLOW_MATCH)


def from_scheduler(cls: type, scheduler: Any, *, eta: float, verify: bool, s_churn: float = 0.0) -> Schedule:
    """``Schedule.from_scheduler`` for ``EulerDiscreteScheduler`` and ``FlowMatchEulerDiscreteScheduler``."""
    kind = type(scheduler).__name__
    config = scheduler.config
    if eta != 0:
        raise ScheduleError(f"eta: {kind} is deterministic, eta must be 0 (got {eta!r})")
    if s_churn != 0:
        raise ScheduleError(
            f"s_churn: {kind} with s_churn={s_churn!r} adds noise inside step() (not supported); use s_churn=0")
    if kind == _FLOW_MATCH:
        if config.stochastic_sampling:
            raise ScheduleError("scheduler: stochastic_sampling=True re-noises every step inside step() "
                                "(not supported); use FlowMatchEulerDiscreteScheduler.from_config(config, "
                                "stochastic_sampling=False)")
        prediction_type = "flow_prediction"
    else:
        prediction_type = config.prediction_type
        if prediction_type == "original_sample":
            prediction_type = "sample"
        if prediction_type not in PREDICTION_TYPES:
            raise ScheduleError(f"scheduler: prediction_type {prediction_type!r} is not one of {PREDICTION_TYPES}")

    sigmas = scheduler_sigmas(scheduler)
    # Step i (increasing order) is scheduler iteration T-1-i: from sigmas[T-1-i] to sigmas[T-i].
    s = sigmas[:-1].flip(0)
    s_next = sigmas[1:].flip(0)
    dt = s_next - s
    if kind == _FLOW_MATCH:
        a, b, input_scale = torch.ones_like(s), dt, None
        scale, scale_next = flow_scale(s), flow_scale(s_next)
        abar, abar_next = ((1 - s) / scale) ** 2, ((1 - s_next) / scale_next) ** 2
    else:
        root = (s**2 + 1).sqrt()
        input_scale = 1 / root
        if prediction_type == "epsilon":
            a, b = torch.ones_like(s), dt
        elif prediction_type == "v_prediction":
            a, b = 1 + dt * s / root**2, dt / root
        else:  # sample: derivative (x - out) / s
            a, b = 1 + dt / s, -dt / s
        scale, scale_next = root, (s_next**2 + 1).sqrt()
        abar, abar_next = 1 / root**2, 1 / scale_next**2
    sigma = scaled_posterior_std(abar, abar_next, scale_next)
    result = cls(a=a, b=b, c=torch.zeros_like(a), sigma=sigma, timesteps=scheduler.timesteps.detach().cpu().flip(0),
                 alphas_cumprod=abar, prediction_type=prediction_type, eta=0.0, scheduler_sigmas=s,
                 input_scale=input_scale)
    if verify:
        verify_step_loop(result, scheduler)
    return result


def scheduler_sigmas(scheduler: Any) -> torch.Tensor:
    """float64 ``(T+1,)``: ``scheduler.sigmas``, the noise levels of the scheduler's iterations, noisiest first."""
    sigmas = scheduler.sigmas.detach().cpu().to(torch.float64)
    num_steps = len(scheduler.timesteps)
    if sigmas.shape[0] != num_steps + 1:
        raise ScheduleError(f"scheduler: {num_steps} timesteps but {sigmas.shape[0]} sigmas (expected T + 1)")
    return sigmas


def scaled_posterior_std(abar: torch.Tensor, abar_next: torch.Tensor, scale_next: torch.Tensor) -> torch.Tensor:
    """The equivalent variance-preserving step's posterior std, in the sampler's units (scales ``tol2``)."""
    abar_next = torch.maximum(abar_next, abar)  # guards rounding only: noise levels decrease
    return scale_next * ((1 - abar_next) / (1 - abar).clamp(min=1e-300) * (1 - abar / abar_next)).clamp(min=0).sqrt()


def flow_scale(s: torch.Tensor) -> torch.Tensor:
    """``sqrt((1-s)^2 + s^2)``: a rectified-flow ``x_s = (1-s) x0 + s n`` is this times a VP sample."""
    return ((1 - s) ** 2 + s**2).sqrt()
