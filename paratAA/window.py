"""The sliding window of one sample's parallel solve.

Invariants (index convention of ``paratAA.schedule``):

- ``frontier`` (h): every ``x[j]`` with ``j >= h`` is final. It starts at ``T`` (only the noise
  ``x[T]`` is known) or at ``variation_steps`` for a warm start, and strictly decreases every
  iteration; the sample is done when it reaches 0. Hence at most ``T`` iterations.
- The window is the ``size`` noisiest non-final steps, ``[max(h - size, 0), h)``: one network call
  per step per iteration.
- ``initialized_from``: every ``x[j]`` with ``j >= initialized_from`` holds an iterate. It never
  exceeds the window's bottom once the window has been entered.
- ``settling_top``: the one exception to "final": the steps made final by the last iteration,
  ``[frontier, settling_top)``, when the solver asked for it (``paratAA.solver``, step 4: some were
  accepted only within a half-precision network's residual floor, or that iteration settled a
  block itself), are evaluated and updated once more, with the window, in this iteration
  (``updated_bounds``); they no longer decide the frontier or the stop. None when there is no block.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SlidingWindow"]


@dataclass
class SlidingWindow:
    """Frontier and window of one sample (see the module docstring)."""

    size: int
    frontier: int
    initialized_from: int
    settling_top: int | None = None  # the settling block is [frontier, settling_top); None: no block

    @property
    def done(self) -> bool:
        return self.frontier == 0

    @property
    def bounds(self) -> tuple[int, int]:
        """``(lo, hi)``: the window is steps ``lo..hi-1``."""
        return max(self.frontier - self.size, 0), self.frontier

    @property
    def updated_bounds(self) -> tuple[int, int]:
        """``(lo, top)``: the steps evaluated and updated this iteration, the window and the settling
        block above it. The block was part of the last window, so ``top - lo <= 2 * size``."""
        lo, hi = self.bounds
        return lo, hi if self.settling_top is None else self.settling_top

    def advance(self, new_frontier: int, settle: bool = False) -> range:
        """Move the frontier down; return the steps that join the window (new ones at its bottom).

        Args:
            new_frontier: the highest step that is not yet final, plus one: the highest
                unconverged step (final after this iteration's plain update) or the window bottom.
            settle: the steps made final now, ``[new_frontier, hi)``, are updated once more in the
                next iteration (the settling block, module docstring).
        """
        old_lo, hi = self.bounds
        if not old_lo <= new_frontier < hi:
            raise AssertionError(f"frontier must move into [{old_lo}, {hi}), got {new_frontier}")
        self.frontier = new_frontier
        self.settling_top = hi if settle and new_frontier > 0 else None  # a finished sample has nothing to settle
        return range(self.bounds[0], old_lo)
