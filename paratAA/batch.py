"""The batch loop every parallel sampler shares: one batched network call per parallel iteration.

A batch of ``B`` samples is solved together; each sample has its own window and its own update
rule, a *strategy* (``SampleStrategy``: ParaTAA's ``paratAA.solver``, the Picard iteration of
``paratAA.baselines.paradigms``, the Newton-like sweep of ``paratAA.baselines.parasolver``). One iteration

1. gathers every unfinished sample's window rows (``network_inputs``) into one batch,
2. calls the network once on it (the only place the network is called; timed),
3. scatters the outputs back, each sample updating its own window (``receive``, then ``update``),
4. and makes an ``IterationRecord``.

Index convention as in ``paratAA.schedule``: trajectory ``x[0..T]``, ``x[T]`` the noise, step ``i``
maps ``x[i+1]`` to ``x[i]`` calling the network at ``schedule.timesteps[i]``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import torch

from paratAA.equations import step_offset
from paratAA.options import INIT_RULES
from paratAA.precision import FloorProbe
from paratAA.schedule import Schedule
from paratAA.validation import check_finite_state, checked_output, synchronize
from paratAA.window import SlidingWindow

__all__ = ["INIT_RULES", "STOP_REASONS", "BatchSolver", "EpsFn", "IterationRecord", "SampleStrategy", "SolveResult"]

STOP_REASONS = ("tolerance", "floor", "safeguard", "max_iters", "sequential")  # SolveResult.stop_reasons


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
        windows: per sample, the window ``[lo, hi)``; None for a finished sample. (A settling block
            above it, ``paratAA.window``, is evaluated and updated too.)
        evaluations: rows of the network batch of this iteration (settling blocks and probes included).
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
        stop_reasons: per sample, why it stopped (``STOP_REASONS``): ``"tolerance"`` (every step
            not made final by the safeguard met the tolerance), ``"floor"`` (some step was accepted
            only within the network's residual floor, ``paratAA.precision``), ``"safeguard"`` (no
            step was ever accepted by a test: the safeguard finished one step per iteration, i.e.
            sequential sampling; a tolerance too tight for the network?), ``"max_iters"`` (stopped
            unconverged) or ``"sequential"`` (``window_size="auto"`` ran the sequential sampler).
        floors: float64 ``(B, T)``, each step's residual floor (``paratAA.precision``), or None
            when none was measured (a float32 or float64 network).
        method: ``"parallel"``, or ``"sequential"`` when ``window_size="auto"`` found no window
            predicted to beat the sequential sampler and ran it (``paratAA.planner``).
        plan: ``window_size="auto"``'s ``paratAA.planner.Plan`` (the window, the predictions, the
            seconds spent measuring the network's cost); None otherwise.
        sequential_seconds: the sequential sampler's wall-clock when known (``sequential_source``:
            ``"measured"`` or ``"predicted"`` by the planner), else None.
    """

    trajectory: torch.Tensor
    iterations: int
    evaluations: int
    per_sample_iterations: list[int]
    per_sample_evaluations: list[int]
    converged: bool
    seconds: float
    records: list[IterationRecord] = field(default_factory=list)
    stop_reasons: list[str] = field(default_factory=list)
    floors: torch.Tensor | None = None
    method: str = "parallel"
    plan: Any = None
    sequential_seconds: float | None = None
    sequential_source: str | None = None

    @property
    def network_seconds(self) -> float:
        """Seconds inside the network calls (sum of the records)."""
        return sum(r.network_seconds for r in self.records)

    @property
    def solver_seconds(self) -> float:
        """Seconds of the solver's own work (sum of the records)."""
        return sum(r.solver_seconds for r in self.records)

    @property
    def speedup(self) -> float | None:
        """``sequential_seconds / seconds`` (> 1: faster than sequential), or None when unknown."""
        if self.sequential_seconds is None or not self.seconds > 0:
            return None
        return self.sequential_seconds / self.seconds

    @property
    def samples(self) -> torch.Tensor:
        """float64 ``(B, *latent)``: ``x[0]`` of every sample."""
        return self.trajectory[:, 0]


