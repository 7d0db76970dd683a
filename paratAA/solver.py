"""Parallel solve of a sampler's trajectory: FP, FP+ and ParaTAA (Tang et al., ICML 2024).

The trajectory ``x[0..T]`` of a sampler with ``T`` steps (index convention in
``paratAA.schedule``) is the unique solution of the triangular system ``x[i] = F_i(x[i+1])``.
Each iteration

1. evaluates the network once per window step, for every unfinished sample, in one batched call
   of ``eps_fn`` (the only place the network is called);
2. tests every window step on its first-order residual ``r_i = F_i(X) - x[i]`` (converged when
   ``rms(r_i) <= tol1`` or ``rms(r_i) <= tol2 * sigma_i``) and finds the highest unconverged step i*;
3. updates the window with the order-K residual ``R_i = F^K_i(X) - x[i]``: the plain update
   ``x_i + R_i`` at and above i* (the safeguard: x[i*] is then final), Triangular Anderson
   Acceleration below it (``memory_size >= 2``);
4. moves the frontier to i* (or to the window bottom when every step converged) and lets new steps
   into the window, initialised as a copy of the lowest initialised latent.

FP is ``order=1, memory_size=1``; FP+ is ``order>1, memory_size=1``; ParaTAA is
``memory_size>=2``. Since the frontier drops by at least one per iteration, no sample needs more
than ``T`` iterations, the cost of sequential sampling. All solver state is float64.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import torch

from paratAA.anderson import TriangularAnderson
from paratAA.equations import MAP_FORMS, first_order_residual, increment_map, order_k_map, rms, step_offset
from paratAA.memory import check_solve_fits
from paratAA.schedule import Schedule
from paratAA.validation import (NonFiniteError, check_callable, check_finite_state, checked_output,
                                require_bool, require_int, require_real, synchronize, validate_noise)
from paratAA.window import SlidingWindow

__all__ = ["EpsFn", "IterationRecord", "NonFiniteError", "SolveResult", "Solver", "solve", "sequential"]

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``eps_fn(x, steps, samples) -> out``: network output for each row.

``x``: float64 ``(n, *latent)``; ``steps``: int64 ``(n,)`` step indices ``i`` (the network's
timestep is ``schedule.timesteps[i]``); ``samples``: int64 ``(n,)``, the sample of the batch each
row belongs to (for per-sample conditioning). Returns ``(n, *latent)`` in any float dtype.
"""


@dataclass
class IterationRecord:
    """What one parallel iteration did, for every sample of the batch.

    Attributes:
        iteration: 1-based count of parallel iterations (rounds of batched network calls).
        windows: per sample, the steps ``[lo, hi)`` evaluated; None for a finished sample.
        evaluations: rows of the network batch of this iteration.
        max_residual: per sample, the largest first-order RMS residual over its window before the
            update; None for a finished sample.
        frontier: per sample after the update: steps ``>= frontier`` are final; 0 means done.
        network_seconds: wall-clock inside ``eps_fn``.
        solver_seconds: wall-clock of everything else in the iteration.
        x0: float64 ``(B, *latent)``: each sample's current estimate, ``x[0]`` once the window has
            reached it, before that the lowest initialised latent (what ``x[0]`` starts from).
            None in ``SolveResult.records`` (kept only while iterating, to save memory).
        done: every sample has finished.
    """

    iteration: int
    windows: list[tuple[int, int] | None]
    evaluations: int
    max_residual: list[float | None]
    frontier: list[int]
    network_seconds: float
    solver_seconds: float
    x0: torch.Tensor | None
    done: bool


@dataclass
class SolveResult:
    """Outcome of a parallel solve.

    Attributes:
        trajectory: float64 ``(B, T+1, *latent)``; ``trajectory[:, 0]`` are the samples.
        iterations: parallel iterations (rounds of batched network calls).
        evaluations: rows of network evaluations, all samples together.
        per_sample_iterations, per_sample_evaluations: the same, per sample.
        converged: every sample reached frontier 0 (False when ``max_iters`` stopped the solve).
        seconds: wall-clock of the whole solve.
        records: one ``IterationRecord`` per iteration (``x0`` dropped).
    """

    trajectory: torch.Tensor
    iterations: int
    evaluations: int
    per_sample_iterations: list[int]
    per_sample_evaluations: list[int]
    converged: bool
    seconds: float
    records: list[IterationRecord] = field(default_factory=list)

    @property
    def samples(self) -> torch.Tensor:
        """float64 ``(B, *latent)``: ``x[0]`` of every sample."""
        return self.trajectory[:, 0]


