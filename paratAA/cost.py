"""What one network call costs, in seconds, as a function of its rows: measured once, then predicted.

The parallel solve trades sequential calls of ``B`` rows for fewer calls of up to ``B x window``
rows. Whether that pays depends on the device: a GPU runs a call in about the same time up to a
*knee* (its parallel width), then linearly more; a CPU (or a GPU already saturated by ``B`` rows)
is roughly linear in the rows with a small per-call offset. ``paratAA.planner`` picks the window
from this curve.

``measure_cost`` times the network through the very ``eps_fn`` the solve will call (after a
warm-up call), at a handful of row counts (1, ``B`` and a geometric ladder up to the largest window
x ``B``, climbed in order and left as soon as three timings lie on one rising line: past the knee the
cost is linear, so larger calls are predicted rather than paid for), and ``fit_cost`` fits
``cost(rows) = max(flat, offset + slope * rows)`` to the timings (relative least squares, so a 5 ms
and a 500 ms call weigh alike). Under a multi-process launch each call's rows are split across the
processes (``paratAA.distributed.shard_eps_fn``): the curve is fitted and predicted in per-process
rows (``CostModel.processes``).

The measured model is cached for the process's lifetime (``cached_cost``), keyed by the model's id
(or the ``eps_fn``'s identity), its device, dtype, latent shape and process count; the seconds
spent measuring are kept in ``CostModel.measure_seconds`` so that callers can report them.

Timing uses ``time.perf_counter`` unless a timer is given: an argument, an ``eps_fn.cost_timer``
attribute, or ``use_timer`` (a context manager) -- the benchmarks' emulated accelerators and the
tests use that to run on a virtual clock.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import time
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterator, Sequence

import torch

from paratAA.distributed import main_process_value
from paratAA.validation import synchronize

__all__ = ["CostModel", "cached_cost", "clear_cache", "fit_cost", "measure_cost", "row_ladder", "use_timer"]

Timer = Callable[[], float]
SLOW_CALL_SECONDS = 0.25  # measure_cost times calls at least this slow only once
LINE_TOLERANCE = 0.1  # three timings within 10% of one line ...
RISE = 1.2  # ... whose last is 20% above its first: the linear part of the curve is reached
_TIMER: contextvars.ContextVar[Timer | None] = contextvars.ContextVar("paratAA_cost_timer", default=None)


@contextlib.contextmanager
def use_timer(timer: Timer) -> Iterator[None]:
    """Within the block, cost measurements read ``timer()`` instead of ``time.perf_counter()``
    (a virtual clock: emulated devices, tests)."""
    token = _TIMER.set(timer)
    try:
        yield
    finally:
        _TIMER.reset(token)


def _timer_for(eps_fn: Any, timer: Timer | None) -> Timer:
    return timer or getattr(eps_fn, "cost_timer", None) or _TIMER.get() or time.perf_counter


@dataclass(frozen=True)
class CostModel:
    """Seconds of one network call of ``rows`` rows: ``max(flat, offset + slope * per-process rows)``.

    Attributes:
        flat: the call's floor (a GPU's time up to its knee; ~ the offset on a CPU).
        offset, slope: the linear part above the knee (seconds, seconds per per-process row).
        processes: the processes each call's rows are split across (1: a single process).
        measured: ``(rows, seconds)`` of the timed calls (rows as passed to ``eps_fn``).
        measure_seconds: wall-clock spent measuring (warm-up included).
        linear_reached: the measurement reached the linear part of the curve (``past_the_knee``),
            so the model stands for any larger call too, not only up to its largest timed one.
    """

    flat: float
    offset: float
    slope: float
    processes: int = 1
    measured: tuple[tuple[int, float], ...] = ()
    measure_seconds: float = 0.0
    linear_reached: bool = False

    def per_process_rows(self, rows: int) -> int:
        """The rows the busiest process evaluates in a call of ``rows`` rows."""
        return math.ceil(rows / self.processes)

    def seconds(self, rows: int) -> float:
        """Predicted seconds of one call of ``rows`` rows (all processes together)."""
        local = self.per_process_rows(rows)
        return max(self.flat, self.offset + self.slope * local)

    @property
    def knee(self) -> float:
        """Per-process rows up to which a call costs ``flat`` (0 for a purely linear curve)."""
        if self.slope <= 0:
            return math.inf
        return max(0.0, (self.flat - self.offset) / self.slope)

    def describe(self) -> str:
        """One line: the curve's numbers in milliseconds."""
        knee = "no knee" if self.knee < 1 else ("flat" if math.isinf(self.knee) else f"knee {self.knee:.0f} rows")
        per = f" per process ({self.processes} processes)" if self.processes > 1 else ""
        return (f"network call ~ max({1e3 * self.flat:.2f} ms, {1e3 * self.offset:.2f} ms + "
                f"{1e3 * self.slope:.3f} ms/row){per}, {knee}")