class SampleStrategy:
    """One sample's window and update rule (base class of the samplers' strategies).

    Holds what every strategy shares: the sample's trajectory ``x`` (a view into the batch's
    ``(T+1, *latent)`` state), its noise ``z``, the schedule, the ``SlidingWindow`` and the
    counters. Subclasses implement ``update`` (and may extend ``_joined``, e.g. to reset a history).

    A multistep sampler (``schedule.is_multistep``: with ``L`` levels, step ``p`` also reads
    ``x[p+1+l]`` and ``out_{p+l}``, ``l = 1..L``) keeps every step's latest network output; the
    final steps just above the window, ``hi .. hi+L-1``, are evaluated with the window while their
    output is unknown (once after a warm start; after that, each was evaluated when it was in the
    window): one more row per unknown level. ``step_offsets`` then includes the multistep terms,
    so the strategies' maps and residuals hold for both kinds of sampler.

    Steps joining the window start from the lowest initialised latent ``x[f]``,
    ``f = window.initialized_from``, by one of two rules (``init``):

    - ``"copy"``: a copy of ``x[f]`` (the paper's rule and ParaDiGMS's);
    - ``"denoised"``: the sampler's own steps from ``x[f]`` downwards with the predicted sample
      ``x0_hat`` held fixed (ParaSolver's initialisation, Lu et al. 2025): step ``j`` uses the
      network output that predicts ``x0_hat`` from ``x[j+1]``. ``x0_hat`` is the prediction of
      the latest network call at the window's lowest step (``remember_denoised``); before any
      call, the copy rule is used. No network calls; only the starting point changes.

    Args:
        x: float64 ``(T+1, *latent)`` view of this sample's trajectory.
        z: float64 ``(T+1, *latent)`` this sample's noise (``z[i]`` of step ``i``).
        schedule: the sampler's coefficients, on ``x``'s device.
        window_size: steps per window (``>= 1``, at most T).
        frontier: steps ``>= frontier`` are final at the start (T, or ``variation_steps``).
        initialized_from: steps ``>= initialized_from`` hold an iterate at the start.
    """

    def __init__(self, x: torch.Tensor, z: torch.Tensor, schedule: Schedule, window_size: int, frontier: int,
                 initialized_from: int, init: str = "copy"):
        if init not in INIT_RULES:
            raise ValueError(f"init must be one of {INIT_RULES}, got {init!r}")
        self.x, self.z, self.schedule, self.init = x, z, schedule, init
        self._denoised: torch.Tensor | None = None
        # (p, q) of the predicted sample p x + q out per step: read every iteration, computed once.
        self._denoising = schedule.denoised_coefficients() if init == "denoised" else None
        self.window = SlidingWindow(window_size, frontier, initialized_from)
        self.iterations = 0
        self.evaluations = 0
        # float64 (T,): the residual below which a step counts as converged whatever the tolerance
        # (a half-precision network's floor, set by BatchSolver's probe); None: none.
        self.floor: torch.Tensor | None = None
        # How the steps became final: accepted by the tolerance, only within the floor, or by the safeguard.
        self.final_by = {"tolerance": 0, "floor": 0, "safeguard": 0}
        num_steps = schedule.num_steps
        # Multistep samplers: every step's latest output, and whether it has one yet.
        self._outputs = torch.zeros_like(x[:num_steps]) if schedule.is_multistep else None
        self._has_output = torch.zeros(num_steps, dtype=torch.bool) if schedule.is_multistep else None
        self._join(range(*self.window.bounds))

    def network_inputs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x[lo+1..top], steps lo..top-1)``: the rows this sample needs evaluated, ``top`` the top of
        ``window.updated_bounds`` (a multistep sampler's up to the highest step of ``top .. top+L-1``
        whose output is unknown)."""
        lo, _ = self.window.updated_bounds
        top = self._evaluated_top()
        return self.x[lo + 1:top + 1], torch.arange(lo, top, device=self.x.device)

    def _evaluated_top(self) -> int:
        """One past the highest step to evaluate: the updated steps' top, or above it while a level's output is unknown."""
        _, top = self.window.updated_bounds
        if self._outputs is None:
            return top
        above = min(top + self.schedule.num_levels, self.schedule.num_steps)
        unknown = torch.nonzero(~self._has_output[top:above]).flatten()
        return top + int(unknown.max()) + 1 if unknown.numel() else top

    def receive(self, out: torch.Tensor) -> float:
        """Take the outputs for ``network_inputs()`` and ``update`` the steps of ``window.updated_bounds``
        (the window and its settling block); return the window's max residual."""
        lo, hi = self.window.bounds
        top = self.window.updated_bounds[1]
        if self._outputs is not None:
            self._outputs[lo:lo + out.shape[0]] = out
            self._has_output[lo:lo + out.shape[0]] = True
        self.evaluations += out.shape[0] - (hi - lo)  # rows above the window (``advance`` counts the window's)
        return self.update(out[:top - lo])

    def estimate(self) -> torch.Tensor:
        """The current estimate of ``x[0]``: the lowest initialised latent."""
        return self.x[self.window.initialized_from]

    def update(self, out: torch.Tensor) -> float:
        """Apply one iteration given the network outputs of the window; return the max residual.

        Args:
            out: float64 ``(top - lo, *latent)``, the outputs of the steps ``window.updated_bounds``.

        Returns:
            The largest first-order RMS residual of the window before the update.
        """
        raise NotImplementedError

    def step_offsets(self, out: torch.Tensor) -> torch.Tensor:
        """``g[p] = b[p] out_p + c[p] z[p]`` of the window steps (``paratAA.equations``); a multistep
        sampler's adds ``a_l[p] x[p+1+l] + b_l[p] out_{p+l}`` of every level ``l`` (the outputs kept
        by ``receive``). Over the updated steps, ``window.updated_bounds``."""
        lo, hi = self.window.updated_bounds
        s = self.schedule
        g = step_offset(s.b[lo:hi], s.c[lo:hi], out, self.z[lo:hi])
        for level, (a_l, b_l) in enumerate(s.levels, start=1):
            top = min(hi, s.num_steps - level)  # steps p >= T - l have no level-l term (zero coefficients)
            if top > lo:
                g[:top - lo] += step_offset(a_l[lo:top], b_l[lo:top], self.x[lo + 1 + level:top + 1 + level],
                                            self._outputs[lo + level:top + level])
        return g

    def remember_denoised(self, out: torch.Tensor) -> None:
        """Keep the predicted sample of the window's lowest step (call before the window's x changes)."""
        if self._denoising is not None:
            lo, _ = self.window.bounds
            p, q = self._denoising
            self._denoised = p[lo] * self.x[lo + 1] + q[lo] * out[0]

    def stop_reason(self) -> str:
        """Why this sample stopped (or would stop now): one of ``STOP_REASONS`` (``SolveResult.stop_reasons``)."""
        if not self.window.done:
            return "max_iters"
        if self.final_by["floor"]:
            return "floor"
        return "tolerance" if self.final_by["tolerance"] else "safeguard"

    def advance(self, new_frontier: int, by_safeguard: int = 0, by_floor: int = 0, settle: bool = False) -> None:
        """Count the iteration, move the frontier, initialise the steps joining the window.

        Args:
            new_frontier: steps ``>= new_frontier`` are final from now on.
            by_safeguard, by_floor: how many of the steps made final now became so by the safeguard
                (the plain update of the highest unconverged step) or were accepted only within the
                residual floor; the others met the tolerance (``stop_reason``).
            settle: update the steps made final now once more in the next iteration (``SlidingWindow.advance``).
        """
        lo, hi = self.window.bounds
        self.iterations += 1
        self.evaluations += hi - lo
        self.final_by["safeguard"] += by_safeguard
        self.final_by["floor"] += by_floor
        self.final_by["tolerance"] += hi - new_frontier - by_safeguard - by_floor
        self._join(self.window.advance(new_frontier, settle))

    def _join(self, steps: range) -> None:
        """Initialise steps new to the window by the ``init`` rule (class docstring), then ``_joined``."""
        if not steps:
            return
        lowest = self.window.initialized_from
        if steps.start < lowest:
            if self._denoised is None:
                self.x[steps.start:lowest] = self.x[lowest]
            else:
                self._denoised_chain(steps.start, lowest)
            self.window.initialized_from = steps.start
        self._joined(steps)

    def _denoised_chain(self, start: int, top: int) -> None:
        """``x[j]`` for ``j = top-1 .. start``: the sampler's step with the predicted sample held fixed
        (a multistep sampler's earlier outputs too: each the one predicting the same sample from its
        own input ``x[j+1+l]``, so every data prediction the step reads is that sample)."""
        s = self.schedule
        p, q = self._denoising
        held = lambda j: (self._denoised - p[j] * self.x[j + 1]) / q[j]  # noqa: E731
        num_levels = s.num_levels
        # (x[j+1+l], out_{j+l}) for l = 1..L, as far as those steps exist
        earlier = [(self.x[top + level], held(top + level - 1)) for level in range(1, num_levels + 1)
                   if top + level - 1 < s.num_steps]
        for j in range(top - 1, start - 1, -1):
            out = held(j)
            self.x[j] = s.step(j, self.x[j + 1], out, self.z[j], earlier)
            if num_levels:
                earlier = [(self.x[j + 1], out)] + earlier[:num_levels - 1]

    def _joined(self, steps: range) -> None:
        """Hook for subclasses: ``steps`` just joined the window."""


