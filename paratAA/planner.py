"""``window_size="auto"``: the window that minimises predicted wall-clock, or the sequential sampler.

A parallel solve with window ``W`` makes about ``n(W)`` batched calls of up to ``B x W`` rows; the
sequential sampler makes ``T`` calls of ``B`` rows. Which is faster depends on the device's cost
curve (``paratAA.cost``: flat up to a knee on a GPU, about linear on a CPU), so the planner

1. measures the curve through the solve's own ``eps_fn`` (once per process and model, cached),
2. predicts each candidate window's seconds: the sum over its expected iterations of the call
   cost of that iteration's rows, plus the solver's own overhead (``predict_seconds``),
3. predicts the sequential sampler's ``T x cost(B)``,
4. picks the cheapest window, or the sequential sampler when no window is predicted to be at least
   ``1 / SEQUENTIAL_MARGIN`` times faster (a margin for the model's error: the aim is never to be
   slower than sequential). The choice of sequential is said in one line: a
   ``SequentialChoiceWarning`` (``warnings.warn``), the same from ``paratAA.solve``,
   ``paratAA.pipelines.sample`` and the scripts.

**Iterations per window** (``expected_iterations``). Fitted to the default method's out-of-the-box
solves (tolerance 1e-4; benchmarks/RESULTS.md section 15.2) on the trained digits DiT, DDIM, guidance
1 and 3: with the whole trajectory as the window and B = 2 it needs 7-10 iterations for T = 25-100
(``I(T) = 4 + 1.1 ln T``: 7.5, 8.3, 9.1), a stochastic sampler (eta = 1) about 1.8 times as many. A
batch waits for its slowest sample: ``I`` grows by the factor ``1 + 0.1 ln(B / 2)`` (B = 16: 10-12
iterations measured, 9.1-11.0 predicted). A window of ``W`` moves the frontier at most ``W`` steps per
iteration, and each position of the window needs about the same convergence latency, pipelined:
``n(W) = T/W - 1 + I(T, B) (T/W)^0.2`` (capped at T). For T = 50 and B = 2 it predicts 8.3, 10.5,
14.2, 20.0 and 39.8 iterations for W = 50, 25, 12, 6, 2 (measured 8-9, 10-11, 14-15, 21-22, 38-39),
and 13.2-15.0 for the quarter windows of T = 25-100 (measured 13-16). Rows: the frontier is taken to
move linearly from T to 0 over the ``n(W)`` iterations, each evaluating ``B x min(W, frontier)``
rows. ``benchmarks/planner.py`` checks the predictions against measured solves.

**Solver overhead** per iteration: ``SOLVER_SECONDS_PER_SAMPLE`` (the per-sample Python and
kernel-launch work) plus ``SOLVER_SECONDS_PER_ENTRY`` per latent entry of every row (the float64
update with TAA memory 2: ``benchmarks/results/solver_overhead.json``, about 1.1 ms per window step
of a 4x32x32 latent on the CPU). Multi-process: each process evaluates ``ceil(rows / P)`` rows
(``CostModel.processes``); the solver's state is every process's, so its overhead is not divided.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import torch

from paratAA.cost import CostModel, cached_cost
from paratAA.distributed import main_process_value
from paratAA.options import AUTO_WINDOW, FULL_ORDER, SolverOptions

__all__ = ["AUTO_WINDOW", "Plan", "SequentialChoiceWarning", "candidate_windows", "choose", "expected_iterations",
           "plan_window", "predict_seconds", "sequential_result", "solve_auto"]

ITERATION_ALPHA = 0.2  # n(W) = T/W - 1 + I(T, B) (T/W)^alpha (module docstring)
STOCHASTIC_FACTOR = 1.8  # eta > 0 samplers need about this many times the iterations
BATCH_GROWTH = 0.1  # I(T, B) = I(T) (1 + BATCH_GROWTH ln(B / 2)): the batch waits for its slowest sample
SOLVER_SECONDS_PER_SAMPLE = 1e-3  # per iteration and unfinished sample
SOLVER_SECONDS_PER_ENTRY = 3e-7  # per iteration, per latent entry of every evaluated row
SEQUENTIAL_SECONDS_PER_STEP = 1e-4  # the sequential sampler's own work per step (whole batch)
SEQUENTIAL_MARGIN = 0.9  # a window must be predicted below 0.9 x sequential to be chosen


class SequentialChoiceWarning(UserWarning):
    """``window_size="auto"`` chose the sequential sampler: no window was predicted to beat it."""


def full_window_iterations(num_steps: int, stochastic: bool = False, batch: int = 2) -> float:
    """Expected iterations of the default method with the whole trajectory as the window, ``I(T, B)``."""
    base = (4.0 + 1.1 * math.log(max(num_steps, 1))) * (1.0 + BATCH_GROWTH * math.log(max(batch, 2) / 2))
    return min(float(num_steps), base * (STOCHASTIC_FACTOR if stochastic else 1.0))


def expected_iterations(num_steps: int, window: int, stochastic: bool = False, batch: int = 2) -> float:
    """Expected parallel iterations of a window of ``window`` steps for a batch of ``batch`` (module docstring)."""
    window = max(1, min(window, num_steps))
    if window == 1:
        return float(num_steps)
    ratio = num_steps / window
    guess = ratio - 1.0 + full_window_iterations(num_steps, stochastic, batch) * ratio ** ITERATION_ALPHA
    return float(min(num_steps, guess))


def iteration_rows(num_steps: int, window: int, batch: int, stochastic: bool = False) -> list[int]:
    """The rows of each expected iteration: ``B x min(W, frontier)``, frontier moving linearly from T to 0."""
    count = max(1, math.ceil(expected_iterations(num_steps, window, stochastic, batch)))
    return [batch * max(1, min(window, math.ceil(num_steps * (1 - k / count)))) for k in range(count)]


def predict_seconds(cost: CostModel, num_steps: int, window: int, batch: int, latent_numel: int,
                    stochastic: bool = False) -> float:
    """Predicted wall-clock of a parallel solve with ``window`` (calls plus solver overhead)."""
    total = 0.0
    for rows in iteration_rows(num_steps, window, batch, stochastic):
        total += cost.seconds(rows) + SOLVER_SECONDS_PER_SAMPLE * batch + SOLVER_SECONDS_PER_ENTRY * rows * latent_numel
    return total


def predict_sequential(cost: CostModel, num_steps: int, batch: int) -> float:
    """Predicted wall-clock of the sequential sampler: T calls of B rows."""
    return num_steps * (cost.seconds(batch) + SEQUENTIAL_SECONDS_PER_STEP)


def candidate_windows(num_steps: int, batch: int, cost: CostModel | None = None) -> list[int]:
    """T, T/2, T/4, ... down to 2, and the window that fills the device up to its knee."""
    windows, w = set(), num_steps
    while w >= 2:
        windows.add(w)
        w = math.ceil(w / 2) if w > 2 else 1
    if cost is not None and math.isfinite(cost.knee):
        fill = int(cost.knee * cost.processes) // batch
        if 2 <= fill < num_steps:
            windows.add(fill)
    return sorted(windows, reverse=True)


@dataclass(frozen=True)
class Plan:
    """The planner's choice.

    Attributes:
        window_size: the window to solve with, or None: run the sequential sampler.
        predicted_seconds: the chosen method's predicted wall-clock.
        sequential_seconds: the sequential sampler's predicted wall-clock.
        candidates: predicted seconds of every window considered.
        cost: the measured cost model.
        measure_seconds: seconds spent measuring it in this call (0 when it came from the cache).
    """

    window_size: int | None
    predicted_seconds: float
    sequential_seconds: float
    candidates: dict[int, float] = field(default_factory=dict)
    cost: CostModel | None = None
    measure_seconds: float = 0.0

    @property
    def sequential(self) -> bool:
        return self.window_size is None

    def message(self) -> str:
        """The one line said when the sequential sampler is chosen (or the window, otherwise)."""
        if self.sequential:
            best = min(self.candidates.items(), key=lambda item: item[1]) if self.candidates else None
            than = (f"; the best window, {best[0]}, is predicted {best[1]:.3g} s" if best else "")
            return (f"window_size='auto': running the sequential sampler, predicted {self.sequential_seconds:.3g} s"
                    f"{than} ({self.cost.describe() if self.cost else 'no cost model'})")
        return (f"window_size='auto': window {self.window_size}, predicted {self.predicted_seconds:.3g} s against "
                f"{self.sequential_seconds:.3g} s sequential")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the choice, the predictions and the cost curve."""
        cost = None if self.cost is None else {
            "flat": self.cost.flat, "offset": self.cost.offset, "slope": self.cost.slope,
            "processes": self.cost.processes, "measured": [list(m) for m in self.cost.measured]}
        return {"window_size": self.window_size if self.window_size is not None else "sequential",
                "predicted_seconds": self.predicted_seconds, "predicted_sequential_seconds": self.sequential_seconds,
                "candidates": {str(w): s for w, s in self.candidates.items()}, "cost": cost,
                "measure_seconds": self.measure_seconds}


