"""Float64 step coefficients of an affine diffusion sampler, read from a diffusers scheduler.

Index convention (used everywhere in this package)
--------------------------------------------------
A sampler with ``T`` steps has the trajectory ``x[0..T]``: ``x[T]`` is the initial Gaussian noise
and ``x[0]`` the sample. Step ``i`` (``0 <= i < T``) maps ``x[i+1]`` to ``x[i]`` and calls the
network at ``(x[i+1], timesteps[i])``, where ``timesteps`` are the scheduler's training timesteps in
*increasing* order (the reverse of ``scheduler.timesteps``). Every DDIM / DDPM step without sample
clipping or thresholding is affine in the sample, the network output and the step's noise:

    x[i] = a[i] * x[i+1] + b[i] * out(x[i+1], timesteps[i]) + c[i] * z[i]

``out`` is the network's raw prediction in the scheduler's ``prediction_type`` (``epsilon``,
``v_prediction`` or ``sample``); ``z[i] ~ N(0, I)`` is drawn once, up front. ``sigma[i]`` is the
DDPM posterior standard deviation of the step (the DDIM ``eta = 1`` one), which scales the
convergence test.

Flow matching and k-diffusion Euler (``FlowMatchEulerDiscreteScheduler``: SD3, Flux;
``EulerDiscreteScheduler``: SDXL) are affine too and deterministic (``c = 0``). With the
scheduler's noise levels ``s = scheduler_sigmas[i]`` (of ``x[i+1]``) and ``s'`` (of ``x[i]``):

- flow matching: ``out`` is the velocity (``prediction_type = "flow_prediction"``), ``a = 1``,
  ``b = s' - s``;
- Euler: the network sees ``input_scale[i] * x[i+1]`` with ``input_scale = 1 / sqrt(s^2 + 1)``
  (what ``scheduler.scale_model_input`` does; the model adapter applies it), and for epsilon
  ``a = 1, b = s' - s``; for v_prediction ``a = 1 + (s' - s) s / (s^2 + 1)``,
  ``b = (s' - s) / sqrt(s^2 + 1)``.

Multistep DPM-Solver++ (``DPMSolverMultistepScheduler``, second order, the "DPM++ 2M" of SD
front ends) is affine too, but step ``i`` also reads the previous step's data prediction, made
from ``x[i+2]`` and ``out_{i+1}``: the recurrence gains two terms,

    x[i] = a[i] x[i+1] + b[i] out_i + c[i] z[i] + a2[i] x[i+2] + b2[i] out_{i+1}

still triangular (step ``i`` reads only noisier unknowns) with one network call per step, so the
same solvers apply (``a2``, ``b2`` are None for one-step samplers; zero at the first-order steps:
the first one, and the last with ``final_sigmas_type="zero"``).

Their ``alphas_cumprod`` and ``sigma`` are those of the equivalent variance-preserving process
(``x = scale * x_vp``; flow matching: ``abar = (1-s)^2 / ((1-s)^2 + s^2)``, Euler:
``abar = 1 / (1 + s^2)``), ``sigma`` expressed in the sampler's own units, so ``tol2`` means
the same thing for every sampler.

The coefficients follow the scheduler's own rules (which previous timestep a step goes to, the
final alpha), so they reproduce ``scheduler.step`` for every timestep spacing; ``from_scheduler``
checks that by calling ``step`` itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import torch

__all__ = ["Schedule", "ScheduleError"]

_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
_FLOW_MATCH, _EULER = "FlowMatchEulerDiscreteScheduler", "EulerDiscreteScheduler"
_SIGMA_SCHEDULERS = (_FLOW_MATCH, _EULER)  # schedulers that keep ``sigmas`` and a step counter
_DPM_MULTISTEP = "DPMSolverMultistepScheduler"
# DDPM variance rules whose noise is a fixed, input-independent standard deviation.
_DDPM_FIXED_VARIANCES = ("fixed_small", "fixed_small_log", "fixed_large")


class ScheduleError(ValueError):
    """The scheduler's configuration cannot be written as the affine recurrence above."""


