"""The sliding window of one sample's parallel solve.

Invariants (index convention of ``paratAA.schedule``):

- ``frontier`` (h): every ``x[j]`` with ``j >= h`` is final. It starts at ``T`` (only the noise
  ``x[T]`` is known) or at ``variation_steps`` for a warm start, and strictly decreases every
  iteration; the sample is done when it reaches 0. Hence at most ``T`` iterations.
- The window is the ``size`` noisiest non-final steps, ``[max(h - size, 0), h)``: one network call
  per step per iteration.
- ``initialized_from``: every ``x[j]`` with ``j >= initialized_from`` holds an iterate. It never
  exceeds the window's bottom once the window has been entered.
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

    @property
    def done(self) -> bool:
        return self.frontier == 0

    @property
    def bounds(self) -> tuple[int, int]:
        """``(lo, hi)``: the window is steps ``lo..hi-1``."""
        return max(self.frontier - self.size, 0), self.frontier

    def advance(self, new_frontier: int) -> range:
        """Move the frontier down; return the steps that join the window (new ones at its bottom).

        Args:
            new_frontier: the highest step that is not yet final, plus one: the highest
                unconverged step (final after this iteration's plain update) or the window bottom.
        """
        old_lo, hi = self.bounds
        if not old_lo <= new_frontier < hi:
            raise AssertionError(f"frontier must move into [{old_lo}, {hi}), got {new_frontier}")
        self.frontier = new_frontier
        return range(self.bounds[0], old_lo)