def _weighted_line(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """``offset, slope >= 0`` minimising the relative squared error of ``offset + slope x`` to ``y``."""
    if len(x) == 1:
        return float(y[0]), 0.0
    xs, ys = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    w = 1.0 / ys
    design = torch.stack([w, w * xs], dim=1)
    solution = torch.linalg.lstsq(design, torch.ones_like(ys)).solution
    offset, slope = float(solution[0]), float(solution[1])
    # Noise made it decrease, or rise by rounding only over the range: a flat line at the weighted mean.
    if slope < 0 or slope * max(x) <= 1e-9 * abs(offset):
        return float(len(ys) / w.sum()), 0.0
    return offset, slope


def fit_cost(rows: Sequence[int], seconds: Sequence[float], processes: int = 1,
             measure_seconds: float = 0.0) -> CostModel:
    """Fit ``max(flat, offset + slope * r)`` (``r`` = per-process rows) to measured call times.

    Every split of the sorted row counts into a flat part (its mean time) and a linear part
    (weighted least squares) is tried, and the one with the smallest relative squared error over
    all points wins; a purely linear fit (no flat part) is one of the candidates.

    Args:
        rows: rows of each timed call (as passed to ``eps_fn``; repeats allowed).
        seconds: their measured seconds (> 0).
        processes: processes the rows were split across.
        measure_seconds: kept in the model (what measuring cost).

    Returns:
        The ``CostModel``.

    Raises:
        ValueError: no timings, a length mismatch, or a non-positive time.
    """
    if not rows or len(rows) != len(seconds):
        raise ValueError(f"fit_cost needs as many row counts as timings, got {len(rows)} and {len(seconds)}")
    if any(not (s > 0) or not math.isfinite(s) for s in seconds):
        raise ValueError("fit_cost: every timing must be a finite number > 0")
    local = [math.ceil(r / processes) for r in rows]
    # Per distinct row count, the fastest timing: other work on the machine only ever adds time.
    by_rows: dict[int, list[float]] = {}
    for r, s in zip(local, seconds):
        by_rows.setdefault(r, []).append(float(s))
    xs = sorted(by_rows)
    ys = [min(by_rows[r]) for r in xs]

    def error(flat: float, offset: float, slope: float) -> float:
        return sum(((max(flat, offset + slope * x) - y) / y) ** 2 for x, y in zip(xs, ys))

    offset, slope = _weighted_line(xs, ys)
    best = (error(offset, offset, slope), offset, offset, slope)  # linear: flat = the offset
    for split in range(1, len(xs)):
        flat = sum(ys[:split]) / split
        if split < len(xs) - 1:
            offset, slope = _weighted_line(xs[split:], ys[split:])
        else:  # one point above the flat part: the line through the last flat point and it
            slope = max(0.0, (ys[-1] - flat) / (xs[-1] - xs[split - 1]))
            offset = ys[-1] - slope * xs[-1]
        candidate = (error(flat, offset, slope), flat, offset, slope)
        best = min(best, candidate, key=lambda c: c[0])
    _, flat, offset, slope = best
    return CostModel(flat=flat, offset=offset, slope=slope, processes=processes,
                     measured=tuple(zip((int(r) for r in rows), (float(s) for s in seconds))),
                     measure_seconds=measure_seconds)


def row_ladder(batch: int, max_rows: int, points: int = 6) -> list[int]:
    """Row counts to time: 1, ``batch``, and a geometric ladder from ``batch`` up to ``max_rows``."""
    max_rows = max(1, max_rows)
    ladder = {1, min(batch, max_rows), max_rows}
    if max_rows > batch >= 1 and points > 3:
        ratio = (max_rows / batch) ** (1.0 / (points - 2))
        ladder.update(min(max_rows, round(batch * ratio ** k)) for k in range(1, points - 2))
    return sorted(ladder)


@torch.no_grad()
def measure_cost(eps_fn: Callable[..., torch.Tensor], latent: torch.Tensor, num_steps: int, batch: int,
                 max_rows: int, *, processes: int = 1, repeats: int = 2, points: int = 6,
                 timer: Timer | None = None) -> CostModel:
    """Time ``eps_fn`` at a few row counts and fit the ``CostModel``.

    The inputs are copies of ``latent`` at steps spread over the trajectory, rows assigned to the
    samples in turn (so per-sample conditioning is exercised as in a solve). One warm-up call at the
    largest row count comes first (allocations, kernels' first launch); each count is then timed
    ``repeats`` times. The ladder is climbed in order and left once three consecutive timings lie on
    one rising line (``past_the_knee``): larger calls would only confirm the line, at the most cost,
    and the timings, consistent with each other, are not repeated.

    Args:
        eps_fn: the network as the solve calls it (``paratAA.EpsFn``).
        latent: ``(*latent)``, one sample's input (e.g. its noise ``x[T]``); its device is the network's.
        num_steps: T (the step indices used are ``< T``).
        batch: B, the samples (sample indices used are ``< B``).
        max_rows: the largest call to time (the largest window x B).
        processes: processes each call's rows are split across (the curve's unit).
        repeats: timed calls per row count.
        points: row counts on the ladder (``row_ladder``).
        timer: the clock (default: ``eps_fn.cost_timer``, ``use_timer``'s, or ``time.perf_counter``).
    """
    clock = _timer_for(eps_fn, timer)
    rows_list = row_ladder(batch, max_rows, points)
    base = latent.unsqueeze(0)
    device = latent.device
    start = clock()

    def call(rows: int) -> float:
        x = base.expand(rows, *base.shape[1:]).to(torch.float64).clone()
        steps = torch.linspace(0, num_steps - 1, rows, device=device).round().to(torch.int64)
        samples = torch.arange(rows, device=device) % batch
        synchronize(device)
        begin = clock()
        eps_fn(x, steps, samples)
        synchronize(device)
        return max(clock() - begin, 1e-9)

    call(rows_list[min(1, len(rows_list) - 1)])  # warm-up, at B rows (the sequential sampler's call)
    # Under torch.distributed a sharded eps_fn is a collective call: every process must make the same calls.
    collective = torch.distributed.is_available() and torch.distributed.is_initialized()
    rows, seconds = [], []
    linear_reached = False
    for r in rows_list:
        rows.append(r)
        seconds.append(call(r))
        linear_reached = main_process_value(past_the_knee(list(zip(rows, seconds))))
        if linear_reached:
            break
    # Three timings on one line already agree with each other: repeating them would only cost time.
    repeats_left = 0 if linear_reached else repeats - 1
    timed = list(rows)
    for _ in range(repeats_left):
        for r in timed:
            # a call slower than SLOW_CALL_SECONDS is timed once: its relative noise is small, its cost is not
            if not collective and any(m >= SLOW_CALL_SECONDS for n, m in zip(rows, seconds) if n == r):
                continue
            rows.append(r)
            seconds.append(call(r))
    model = fit_cost(rows, seconds, processes=processes, measure_seconds=clock() - start)
    return dataclasses.replace(model, linear_reached=linear_reached)


def past_the_knee(timings: Sequence[tuple[int, float]]) -> bool:
    """Whether the last three ``(rows, seconds)`` (rows ascending) lie on one rising line.

    The line through the first two predicts the third within ``LINE_TOLERANCE`` and the third is at
    least ``RISE`` times the first: in the flat part the time does not rise, and across the knee the
    line through a flat point and a rising one misses the next.
    """
    if len(timings) < 3:
        return False
    (r0, t0), (r1, t1), (r2, t2) = timings[-3:]
    if t2 < RISE * t0 or r1 <= r0:
        return False
    predicted = t1 + (t1 - t0) / (r1 - r0) * (r2 - r1)
    return abs(predicted - t2) <= LINE_TOLERANCE * t2


_CACHE: dict[Hashable, tuple[Any, CostModel]] = {}


def clear_cache() -> None:
    """Forget every cached cost model."""
    _CACHE.clear()


def cached_cost(eps_fn: Callable[..., torch.Tensor], latent: torch.Tensor, num_steps: int, batch: int,
                max_rows: int, *, key: Hashable | None = None, processes: int = 1,
                timer: Timer | None = None) -> tuple[CostModel, bool]:
    """The cost model of ``eps_fn`` on this device, measured on first use in the process, then cached.

    Args:
        eps_fn, latent, num_steps, batch, max_rows, processes, timer: as for ``measure_cost``.
        key: what identifies the model (e.g. the denoiser's id and the guidance copies); default the
            ``eps_fn``'s identity. The device, dtype, latent shape and process count are added.

    Returns:
        ``(model, measured_now)``: ``measured_now`` is False when it came from the cache (no time spent).
        A cached model measured up to fewer rows than ``max_rows``, short of its linear part, is
        measured again.
    """
    shape = tuple(latent.shape)
    identity = key if key is not None else ("eps_fn", id(eps_fn))
    full_key = (identity, str(latent.device), str(latent.dtype), shape, processes)
    hit = _CACHE.get(full_key)
    if hit is not None:
        owner, model = hit
        alive = owner is None or (owner() if isinstance(owner, weakref.ref) else owner) is eps_fn
        if alive and (model.linear_reached or max(r for r, _ in model.measured) >= max_rows):
            return model, False
    model = measure_cost(eps_fn, latent, num_steps, batch, max_rows, processes=processes, timer=timer)
    if key is not None:
        owner = None
    else:  # an id can be reused once the function is gone: remember which function it was
        try:
            owner = weakref.ref(eps_fn)
        except TypeError:
            owner = eps_fn
    _CACHE[full_key] = (owner, model)
    return model, True