@dataclass(frozen=True)
class Schedule:
    """Per-step float64 coefficients of an affine sampler (see the module docstring).

    Attributes:
        a, b, c: float64 ``(T,)``: ``x[i] = a[i] x[i+1] + b[i] out_i + c[i] z[i]``.
        sigma: float64 ``(T,)``: DDPM posterior std of step ``i`` (scales the tolerance ``tol2``).
        timesteps: ``(T,)``, increasing: the network's timestep at step ``i``, in the scheduler's
            own dtype (int64 for DDIM/DDPM; float32 for Euler and flow matching).
        alphas_cumprod: float64 ``(T,)``: ``alphas_cumprod[timesteps[i]]`` (flow matching, Euler:
            of the equivalent variance-preserving process, see the module docstring).
        prediction_type: what the network predicts: ``epsilon``, ``v_prediction``, ``sample`` or
            ``flow_prediction`` (a flow-matching velocity).
        eta: the DDIM eta the coefficients were built with (1.0 for DDPM, 0.0 for Euler and flow matching).
        scheduler_sigmas: float64 ``(T,)``: Euler and flow matching: the scheduler's noise level
            ``scheduler.sigmas`` of ``x[i+1]``, the input of step ``i``; None for DDIM/DDPM.
        input_scale: float64 ``(T,)``: the network's input at step ``i`` is
            ``input_scale[i] * x[i+1]`` (``scheduler.scale_model_input``; Euler); None means 1.
        a2, b2: float64 ``(T,)``: a multistep sampler's terms ``a2[i] x[i+2] + b2[i] out_{i+1}``
            (zero at ``i = T - 1``); None for one-step samplers.
    """

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor
    sigma: torch.Tensor
    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"
    eta: float = 0.0
    scheduler_sigmas: torch.Tensor | None = None
    input_scale: torch.Tensor | None = None
    a2: torch.Tensor | None = None
    b2: torch.Tensor | None = None

    @property
    def num_steps(self) -> int:
        """T, the number of sampling steps."""
        return int(self.a.shape[0])

    @property
    def is_multistep(self) -> bool:
        """Whether step ``i`` also reads ``x[i+2]`` and ``out_{i+1}`` (``a2``, ``b2``)."""
        return self.a2 is not None

    @property
    def device(self) -> torch.device:
        return self.a.device

    def to(self, device: torch.device | str) -> "Schedule":
        """The same schedule with its tensors on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, a=move(self.a), b=move(self.b), c=move(self.c), sigma=move(self.sigma),
                       timesteps=move(self.timesteps), alphas_cumprod=move(self.alphas_cumprod),
                       scheduler_sigmas=move(self.scheduler_sigmas), input_scale=move(self.input_scale),
                       a2=move(self.a2), b2=move(self.b2))

    def denoised_coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p, q)``, float64 ``(T,)``: step ``i``'s prediction of the sample is ``p[i] x[i+1] + q[i] out_i``.

        For the prediction type of the network (``x0`` written through ``x_t`` and ``out``). Used to
        initialise steps by holding the predicted sample fixed (``paratAA.batch``).
        """
        if self.scheduler_sigmas is not None:
            return _sigma_denoised_coefficients(self.scheduler_sigmas, self.prediction_type)
        (x0_x, x0_out), _ = _as_x_and_out(self.alphas_cumprod, self.prediction_type)
        return x0_x, x0_out

    def step(self, i: int, x_next: torch.Tensor, out: torch.Tensor, z: torch.Tensor,
             x_next2: torch.Tensor | None = None, out_next: torch.Tensor | None = None) -> torch.Tensor:
        """One sequential step: ``x[i]`` from ``x[i+1]``, the network output and the noise ``z[i]``
        (a multistep sampler's also from ``x[i+2]`` and ``out_{i+1}``; unused where ``i = T - 1``)."""
        x = self.a[i] * x_next + self.b[i] * out + self.c[i] * z
        if self.is_multistep and i + 1 < self.num_steps:
            x = x + self.a2[i] * x_next2 + self.b2[i] * out_next
        return x

    @classmethod
    def from_scheduler(cls, scheduler: Any, eta: float = 0.0, *, verify: bool = True,
                       s_churn: float = 0.0) -> "Schedule":
        """Build the schedule of a diffusers ``DDIMScheduler``, ``DDPMScheduler``,
        ``EulerDiscreteScheduler`` or ``FlowMatchEulerDiscreteScheduler``.

        Call ``scheduler.set_timesteps(T)`` first. Every timestep spacing (``leading``, ``trailing``,
        ``linspace``) and final-alpha rule is supported, as are the prediction types ``epsilon``,
        ``v_prediction`` and ``sample``; DDPM needs a fixed variance (``fixed_small``,
        ``fixed_small_log`` or ``fixed_large``) and ignores ``eta``. Euler (epsilon, v_prediction
        or sample prediction, any sigma schedule) and flow matching (static ``shift``, dynamic
        shifting with ``mu``, custom ``sigmas``, Karras/exponential/beta sigmas) are deterministic:
        ``eta`` must be 0, and Euler's churn (``s_churn > 0``, a ``step`` argument no diffusers
        pipeline passes) is refused.

        Args:
            scheduler: a configured diffusers DDIM, DDPM, Euler or flow-matching Euler scheduler.
            eta: DDIM stochasticity, ``>= 0`` (0: deterministic DDIM, 1: DDPM-like noise).
            verify: check the coefficients against ``scheduler.step`` on random inputs (Euler
                and flow matching: on a copy of the scheduler, whose ``step`` keeps a step counter).
            s_churn: the ``s_churn`` an Euler step loop would pass to ``step``; only 0 is supported.

        Returns:
            The schedule, on the CPU.

        Raises:
            ScheduleError: sample clipping, thresholding, a learned variance, an unknown prediction
                type or scheduler, ``set_timesteps`` not called, ``eta`` out of range, or a step count
                whose timesteps leave the training range (SD's leading spacing with ``steps_offset=1``
                at T = num_train_timesteps reaches timestep 1000 of 0..999; diffusers' ``step``
                fails there too).
        """
        kind = type(scheduler).__name__
        if kind in _SIGMA_SCHEDULERS:
            return _from_sigma_scheduler(cls, scheduler, eta, verify, s_churn)
        if kind == _DPM_MULTISTEP:
            return _from_dpm_solver(cls, scheduler, eta, verify)
        if kind not in ("DDIMScheduler", "DDPMScheduler"):
            raise ScheduleError(
                f"scheduler: {kind} is not supported; use a DDIMScheduler, DDPMScheduler, "
                "EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler or DPMSolverMultistepScheduler "
                "(e.g. DDIMScheduler.from_config(pipe.scheduler.config))")
        _check_affine_config(scheduler)
        if getattr(scheduler, "num_inference_steps", None) is None:
            raise ScheduleError("scheduler: call scheduler.set_timesteps(T) before Schedule.from_scheduler")
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
            raise ScheduleError(f"eta must be a finite number >= 0, got {eta!r}")

        timesteps = scheduler.timesteps.flip(0).to(torch.int64)  # increasing: step i uses timesteps[i]
        abar_all = scheduler.alphas_cumprod.to(torch.float64)
        _check_timestep_range(scheduler, timesteps, abar_all.shape[0])
        abar = abar_all[timesteps]
        if kind == "DDIMScheduler":
            abar_prev = _ddim_previous_alpha(scheduler, timesteps, abar_all)
            schedule = _ddim_coefficients(abar, abar_prev, float(eta), scheduler.config.prediction_type)
        else:
            abar_prev = _ddpm_previous_alpha(timesteps, abar_all)
            schedule = _ddpm_coefficients(abar, abar_prev, timesteps, scheduler.config)
            eta = 1.0
        a, b, c, sigma = schedule
        result = cls(a=a, b=b, c=c, sigma=sigma, timesteps=timesteps, alphas_cumprod=abar,
                     prediction_type=scheduler.config.prediction_type, eta=float(eta))
        if verify:
            _verify_against_step(result, scheduler)
        return result