def plan_window(cost: CostModel, num_steps: int, batch: int, latent_numel: int, stochastic: bool = False,
                measure_seconds: float = 0.0) -> Plan:
    """Pick the window (or sequential) of least predicted wall-clock on the curve ``cost``."""
    sequential = predict_sequential(cost, num_steps, batch)
    candidates = {w: predict_seconds(cost, num_steps, w, batch, latent_numel, stochastic)
                  for w in candidate_windows(num_steps, batch, cost)}
    if candidates:
        window, seconds = min(candidates.items(), key=lambda item: (item[1], -item[0]))
        if seconds < SEQUENTIAL_MARGIN * sequential:
            return Plan(window, seconds, sequential, candidates, cost, measure_seconds)
    return Plan(None, sequential, sequential, candidates, cost, measure_seconds)


def choose(eps_fn: Callable[..., torch.Tensor], schedule: Any, noise: torch.Tensor, *, key: Hashable | None = None,
           processes: int = 1) -> Plan:
    """Measure (or reuse) the cost model of ``eps_fn`` and plan the window for this solve.

    Args:
        eps_fn, schedule, noise: as for ``paratAA.solve``.
        key: what identifies the model for the cache (``paratAA.cost.cached_cost``).
        processes: processes each call's rows are split across (``paratAA.distributed``).
    """
    num_steps, batch = schedule.num_steps, noise.shape[0]
    latent = noise[0, num_steps]
    cost, measured_now = cached_cost(eps_fn, latent, num_steps, batch, batch * num_steps, key=key,
                                     processes=processes)
    stochastic = bool((schedule.c != 0).any())
    plan = plan_window(cost, num_steps, batch, latent.numel(), stochastic,
                       cost.measure_seconds if measured_now else 0.0)
    return main_process_value(plan)