@dataclass(frozen=True)
class _Settings:
    window_size: int
    order: int
    memory_size: int
    tol1: float
    tol2: float
    anderson_lambda: float
    reanchor: bool
    map_form: str


class _SampleSolver:
    """One sample's window, history and update; its trajectory is a view into the batch's."""

    def __init__(self, x: torch.Tensor, z: torch.Tensor, schedule: Schedule, settings: _Settings,
                 frontier: int, initialized_from: int):
        self.x, self.z, self.schedule, self.settings = x, z, schedule, settings
        self.window = SlidingWindow(settings.window_size, frontier, initialized_from)
        self.anderson = (TriangularAnderson(settings.window_size, tuple(x.shape[1:]), settings.memory_size,
                                            settings.anderson_lambda, x.device)
                         if settings.memory_size >= 2 else None)
        self.iterations = 0
        self.evaluations = 0
        self._join(range(*self.window.bounds))

    def network_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x[lo+1..hi], steps lo..hi-1)``: the rows this sample needs evaluated."""
        lo, hi = self.window.bounds
        return self.x[lo + 1:hi + 1], torch.arange(lo, hi, device=self.x.device)

    def estimate(self) -> torch.Tensor:
        return self.x[self.window.initialized_from]

    def update(self, out: torch.Tensor) -> float:
        """Apply one iteration given the network outputs of the window; return the max residual."""
        lo, hi = self.window.bounds
        s, cfg = self.schedule, self.settings
        x_window, x_above = self.x[lo:hi], self.x[lo + 1:hi + 1]
        a = s.a[lo:hi]
        g = step_offset(s.b[lo:hi], s.c[lo:hi], out, self.z[lo:hi])

        rho = rms(first_order_residual(x_window, x_above, a, g))
        converged = (rho <= cfg.tol1) | (rho <= cfg.tol2 * s.sigma[lo:hi])
        unconverged = torch.nonzero(~converged).flatten()
        highest_unconverged = int(unconverged.max()) if unconverged.numel() else None

        order_map = order_k_map if cfg.map_form == "affine" else increment_map
        residual = order_map(x_above, a, g, min(cfg.order, hi - lo)) - x_window
        if self.anderson is not None and highest_unconverged is not None:
            # How a change of G_{i*} = x[i*] + R[i*] reaches G_i below it (full order): A(i, i*-1) or 1.
            carried = None if not cfg.reanchor else (a if cfg.map_form == "affine" else torch.ones_like(a))
            new = self.anderson.update(lo, hi, x_window, residual, highest_unconverged, reanchor_a=carried)
        else:
            new = x_window + residual
        check_finite_state(self.iterations + 1, new, rho)
        self.x[lo:hi] = new

        self.iterations += 1
        self.evaluations += hi - lo
        new_frontier = lo if highest_unconverged is None else lo + highest_unconverged
        self._join(self.window.advance(new_frontier))
        return float(rho.max())

    def _join(self, steps: range) -> None:
        """Initialise steps new to the window: a copy of the lowest initialised latent, fresh history."""
        if not steps:
            return
        lowest = self.window.initialized_from
        if steps.start < lowest:
            self.x[steps.start:lowest] = self.x[lowest]
            self.window.initialized_from = steps.start
        if self.anderson is not None:
            self.anderson.forget(steps.start, steps.stop)


class Solver:
    """Iterate a parallel solve one batched network call at a time.

    Arguments are those of ``solve``. ``iterate()`` yields one ``IterationRecord`` per iteration;
    ``result()`` returns the ``SolveResult`` so far.
    """

    def __init__(self, eps_fn: EpsFn, schedule: Schedule, noise: torch.Tensor, *, window_size: int, order: int,
                 memory_size: int, tol1: float = 1e-3, tol2: float = 1e-3, max_iters: int | None = None,
                 init_trajectory: torch.Tensor | None = None, variation_steps: int | None = None,
                 anderson_lambda: float = 1e-3, reanchor: bool = False, map_form: str = "affine"):
        _validate(schedule, noise, window_size, order, memory_size, tol1, tol2, max_iters,
                  init_trajectory, variation_steps, anderson_lambda)
        check_callable("eps_fn", eps_fn)
        require_bool("reanchor", reanchor)
        if map_form not in MAP_FORMS:
            raise ValueError(f"map_form must be one of {MAP_FORMS}, got {map_form!r}")
        check_solve_fits(noise, window_size, memory_size, warm_start=init_trajectory is not None)
        num_steps = schedule.num_steps
        self.eps_fn = eps_fn
        self.schedule = schedule.to(noise.device)
        self.noise = noise.to(torch.float64)
        self.max_iters = max_iters
        settings = _Settings(int(min(window_size, num_steps)), int(order), int(memory_size), float(tol1),
                             float(tol2), float(anderson_lambda), bool(reanchor), map_form)
        if init_trajectory is None:
            self.trajectory = torch.zeros_like(self.noise)
            frontier, initialized_from = num_steps, num_steps
        else:
            self.trajectory = init_trajectory.to(device=noise.device, dtype=torch.float64).clone()
            frontier, initialized_from = (num_steps if variation_steps is None else int(variation_steps)), 0
        self.trajectory[:, num_steps] = self.noise[:, num_steps]
        self._samples = [_SampleSolver(self.trajectory[k], self.noise[k], self.schedule, settings,
                                       frontier, initialized_from)
                         for k in range(self.noise.shape[0])]
        self.records: list[IterationRecord] = []
        self.seconds = 0.0

    @property
    def done(self) -> bool:
        return all(sample.window.done for sample in self._samples)

    def iterate(self) -> Iterator[IterationRecord]:
        """Run iterations until every sample is done or ``max_iters`` is reached."""
        while not self.done and (self.max_iters is None or len(self.records) < self.max_iters):
            start = time.perf_counter()
            record = self._iteration()
            self.seconds += time.perf_counter() - start
            self.records.append(replace(record, x0=None))
            yield record

    def result(self) -> SolveResult:
        return SolveResult(
            trajectory=self.trajectory,
            iterations=len(self.records),
            evaluations=sum(s.evaluations for s in self._samples),
            per_sample_iterations=[s.iterations for s in self._samples],
            per_sample_evaluations=[s.evaluations for s in self._samples],
            converged=self.done,
            seconds=self.seconds,
            records=list(self.records),
        )

    @torch.no_grad()
    def _iteration(self) -> IterationRecord:
        device = self.trajectory.device
        active = [k for k, sample in enumerate(self._samples) if not sample.window.done]
        windows: list[tuple[int, int] | None] = [None] * len(self._samples)
        inputs, steps, owners = [], [], []
        for k in active:
            x, sample_steps = self._samples[k].network_inputs()
            windows[k] = self._samples[k].window.bounds
            inputs.append(x)
            steps.append(sample_steps)
            owners.append(torch.full_like(sample_steps, k))
        x = torch.cat(inputs)

        synchronize(device)
        start = time.perf_counter()
        out = self.eps_fn(x, torch.cat(steps), torch.cat(owners))
        synchronize(device)
        network_seconds = time.perf_counter() - start

        out = checked_output(out, x, iteration=len(self.records) + 1)
        residuals: list[float | None] = [None] * len(self._samples)
        for k, chunk in zip(active, out.split([len(s) for s in steps])):
            residuals[k] = self._samples[k].update(chunk)
        x0 = torch.stack([sample.estimate() for sample in self._samples])
        synchronize(device)
        return IterationRecord(
            iteration=len(self.records) + 1, windows=windows, evaluations=x.shape[0], max_residual=residuals,
            frontier=[sample.window.frontier for sample in self._samples], network_seconds=network_seconds,
            solver_seconds=time.perf_counter() - start - network_seconds, x0=x0, done=self.done)


def solve(eps_fn: EpsFn, schedule: Schedule, noise: torch.Tensor, *, window_size: int, order: int,
          memory_size: int, tol1: float = 1e-3, tol2: float = 1e-3, max_iters: int | None = None,
          init_trajectory: torch.Tensor | None = None, variation_steps: int | None = None,
          anderson_lambda: float = 1e-3, reanchor: bool = False, map_form: str = "affine",
          callback: Callable[[IterationRecord], None] | None = None) -> SolveResult:
    """Solve B sampling trajectories in parallel (FP, FP+ or ParaTAA; see the module docstring).

    Args:
        eps_fn: the network, ``eps_fn(x, steps, samples) -> out`` (see ``EpsFn``).
        schedule: the sampler's coefficients (``Schedule.from_scheduler``).
        noise: ``(B, T+1, *latent)``: ``noise[:, T]`` is ``x[T]``, ``noise[:, i]`` the ``z_i`` of
            step ``i``. Its device is the solver's.
        window_size: steps evaluated per sample per iteration (``>= 1``; capped at T).
        order: K of the order-K equations, ``1 <= order <= window_size``.
        memory_size: iterates kept per step for TAA; 1 disables acceleration.
        tol1, tol2: a step has converged when the RMS of its first-order residual is
            ``<= tol1`` or ``<= tol2 * sigma_i``.
        max_iters: stop after this many iterations even if unconverged (None: run to the end).
        init_trajectory: ``(B, T+1, *latent)`` warm start: the starting iterate of every step.
        variation_steps: with ``init_trajectory``: re-solve only steps ``i < variation_steps``,
            keeping the others (default T: re-solve everything).
        anderson_lambda: TAA's regularisation lambda, ``> 0``.
        reanchor: an extension of the published method (off by default): below the highest
            unconverged step, TAA leaves out the change it would inherit from that step, which
            takes the plain update (see ``TriangularAnderson.update``). It removes the one-step
            lag of the frontier after a jump; the solution is unchanged.
        map_form: the form of the order-K equations (``paratAA.equations``): ``"affine"``, the
            paper's (default), or ``"increment"``, a telescoping sum of step increments with the
            same solution that converges in markedly fewer iterations on diffusion models
            (benchmarks/RESULTS.md).
        callback: called with every ``IterationRecord`` as soon as it is made.

    Returns:
        The ``SolveResult``.

    Raises:
        ValueError: an argument is invalid (the message names it).
        NonFiniteError: the network returned NaN or inf.
    """
    solver = Solver(eps_fn, schedule, noise, window_size=window_size, order=order, memory_size=memory_size,
                    tol1=tol1, tol2=tol2, max_iters=max_iters, init_trajectory=init_trajectory,
                    variation_steps=variation_steps, anderson_lambda=anderson_lambda, reanchor=reanchor,
                    map_form=map_form)
    for record in solver.iterate():
        if callback is not None:
            callback(record)
    return solver.result()


@torch.no_grad()
def sequential(eps_fn: EpsFn, schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """The sequential sampler: T network calls of batch B, one step after another.

    Args:
        eps_fn, schedule, noise: as for ``solve``.

    Returns:
        float64 ``(B, T+1, *latent)`` trajectory; ``[:, 0]`` are the samples.
    """
    validate_noise(schedule, noise)
    check_callable("eps_fn", eps_fn)
    schedule = schedule.to(noise.device)
    noise = noise.to(torch.float64)
    num_steps, batch = schedule.num_steps, noise.shape[0]
    x = torch.empty_like(noise)
    x[:, num_steps] = noise[:, num_steps]
    samples = torch.arange(batch, device=noise.device)
    for i in reversed(range(num_steps)):
        inputs = x[:, i + 1].clone()
        out = checked_output(eps_fn(inputs, torch.full_like(samples, i), samples), inputs, iteration=num_steps - i)
        x[:, i] = schedule.step(i, x[:, i + 1], out, noise[:, i])
    return x


def _validate(schedule, noise, window_size, order, memory_size, tol1, tol2, max_iters,
              init_trajectory, variation_steps, anderson_lambda) -> None:
    validate_noise(schedule, noise)
    require_int("window_size", window_size)
    require_int("order", order)
    if order > window_size:
        raise ValueError(f"order ({order}) must not exceed window_size ({window_size})")
    require_int("memory_size", memory_size)
    require_real("tol1", tol1)
    require_real("tol2", tol2)
    if max_iters is not None:
        require_int("max_iters", max_iters)
    require_real("anderson_lambda", anderson_lambda, strict=True)
    if init_trajectory is None:
        if variation_steps is not None:
            raise ValueError("variation_steps needs init_trajectory (a warm start)")
        return
    if not isinstance(init_trajectory, torch.Tensor) or init_trajectory.shape != noise.shape:
        got = tuple(init_trajectory.shape) if isinstance(init_trajectory, torch.Tensor) else type(init_trajectory).__name__
        raise ValueError(f"init_trajectory must have the shape of noise {tuple(noise.shape)}, got {got}")
    if not bool(torch.isfinite(init_trajectory).all()):
        raise ValueError("init_trajectory must be finite")
    if variation_steps is not None:
        require_int("variation_steps", variation_steps, 1, schedule.num_steps)