def _check_affine_config(scheduler: Any) -> None:
    config = scheduler.config
    if getattr(config, "clip_sample", False):
        raise ScheduleError(
            "scheduler: clip_sample=True clips the predicted x0, which is not affine; "
            "use DDIMScheduler.from_config(config, clip_sample=False)")
    if getattr(config, "thresholding", False):
        raise ScheduleError("scheduler: thresholding=True (dynamic thresholding) is not affine; set thresholding=False")
    if config.prediction_type not in _PREDICTION_TYPES:
        raise ScheduleError(f"scheduler: prediction_type {config.prediction_type!r} is not one of {_PREDICTION_TYPES}")
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


def _posterior_variance(abar: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    return (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)


def _as_x_and_out(abar: torch.Tensor, prediction_type: str) -> tuple[tuple, tuple]:
    """(x0, eps) as linear maps of (x_t, out): returns ((x0_x, x0_out), (eps_x, eps_out))."""
    s, r = abar.sqrt(), (1 - abar).sqrt()
    if prediction_type == "epsilon":
        return (1 / s, -r / s), (torch.zeros_like(s), torch.ones_like(s))
    if prediction_type == "sample":
        return (torch.zeros_like(s), torch.ones_like(s)), (1 / r, -s / r)
    return (s, -r), (r, s)  # v_prediction: x0 = s x - r v, eps = r x + s v


def _ddim_coefficients(abar, abar_prev, eta, prediction_type):
    sigma = _posterior_variance(abar, abar_prev).sqrt()
    c = eta * sigma
    direction_sq = 1 - abar_prev - c**2
    if bool((direction_sq < 0).any()):
        raise ScheduleError(f"eta={eta} is too large for this schedule: the DDIM noise exceeds 1 - alpha_bar_prev")
    (x0_x, x0_out), (eps_x, eps_out) = _as_x_and_out(abar, prediction_type)
    keep, direction = abar_prev.sqrt(), direction_sq.sqrt()
    a = keep * x0_x + direction * eps_x
    b = keep * x0_out + direction * eps_out
    return a, b, c, sigma


def _ddpm_coefficients(abar, abar_prev, timesteps, config):
    (x0_x, x0_out), _ = _as_x_and_out(abar, config.prediction_type)
    beta_t = 1 - abar / abar_prev
    x0_coef = abar_prev.sqrt() * beta_t / (1 - abar)
    x_coef = (abar / abar_prev).sqrt() * (1 - abar_prev) / (1 - abar)
    a = x0_coef * x0_x + x_coef
    b = x0_coef * x0_out
    posterior = _posterior_variance(abar, abar_prev)
    variance = beta_t if config.variance_type == "fixed_large" else posterior.clamp(min=1e-20)
    c = torch.where(timesteps > 0, variance.sqrt(), torch.zeros_like(variance))  # step adds noise only for t > 0
    return a, b, c, posterior.sqrt()


def _verify_against_step(schedule: Schedule, scheduler: Any) -> None:
    """Compare one call of ``scheduler.step`` per timestep with the affine formula."""
    gen = torch.Generator().manual_seed(0)
    shape = (2, 3)
    ddpm = type(scheduler).__name__ == "DDPMScheduler"
    worst = 0.0
    for i in range(schedule.num_steps):
        x, out, z = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3))
        t = int(schedule.timesteps[i])
        if ddpm:
            # DDPMScheduler.step draws its own noise: replay that draw from a copy of the generator.
            seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
            z = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
            got = scheduler.step(out, t, x, generator=torch.Generator().manual_seed(seed)).prev_sample
        else:
            got = scheduler.step(out, t, x, eta=schedule.eta, variance_noise=z).prev_sample
        expected = schedule.step(i, x, out, z)
        worst = max(worst, float(((got.to(torch.float64) - expected).abs() / (1 + expected.abs())).max()))
    if not worst <= 1e-4:  # scheduler.step works in float32: a few ulps, amplified near t = 0
        raise ScheduleError(
            f"scheduler: its step() differs from the affine coefficients by {worst:.2e}; "
            "this configuration is not supported")