class BatchSolver:
    """Iterate a batch of per-sample strategies one batched network call at a time.

    Args:
        eps_fn: the network (``EpsFn``).
        trajectory: float64 ``(B, T+1, *latent)``, the state the strategies' views point into.
        samples: one strategy per sample, in batch order.
        max_iters: stop after this many iterations (None: until every sample is done).
        floor_probe: measures each sample's residual floor in the first iteration (probe rows added
            to its network call) and gives it to the strategies as ``floor`` (``paratAA.precision``);
            None: no floor (a float32 or float64 network).

    ``iterate()`` yields one ``IterationRecord`` per iteration; ``result()`` returns the
    ``SolveResult`` so far.
    """

    def __init__(self, eps_fn: EpsFn, trajectory: torch.Tensor, samples: Sequence[SampleStrategy],
                 max_iters: int | None = None, floor_probe: FloorProbe | None = None):
        self.eps_fn = eps_fn
        self.trajectory = trajectory
        self._samples = list(samples)
        self.max_iters = max_iters
        self.floor_probe = floor_probe
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

    def run(self, callback: Callable[[IterationRecord], None] | None = None) -> SolveResult:
        """Iterate to the end, calling ``callback`` with every record; return the result."""
        for record in self.iterate():
            if callback is not None:
                callback(record)
        return self.result()

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
            stop_reasons=[s.stop_reason() for s in self._samples],
            floors=self.floors(),
        )

    def floors(self) -> torch.Tensor | None:
        """float64 ``(B, T)``: every sample's measured residual floor, or None before (or without) a probe."""
        if any(s.floor is None for s in self._samples):
            return None
        return torch.stack([s.floor for s in self._samples])

    @torch.no_grad()
    def _iteration(self) -> IterationRecord:
        device = self.trajectory.device
        active = [k for k, sample in enumerate(self._samples) if not sample.window.done]
        windows: list[tuple[int, int] | None] = [None] * len(self._samples)
        updated = list(windows)
        inputs, steps, owners = [], [], []
        for k in active:
            x, sample_steps = self._samples[k].network_inputs()
            windows[k] = self._samples[k].window.bounds
            updated[k] = self._samples[k].window.updated_bounds
            inputs.append(x)
            steps.append(sample_steps)
            owners.append(torch.full_like(sample_steps, k))
        # First iteration of a half-precision network: probe rows ride along in the same call.
        probes = ([self.floor_probe.rows(x, s) for x, s in zip(inputs, steps)]
                  if self.floor_probe is not None and not self.records else [])
        for j, (probe_x, picked) in enumerate(probes):
            inputs.append(probe_x)
            steps.append(steps[j][picked.to(device)])
            owners.append(torch.full_like(steps[-1], active[j]))
        x = torch.cat(inputs)

        synchronize(device)
        start = time.perf_counter()
        out = self.eps_fn(x, torch.cat(steps), torch.cat(owners))
        synchronize(device)
        network_seconds = time.perf_counter() - start

        out = checked_output(out, x, iteration=len(self.records) + 1)
        chunks = out.split([len(s) for s in steps])
        for j, (k, (_, picked)) in enumerate(zip(active, probes)):
            self._samples[k].floor = self.floor_probe.floors(steps[j], chunks[j], picked, chunks[len(active) + j])
            self._samples[k].evaluations += len(picked)
        residuals: list[float | None] = [None] * len(self._samples)
        for k, chunk in zip(active, chunks[:len(active)]):
            residuals[k] = self._samples[k].receive(chunk)
        self._check_finite(active, updated, residuals)
        x0 = torch.stack([sample.estimate() for sample in self._samples])
        synchronize(device)
        return IterationRecord(
            iteration=len(self.records) + 1, windows=windows, evaluations=x.shape[0],
            max_residual=residuals,
            frontier=[sample.window.frontier for sample in self._samples], network_seconds=network_seconds,
            solver_seconds=time.perf_counter() - start - network_seconds, x0=x0, done=self.done)

    def _check_finite(self, active: Sequence[int], updated: Sequence[tuple[int, int] | None],
                      residuals: Sequence[float | None]) -> None:
        """NonFiniteError when an update overflowed: the rows it wrote (the updated steps and the joined ones), residuals."""
        iteration = len(self.records) + 1
        for k in active:
            lo, hi = updated[k]
            written = self._samples[k].x[min(lo, self._samples[k].window.bounds[0]):hi]
            check_finite_state(iteration, written, torch.tensor([residuals[k]], dtype=torch.float64))
