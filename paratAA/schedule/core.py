"""Float64 step coefficients of an affine diffusion sampler, read from a diffusers scheduler.

Index convention (used everywhere in this package)
--------------------------------------------------
A sampler with ``T`` steps has the trajectory ``x[0..T]``: ``x[T]`` is the initial Gaussian noise
and ``x[0]`` the sample. Step ``i`` (``0 <= i < T``) maps ``x[i+1]`` to ``x[i]`` and calls the
network at ``(x[i+1], timesteps[i])``, where ``timesteps`` are the scheduler's timesteps in
*increasing* order (the reverse of ``scheduler.timesteps``: step ``i`` is the scheduler's
iteration ``k = T - 1 - i``). Every supported sampler is affine in the sample, the network output
and the step's noise:

    x[i] = a[i] * x[i+1] + b[i] * out(x[i+1], timesteps[i]) + c[i] * z[i]

``out`` is the network's raw prediction in the scheduler's ``prediction_type`` (``epsilon``,
``v_prediction``, ``sample`` or ``flow_prediction``, a flow-matching velocity); ``z[i] ~ N(0, I)``
is drawn once, up front. ``sigma[i]`` is the standard deviation of the equivalent DDPM posterior
step (the DDIM ``eta = 1`` one), which scales the convergence test.

The families (one module each; ``Schedule.from_scheduler`` dispatches on the scheduler's class):

- ``paratAA.schedule.ddim``: ``DDIMScheduler`` (any eta) and ``DDPMScheduler`` (fixed variances);
- ``paratAA.schedule.sigma``: ``EulerDiscreteScheduler`` (k-diffusion Euler, SDXL) and
  ``FlowMatchEulerDiscreteScheduler`` (SD3, Flux): deterministic, ``c = 0``;
- ``paratAA.schedule.multistep``: the multistep solvers ``DPMSolverMultistepScheduler``
  (DPM-Solver++ 2M) and ``UniPCMultistepScheduler`` (UniPC, Wan's default), whose step ``i`` also
  reads earlier steps' data predictions, made from ``x[i+1+l]`` and ``out_{i+l}``: with ``L``
  *levels* ``(a_l, b_l)``, ``l = 1..L``,

      x[i] = a[i] x[i+1] + b[i] out_i + c[i] z[i] + sum_{l=1}^{L} (a_l[i] x[i+1+l] + b_l[i] out_{i+l})

  (the terms with ``i + l >= T`` are absent; their coefficients are zero). DPM++ 2M has one level,
  UniPC with its corrector two. Still triangular (step ``i`` reads only noisier unknowns) with one
  network call per step, so the same solvers apply: they treat the level terms as part of each
  step's constant offset (``paratAA.equations``).

``alphas_cumprod`` and ``sigma`` are those of the equivalent variance-preserving process, ``sigma``
expressed in the sampler's own units, so ``tol2`` means the same thing for every sampler.

The coefficients follow the scheduler's own rules, and ``from_scheduler`` checks them against the
scheduler's own step loop (``verify_step_loop``, one mechanism for every family).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import torch

from paratAA.errors import ScheduleError

__all__ = ["Schedule", "ScheduleError", "verify_step_loop"]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# Relative agreement required between scheduler.step (float32 arithmetic) and the coefficients.
VERIFY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Schedule:
    """Per-step float64 coefficients of an affine sampler (see the module docstring).

    Attributes:
        a, b, c: float64 ``(T,)``: ``x[i] = a[i] x[i+1] + b[i] out_i + c[i] z[i]``.
        sigma: float64 ``(T,)``: DDPM posterior std of step ``i`` (scales the tolerance ``tol2``).
        timesteps: ``(T,)``, increasing: the network's timestep at step ``i``, in the scheduler's
            own dtype (int64 for DDIM/DDPM; float32 for Euler and flow matching).
        alphas_cumprod: float64 ``(T,)``: ``alphas_cumprod[timesteps[i]]`` (flow matching, Euler:
            of the equivalent variance-preserving process, see ``paratAA.schedule.sigma``).
        prediction_type: what the network predicts: ``epsilon``, ``v_prediction``, ``sample`` or
            ``flow_prediction`` (a flow-matching velocity).
        eta: the DDIM eta the coefficients were built with (1.0 for DDPM, 0.0 for Euler and flow matching).
        scheduler_sigmas: float64 ``(T,)``: Euler and flow matching: the scheduler's noise level
            ``scheduler.sigmas`` of ``x[i+1]``, the input of step ``i``; None for DDIM/DDPM.
        input_scale: float64 ``(T,)``: the network's input at step ``i`` is
            ``input_scale[i] * x[i+1]`` (``scheduler.scale_model_input``; Euler); None means 1.
        levels: a multistep sampler's ``L`` levels, ``((a_1, b_1), ..., (a_L, b_L))``, float64
            ``(T,)`` each: the terms ``a_l[i] x[i+1+l] + b_l[i] out_{i+l}`` of step ``i`` (zero
            where ``i + l >= T``); empty for one-step samplers.
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
    levels: tuple[tuple[torch.Tensor, torch.Tensor], ...] = ()

    @property
    def num_steps(self) -> int:
        """T, the number of sampling steps."""
        return int(self.a.shape[0])

    @property
    def num_levels(self) -> int:
        """L: step ``i`` reads ``x[i+1..i+1+L]`` and ``out_{i..i+L}`` (0 for one-step samplers)."""
        return len(self.levels)

    @property
    def is_multistep(self) -> bool:
        """Whether step ``i`` also reads earlier steps' inputs and outputs (``levels``)."""
        return bool(self.levels)

    @property
    def a2(self) -> torch.Tensor | None:
        """``a_1`` of the first level (DPM++ 2M's ``a2``); None for one-step samplers."""
        return self.levels[0][0] if self.levels else None

    @property
    def b2(self) -> torch.Tensor | None:
        """``b_1`` of the first level (DPM++ 2M's ``b2``); None for one-step samplers."""
        return self.levels[0][1] if self.levels else None

    @property
    def device(self) -> torch.device:
        return self.a.device

    def to(self, device: torch.device | str) -> "Schedule":
        """The same schedule with its tensors on ``device``."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, a=move(self.a), b=move(self.b), c=move(self.c), sigma=move(self.sigma),
                       timesteps=move(self.timesteps), alphas_cumprod=move(self.alphas_cumprod),
                       scheduler_sigmas=move(self.scheduler_sigmas), input_scale=move(self.input_scale),
                       levels=tuple((move(a), move(b)) for a, b in self.levels))

    def denoised_coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(p, q)``, float64 ``(T,)``: step ``i``'s prediction of the sample is ``p[i] x[i+1] + q[i] out_i``.

        For the prediction type of the network (``x0`` written through ``x_t`` and ``out``). Used to
        initialise steps by holding the predicted sample fixed (``paratAA.batch``).
        """
        if self.scheduler_sigmas is not None:
            return sigma_denoised_coefficients(self.scheduler_sigmas, self.prediction_type)
        (x0_x, x0_out), _ = as_x_and_out(self.alphas_cumprod, self.prediction_type)
        return x0_x, x0_out

    def step(self, i: int, x_next: torch.Tensor, out: torch.Tensor, z: torch.Tensor,
             earlier: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> torch.Tensor:
        """One sequential step: ``x[i]`` from ``x[i+1]``, the network output and the noise ``z[i]``.

        A multistep sampler's also from ``earlier[l-1] = (x[i+1+l], out_{i+l})`` for every level
        ``l`` with ``i + l < T`` (``earlier`` may hold more pairs, or stop there).
        """
        x = self.a[i] * x_next + self.b[i] * out + self.c[i] * z
        for level, (a_l, b_l) in enumerate(self.levels[:self.num_steps - 1 - i], start=1):
            x_l, out_l = earlier[level - 1]
            x = x + a_l[i] * x_l + b_l[i] * out_l
        return x

    @classmethod
    def from_scheduler(cls, scheduler: Any, eta: float = 0.0, *, verify: bool = True,
                       s_churn: float = 0.0) -> "Schedule":
        """Build the schedule of a configured diffusers scheduler (call ``set_timesteps(T)`` first).

        Supported (each family's module lists what it accepts and refuses): ``DDIMScheduler``,
        ``DDPMScheduler`` (``paratAA.schedule.ddim``), ``EulerDiscreteScheduler``,
        ``FlowMatchEulerDiscreteScheduler`` (``paratAA.schedule.sigma``),
        ``DPMSolverMultistepScheduler`` and ``UniPCMultistepScheduler`` (``paratAA.schedule.multistep``).

        Args:
            scheduler: a configured diffusers scheduler of a supported class.
            eta: DDIM stochasticity, ``>= 0`` (0: deterministic DDIM, 1: DDPM-like noise); the
                deterministic samplers need 0, DDPM ignores it.
            verify: run the scheduler's own step loop (on a copy) against the recurrence.
            s_churn: the ``s_churn`` an Euler step loop would pass to ``step``; only 0 is supported.

        Returns:
            The schedule, on the CPU.

        Raises:
            ScheduleError: a configuration that is not affine (named), an unknown scheduler,
                ``set_timesteps`` not called, ``eta`` out of range, or a step count whose timesteps
                leave the training range.
        """
        from paratAA.schedule import ddim, multistep, sigma  # the families build on this module

        kind = type(scheduler).__name__
        for family in (ddim, sigma, multistep):
            if kind in family.SCHEDULERS:
                require_timesteps(scheduler)
                return family.from_scheduler(cls, scheduler, eta=eta, verify=verify, s_churn=s_churn)
        supported = ", ".join(name for family in (ddim, sigma, multistep) for name in family.SCHEDULERS)
        raise ScheduleError(
            f"scheduler: {kind} is not supported; use one of {supported} "
            "(e.g. DDIMScheduler.from_config(pipe.scheduler.config))")


def require_timesteps(scheduler: Any) -> None:
    """ScheduleError unless ``scheduler.set_timesteps`` was called."""
    if getattr(scheduler, "num_inference_steps", None) is None:
        raise ScheduleError("scheduler: call scheduler.set_timesteps(T) before Schedule.from_scheduler")


def posterior_variance(abar: torch.Tensor, abar_prev: torch.Tensor) -> torch.Tensor:
    """DDPM posterior variance of the step from ``abar`` to the less noisy ``abar_prev``."""
    return (1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)


def as_x_and_out(abar: torch.Tensor, prediction_type: str) -> tuple[tuple, tuple]:
    """(x0, eps) of a variance-preserving sample as linear maps of (x_t, out).

    Returns ``((x0_x, x0_out), (eps_x, eps_out))``."""
    s, r = abar.sqrt(), (1 - abar).sqrt()
    if prediction_type == "epsilon":
        return (1 / s, -r / s), (torch.zeros_like(s), torch.ones_like(s))
    if prediction_type == "sample":
        return (torch.zeros_like(s), torch.ones_like(s)), (1 / r, -s / r)
    return (s, -r), (r, s)  # v_prediction: x0 = s x - r v, eps = r x + s v


def sigma_denoised_coefficients(s: torch.Tensor, prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, q)`` with ``x0 = p x + q out`` at noise level ``s``: flow matching ``x - s v``; Euler as its
    ``step`` computes ``pred_original_sample`` (``x`` unscaled, ``x = x0 + s n``)."""
    if prediction_type == "flow_prediction" or prediction_type == "epsilon":
        return torch.ones_like(s), -s
    if prediction_type == "v_prediction":
        return 1 / (s**2 + 1), -s / (s**2 + 1).sqrt()
    return torch.zeros_like(s), torch.ones_like(s)  # sample


StepNoise = Callable[[torch.Generator, tuple], tuple[torch.Tensor, dict]]
"""``noise(generator, shape) -> (z, step_kwargs)``: the noise ``z[i]`` of one step and the extra
arguments that make ``scheduler.step`` use that very noise."""


def no_noise(generator: torch.Generator, shape: tuple) -> tuple[torch.Tensor, dict]:
    """``StepNoise`` of a deterministic sampler: ``z = 0``, no extra arguments."""
    return torch.zeros(shape, dtype=torch.float64), {}


def verify_step_loop(schedule: Schedule, scheduler: Any, noise: StepNoise = no_noise) -> None:
    """Run the scheduler's own step loop against the recurrence (every family).

    On a copy of the scheduler reset to its first step (Euler, flow matching and the multistep
    solvers keep a step counter and a history; UniPC also its last corrected sample), starting
    from random ``x[T]``: each scheduler step
    ``k`` (our ``i = T - 1 - k``) gets a random network output and its noise (``noise``), and the
    input of the next step is the scheduler's own output, as in a sampling loop. Each step's output
    is compared with ``Schedule.step`` on the same inputs; the multistep terms read the loop's own
    earlier inputs and outputs.

    Raises:
        ScheduleError: a relative difference above ``VERIFY_TOLERANCE`` (``step`` works in float32).
    """
    loop = copy.deepcopy(scheduler)
    loop._step_index = None  # noqa: SLF001  (diffusers' step counter: start from the first timestep)
    if hasattr(loop, "set_begin_index"):
        loop.set_begin_index(0)
    if hasattr(loop, "model_outputs"):  # the multistep solvers' history of data predictions
        loop.lower_order_nums = 0
        loop.model_outputs = [None] * loop.config.solver_order
    if hasattr(loop, "last_sample"):  # UniPC's corrected sample of the previous step
        loop.last_sample = None
    gen = torch.Generator().manual_seed(0)
    shape = (2, 3)
    worst = 0.0
    num_steps = schedule.num_steps
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    earlier: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x[i+1+l], out_{i+l}), l = 1, 2, ...
    for k, t in enumerate(loop.timesteps):
        i = num_steps - 1 - k
        out = torch.randn(shape, generator=gen, dtype=torch.float64)
        z, kwargs = noise(gen, shape)
        if schedule.input_scale is not None:
            scaled = loop.scale_model_input(x, t).to(torch.float64)
            worst = max(worst, float((scaled - schedule.input_scale[i] * x).abs().max()))
        got = loop.step(out, t, x, **kwargs).prev_sample.to(torch.float64)
        expected = schedule.step(i, x, out, z, earlier)
        worst = max(worst, float(((got - expected).abs() / (1 + expected.abs())).max()))
        earlier = [(x, out)] + earlier[:max(schedule.num_levels - 1, 0)]
        x = got
    if not worst <= VERIFY_TOLERANCE:
        raise ScheduleError(
            f"scheduler: its step() differs from the affine coefficients by {worst:.2e}; "
            "this configuration is not supported")