# --------------------------------------------------------------------------- Euler and flow matching
def _from_sigma_scheduler(cls: type, scheduler: Any, eta: float, verify: bool, s_churn: float) -> Schedule:
    """``Schedule.from_scheduler`` for ``EulerDiscreteScheduler`` and ``FlowMatchEulerDiscreteScheduler``."""
    kind = type(scheduler).__name__
    config = scheduler.config
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ScheduleError("scheduler: call scheduler.set_timesteps(T) before Schedule.from_scheduler")
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
        if prediction_type not in _PREDICTION_TYPES:
            raise ScheduleError(f"scheduler: prediction_type {prediction_type!r} is not one of {_PREDICTION_TYPES}")

    sigmas = scheduler.sigmas.detach().cpu().to(torch.float64)  # T + 1 noise levels, noisiest first
    num_steps = len(scheduler.timesteps)
    if sigmas.shape[0] != num_steps + 1:
        raise ScheduleError(f"scheduler: {num_steps} timesteps but {sigmas.shape[0]} sigmas (expected T + 1)")
    # Step i (increasing order) is scheduler iteration T-1-i: from sigmas[T-1-i] to sigmas[T-i].
    s = sigmas[:-1].flip(0)
    s_next = sigmas[1:].flip(0)
    dt = s_next - s
    if kind == _FLOW_MATCH:
        a, b, input_scale = torch.ones_like(s), dt, None
        scale, scale_next = _flow_scale(s), _flow_scale(s_next)
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
    # The equivalent variance-preserving step's posterior std, in the sampler's units (scales tol2).
    abar_next = torch.maximum(abar_next, abar)  # guards rounding only: noise levels decrease
    sigma = scale_next * ((1 - abar_next) / (1 - abar).clamp(min=1e-300) * (1 - abar / abar_next)).clamp(min=0).sqrt()
    result = cls(a=a, b=b, c=torch.zeros_like(a), sigma=sigma, timesteps=scheduler.timesteps.detach().cpu().flip(0),
                 alphas_cumprod=abar, prediction_type=prediction_type, eta=0.0, scheduler_sigmas=s,
                 input_scale=input_scale)
    if verify:
        _verify_step_loop(result, scheduler)
    return result