def announce(plan: Plan, stacklevel: int = 3) -> None:
    """Say the sequential choice in one line (``SequentialChoiceWarning``); a window choice is silent."""
    if plan.sequential:
        warnings.warn(plan.message(), SequentialChoiceWarning, stacklevel=stacklevel)


@torch.no_grad()
def sequential_result(eps_fn: Callable[..., torch.Tensor], schedule: Any, noise: torch.Tensor,
                      callback: Callable[[Any], None] | None = None) -> Any:
    """Run ``paratAA.sequential`` and report it as a ``SolveResult`` (``method="sequential"``).

    One ``IterationRecord`` per step (its network call timed; the rest of the step is the
    "solver" time); ``callback`` is called with them after the run, ``x0`` the lowest step reached.
    """
    from paratAA.batch import IterationRecord, SolveResult
    from paratAA.solver import sequential

    calls: list[tuple[float, float, int]] = []  # (start, network seconds, rows)
    device = noise.device

    def timed(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = eps_fn(x, steps, samples)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        calls.append((start, time.perf_counter() - start, int(x.shape[0])))
        return out

    start = time.perf_counter()
    trajectory = sequential(timed, schedule, noise)
    seconds = time.perf_counter() - start
    num_steps, batch = schedule.num_steps, noise.shape[0]
    ends = [c[0] for c in calls[1:]] + [start + seconds]
    records = []
    for k, ((begin, network, rows), end) in enumerate(zip(calls, ends)):
        i = num_steps - 1 - k
        records.append(IterationRecord(
            iteration=k + 1, windows=[(i, i + 1)] * batch, evaluations=rows, max_residual=[0.0] * batch,
            frontier=[i] * batch, network_seconds=network, solver_seconds=max(0.0, end - begin - network),
            x0=trajectory[:, i], done=i == 0))
    if callback is not None:
        for record in records:
            callback(record)
    for record in records:
        record.x0 = None
    return SolveResult(trajectory=trajectory, iterations=num_steps, evaluations=num_steps * batch,
                       per_sample_iterations=[num_steps] * batch, per_sample_evaluations=[num_steps] * batch,
                       converged=True, seconds=seconds, records=records, stop_reasons=["sequential"] * batch,
                       method="sequential")


def solve_auto(eps_fn: Callable[..., torch.Tensor], schedule: Any, noise: torch.Tensor,
               options: SolverOptions, *, key: Hashable | None = None, processes: int = 1,
               callback: Callable[[Any], None] | None = None, **solve_arguments: Any) -> Any:
    """``paratAA.solve`` with ``options.window_size == "auto"``: plan, then solve with the chosen window
    or run the sequential sampler; the result carries the plan, its predicted sequential time and
    the measuring time (``SolveResult.plan``).

    Args:
        eps_fn, schedule, noise, callback: as for ``paratAA.solve``.
        options: the options, ``window_size="auto"`` (other fields kept).
        key, processes: as for ``choose``.
        **solve_arguments: ``init_trajectory``, ``variation_steps`` (a warm start is solved in parallel
            with the planned window; the sequential sampler does not take one).
    """
    from paratAA.solver import solve

    plan = choose(eps_fn, schedule, noise, key=key, processes=processes)
    warm = solve_arguments.get("init_trajectory") is not None
    if plan.sequential and not warm:
        announce(plan, stacklevel=4)
        result = sequential_result(eps_fn, schedule, noise, callback)
    else:
        window = plan.window_size or schedule.num_steps
        order = options.order if options.order == FULL_ORDER else min(int(options.order), window)
        result = solve(eps_fn, schedule, noise, options.replace(window_size=window, order=order),
                       callback=callback, **solve_arguments)
    result.plan = plan
    result.sequential_seconds = plan.sequential_seconds
    result.sequential_source = "predicted"
    return result
