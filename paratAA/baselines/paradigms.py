"""ParaDiGMS baseline: Picard iteration over a sliding window (Shih et al., NeurIPS 2023).

This is the parallel sampler that diffusers ships as ``StableDiffusionParadigmsPipeline`` (with
``DDIMParallelScheduler`` / ``DDPMParallelScheduler``), written against this package's contract so
that benchmarks compare it with ParaTAA on the same problem, noise and schedule.

Index convention as in ``paratAA.schedule``: trajectory ``x[0..T]``, ``x[T]`` the noise, step ``i``
maps ``x[i+1]`` to ``x[i]``. Per sample, the window is the ``W`` noisiest non-final steps
``[lo, h)``, ``lo = max(h - W, 0)``; every ``x[j]`` with ``j >= h`` is final. One iteration:

1. Evaluate the network at ``x[p+1]`` for every window step ``p`` (one batched call) and form the
   drift ``d[p] = F_p(x[p+1]) - x[p+1]`` (``F_p`` the sampler's step, its noise ``c[p] z[p]``
   included).
2. Picard update: ``x[p] <- x[h] + sum_{q=p}^{h-1} d[q]`` for every window step (a cumulative sum
   from the top of the window: every unknown is anchored on the final ``x[h]``).
3. Error of each new value against the old one, ``e[p] = mean((x_new[p] - x_old[p])^2)``, compared
   with ``tolerance^2 * sigma[p-1]^2``: ``sigma`` is the DDPM posterior std of the step that
   consumes ``x[p]`` (the scheduler's ``_get_variance``, also for DDIM), and the sample ``x[0]``
   has variance 0, so any change there counts as an error. Walking down from the top, the first
   ``x[p]`` whose error exceeds that bound is the new frontier (its inputs were accurate, so it is
   final); if none does, the window advances by its full size ``W``.
4. Steps that join the window start as a copy of the lowest updated latent ``x[lo]``.

These rules (the tolerance default 0.1, the error scaled by the step's noise variance and compared
with ``tolerance**2``, the stride, the initialisation) are those of diffusers' pipeline; run with a
batch of one sample it gives that pipeline's latents and iteration count (``tests/test_paradigms.py``
checks it on the tiny SD model). Two differences by design: the state is float64, and each sample of
a batch keeps its own window (the pipeline moves one window for the whole batch, by the slowest
sample), so a finished sample costs nothing more, as in ``paratAA.solve``.

Unlike ParaTAA's safeguard, the stride rule cannot advance past a step whose input changed by more
than the tolerance, but an ``x[p]`` accepted with an error just under it is final although not exact:
the result is close to, not equal to, the sequential sample; smaller tolerances bring it closer.
"""

from __future__ import annotations

from typing import Callable

import torch

from paratAA.batch import BatchSolver, EpsFn, IterationRecord, SampleStrategy, SolveResult
from paratAA.equations import first_order_residual, increment_map, rms
from paratAA.schedule import Schedule
from paratAA.validation import check_callable, require_int, require_real, validate_noise

__all__ = ["DEFAULT_TOLERANCE", "PicardSample", "check_stride_arguments", "consumer_variance", "solve_paradigms"]

# diffusers' StableDiffusionParadigmsPipeline default (``tolerance=0.1``); its default window is 10.
DEFAULT_TOLERANCE = 0.1


class PicardSample(SampleStrategy):
    """Picard update and stride rule of one sample's window (the module docstring's steps 1-4).

    Shared with ParaSolver (``paratAA.baselines.parasolver``), whose Newton step with the network's Jacobian
    taken as the identity is this same update; it differs in ``init="denoised"``, in a few
    sequential warm-up steps and in the error bound of the last latents.

    Args:
        x, z, schedule: as for ``SampleStrategy``.
        window_size: steps per window after the warm-up.
        error_bound: float64 ``(T,)``: ``x[p]`` counts as changed when its mean squared change
            exceeds ``error_bound[p]``.
        init: how joining steps are initialised (``SampleStrategy``).
        warmup_steps: the first iterations evaluate a window of one step (sequential steps, exact);
            then the window takes its full size.
    """

    def __init__(self, x: torch.Tensor, z: torch.Tensor, schedule: Schedule, window_size: int,
                 error_bound: torch.Tensor, init: str = "copy", warmup_steps: int = 0):
        self.error_bound = error_bound
        self.full_size = window_size
        self.warmup_steps = min(warmup_steps, schedule.num_steps)
        num_steps = schedule.num_steps
        super().__init__(x, z, schedule, 1 if self.warmup_steps else window_size, num_steps, num_steps, init)

    def update(self, out: torch.Tensor) -> float:
        lo, hi = self.window.bounds
        x_above = self.x[lo + 1:hi + 1]  # the inputs of the window's steps
        a = self.schedule.a[lo:hi]
        g = self.step_offsets(out)
        old = self.x[lo:hi]
        residual = float(rms(first_order_residual(old, x_above, a, g)).max())
        self.remember_denoised(out)
        # Picard: x[p] = x[hi] + sum_{q=p}^{hi-1} (F_q(x[q+1]) - x[q+1]), the full-order increment map.
        new = increment_map(x_above, a, g, hi - lo)
        error = (new - old).flatten(1).pow(2).mean(1)
        self.x[lo:hi] = new
        self.advance(_next_frontier(error, self.error_bound[lo:hi], self.window.size, lo, hi))
        if self.iterations == self.warmup_steps and self.window.size != self.full_size:
            self.window.size = self.full_size  # warm-up over: widen the window, initialise the new steps
            self._join(range(self.window.bounds[0], self.window.initialized_from))
        return residual