def _sigma_denoised_coefficients(s: torch.Tensor, prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, q)`` with ``x0 = p x + q out`` at noise level ``s``: flow matching ``x - s v``; Euler as its
    ``step`` computes ``pred_original_sample`` (``x`` unscaled, ``x = x0 + s n``)."""
    if prediction_type == "flow_prediction" or prediction_type == "epsilon":
        return torch.ones_like(s), -s
    if prediction_type == "v_prediction":
        return 1 / (s**2 + 1), -s / (s**2 + 1).sqrt()
    return torch.zeros_like(s), torch.ones_like(s)  # sample


def _flow_scale(s: torch.Tensor) -> torch.Tensor:
    """``sqrt((1-s)^2 + s^2)``: a rectified-flow ``x_s = (1-s) x0 + s n`` is this times a VP sample."""
    return ((1 - s) ** 2 + s**2).sqrt()


def _verify_step_loop(schedule: Schedule, scheduler: Any) -> None:
    """Run the scheduler's own step loop against the recurrence, on a copy reset to its first step
    (Euler, flow matching and DPM-Solver keep a step counter; DPM-Solver also a history of outputs)."""
    import copy

    loop = copy.deepcopy(scheduler)
    loop._step_index = None  # noqa: SLF001  (diffusers' step counter: start from the first timestep)
    if hasattr(loop, "set_begin_index"):
        loop.set_begin_index(0)
    if hasattr(loop, "model_outputs"):  # DPM-Solver's history of data predictions
        loop.lower_order_nums = 0
        loop.model_outputs = [None] * loop.config.solver_order
    gen = torch.Generator().manual_seed(0)
    shape = (2, 3)
    worst = 0.0
    num_steps = schedule.num_steps
    x_prev = out_prev = torch.zeros(shape, dtype=torch.float64)  # step i + 1's input and output
    for k, t in enumerate(loop.timesteps):
        i = num_steps - 1 - k
        x, out = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
        if schedule.input_scale is not None:
            scaled = loop.scale_model_input(x, t).to(torch.float64)
            worst = max(worst, float((scaled - schedule.input_scale[i] * x).abs().max()))
        got = loop.step(out, t, x).prev_sample.to(torch.float64)
        expected = schedule.step(i, x, out, torch.zeros_like(x), x_prev, out_prev)
        worst = max(worst, float(((got - expected).abs() / (1 + expected.abs())).max()))
        x_prev, out_prev = x, out
    if not worst <= 1e-4:  # step() works in float32
        raise ScheduleError(
            f"scheduler: its step() differs from the affine coefficients by {worst:.2e}; "
            "this configuration is not supported")


# ------------------------------------------------------------------------------------ DPM-Solver++
def _from_dpm_solver(cls: type, scheduler: Any, eta: float, verify: bool) -> Schedule:
    """``Schedule.from_scheduler`` for ``DPMSolverMultistepScheduler`` (DPM-Solver++, order 1 or 2).

    With ``lambda = log(alpha / sigma)`` of the variance-preserving noise levels, step ``k`` of the
    scheduler (our step ``i = T - 1 - k``) from ``s0 = sigmas[k]`` to ``t = sigmas[k+1]``,
    ``h = lambda_t - lambda_s0``, data predictions ``D_i = p x[i+1] + q out_i``:

        first order:  x[i] = (sigma_t / sigma_s0) x[i+1] + E D_i,      E = alpha_t (1 - exp(-h))
        2M midpoint:  ... + (E / 2) (D_i - D_{i+1}) / r,                r = h_prev / h
        2M heun:      ... + G (D_i - D_{i+1}) / r,                      G = alpha_t ((exp(-h) - 1) / h + 1)

    with ``h_prev = lambda_s0 - lambda_s1`` of the previous step (diffusers' ``D1``).
    """
    config = scheduler.config
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ScheduleError("scheduler: call scheduler.set_timesteps(T) before Schedule.from_scheduler")
    if eta != 0:
        raise ScheduleError(f"eta: {_DPM_MULTISTEP} with algorithm_type='dpmsolver++' is deterministic, "
                            f"eta must be 0 (got {eta!r})")
    unsupported = [
        (config.algorithm_type != "dpmsolver++",
         f"algorithm_type={config.algorithm_type!r} (the SDE variants draw noise inside step(); use 'dpmsolver++')"),
        (config.solver_order not in (1, 2), f"solver_order={config.solver_order} (use 1 or 2: DPM++ 2M)"),
        (config.solver_type not in ("midpoint", "heun"), f"solver_type={config.solver_type!r}"),
        (bool(getattr(config, "thresholding", False)), "thresholding=True (dynamic thresholding is not affine)"),
        # step() keeps only 3 channels of a learned-variance output; any other value is ignored there.
        (getattr(config, "variance_type", None) in ("learned", "learned_range"),
         f"variance_type={getattr(config, 'variance_type', None)!r} (split the learned variance off first)"),
        (bool(getattr(config, "use_flow_sigmas", False)), "use_flow_sigmas=True"),
        (config.prediction_type not in _PREDICTION_TYPES, f"prediction_type={config.prediction_type!r}"),
    ]
    for refused, setting in unsupported:
        if refused:
            raise ScheduleError(f"scheduler: {_DPM_MULTISTEP} with {setting} is not supported")
    num_steps = len(scheduler.timesteps)
    sigmas = scheduler.sigmas.detach().cpu().to(torch.float64)  # T + 1 VE noise levels, noisiest first
    if sigmas.shape[0] != num_steps + 1:
        raise ScheduleError(f"scheduler: {num_steps} timesteps but {sigmas.shape[0]} sigmas (expected T + 1)")
    alpha = 1 / (sigmas**2 + 1).sqrt()
    noise = sigmas * alpha
    # lambda = log(alpha / sigma) = -log(s) of the VE level s; +inf at s = 0 (the last step's target)
    lam = torch.where(sigmas > 0, -sigmas.clamp(min=1e-300).log(), torch.full_like(sigmas, math.inf))
    abar = alpha**2
    (p, q), _ = _as_x_and_out(abar[:-1], config.prediction_type)  # D_k = p x + q out at sigmas[k]
    keep, d0, d1 = (torch.zeros(num_steps, dtype=torch.float64) for _ in range(3))  # per scheduler step k
    for k in range(num_steps):
        h = lam[k + 1] - lam[k]
        decay = torch.exp(-h)
        keep[k] = noise[k + 1] / noise[k]
        e = alpha[k + 1] * (1 - decay)
        last = k == num_steps - 1 and (config.euler_at_final or (config.lower_order_final and num_steps < 15)
                                       or config.final_sigmas_type == "zero")
        if config.solver_order == 1 or k == 0 or last:
            d0[k] = e
            continue
        r = (lam[k] - lam[k - 1]) / h
        if config.solver_type == "midpoint":
            weight = e / 2
        else:
            weight = alpha[k + 1] * ((decay - 1) / h + 1)
        d0[k], d1[k] = e + weight / r, -weight / r
    # Scheduler step k is our step i = T-1-k; its previous data prediction is our step i + 1's.
    flip = lambda t: t.flip(0)  # noqa: E731
    a, b = flip(keep + d0 * p), flip(d0 * q)
    p_prev, q_prev = torch.cat([torch.zeros(1, dtype=torch.float64), p[:-1]]), torch.cat(
        [torch.zeros(1, dtype=torch.float64), q[:-1]])
    a2, b2 = flip(d1 * p_prev), flip(d1 * q_prev)
    abar_step, abar_next = flip(abar[:-1]), flip(abar[1:])
    sigma = _posterior_variance(abar_step, torch.maximum(abar_next, abar_step)).clamp(min=0).sqrt()
    result = cls(a=a, b=b, c=torch.zeros_like(a), sigma=sigma, timesteps=scheduler.timesteps.detach().cpu().flip(0),
                 alphas_cumprod=abar_step, prediction_type=config.prediction_type, eta=0.0, a2=a2, b2=b2)
    if verify:
        _verify_step_loop(result, scheduler)
    return result