@torch.no_grad()
def solve_paradigms(eps_fn: EpsFn, schedule: Schedule, noise: torch.Tensor, *, window_size: int,
                    tolerance: float = DEFAULT_TOLERANCE, max_iters: int | None = None,
                    callback: Callable[[IterationRecord], None] | None = None) -> SolveResult:
    """Sample a batch with ParaDiGMS (Picard iteration over a sliding window, Shih et al. 2023).

    Args:
        eps_fn: ``eps_fn(x, steps, samples) -> out`` as for ``paratAA.solve``: ``x`` float64
            ``(n, *latent)``, ``steps`` the step indices, ``samples`` the sample of each row.
        schedule: the sampler's coefficients (``Schedule.from_scheduler``).
        noise: ``(B, T+1, *latent)``: ``noise[:, T]`` is ``x[T]``, ``noise[:, i]`` the ``z[i]`` of step i.
        window_size: steps per sample evaluated in parallel per iteration (diffusers' ``parallel``).
        tolerance: stride tolerance (diffusers' ``tolerance``): an updated latent counts as
            unchanged when its mean squared change is at most ``tolerance**2`` times the noise
            variance of the step that consumes it.
        max_iters: stop after this many iterations (``result.converged`` is then False).
        callback: called with each ``IterationRecord`` after its iteration.

    Returns:
        A ``SolveResult``; ``max_residual`` in the records is the first-order RMS residual of the
        window before the update (as in ``paratAA.solve``), not the stride error.

    Raises:
        ValueError: an argument out of range or a shape mismatch (the message names it).
        paratAA.NonFiniteError: the network returned NaN or inf.
    """
    check_stride_arguments(eps_fn, schedule, noise, window_size, tolerance, max_iters)
    num_steps = schedule.num_steps
    window_size = int(min(window_size, num_steps))
    sched = schedule.to(noise.device)
    noise = noise.to(torch.float64)
    trajectory = noise[:, num_steps:num_steps + 1].repeat(1, num_steps + 1, *([1] * (noise.dim() - 2)))
    error_bound = tolerance ** 2 * consumer_variance(sched)
    samples = [PicardSample(trajectory[k], noise[k], sched, window_size, error_bound)
               for k in range(noise.shape[0])]
    return BatchSolver(eps_fn, trajectory, samples, max_iters).run(callback)


def _next_frontier(error: torch.Tensor, bound: torch.Tensor, window_size: int, lo: int, hi: int) -> int:
    """The stride rule: the highest ``x[p]`` whose change exceeds its bound becomes the frontier.

    Window-local ``error[w]`` belongs to ``x[lo + w]``; walking down from ``x[hi-1]``, the first
    exceeding one is final (its input ``x[p+1]`` was within tolerance). With none, stride ``W``.
    """
    exceeds = (error > bound).flip(0)  # position k is x[hi-1-k]
    first = int(torch.argmax(exceeds.int())) if bool(exceeds.any()) else hi - lo
    return max(hi - min(first + 1, window_size), 0)


def consumer_variance(schedule: Schedule) -> torch.Tensor:
    """``(T,)``: for each ``x[p]``, the posterior variance ``sigma[p-1]^2`` of the step consuming it; 0 for ``x[0]``."""
    return torch.cat([schedule.sigma.new_zeros(1), schedule.sigma.pow(2)[:-1]])


def check_stride_arguments(eps_fn: EpsFn, schedule: Schedule, noise: torch.Tensor, window_size: int,
                           tolerance: float, max_iters: int | None) -> None:
    """The argument checks of the stride-rule samplers (ParaDiGMS, ParaSolver); ValueError naming the argument."""
    validate_noise(schedule, noise)
    check_callable("eps_fn", eps_fn)
    require_int("window_size", window_size)
    require_real("tolerance", tolerance)
    if max_iters is not None:
        require_int("max_iters", max_iters)
