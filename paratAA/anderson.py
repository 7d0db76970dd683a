"""Triangular Anderson Acceleration (TAA, Tang et al. 2024, section 4) for one sample's window.

Every window step ``i`` keeps its last ``memory_size`` iterates ``x_i`` and order-K residuals
``R_i`` as ``memory_size - 1`` differences of consecutive entries (columns of ``dX_i``, ``dR_i``).
Because ``x_i`` depends only on equations ``s >= i`` (the system is triangular), step ``i`` solves
the regularised least squares over itself and every noisier window step:

    gamma_i = (sum_{s>=i} dR_s^T dR_s + lambda I)^-1  sum_{s>=i} dR_s^T R_s
    x_i    <- x_i + R_i - (dX_i + dR_i) gamma_i

Storage is fixed-size: ``capacity`` slots (step ``i`` lives in slot ``i % capacity``; a window never
holds two steps with the same slot) by ``memory_size - 1`` columns written round-robin, one column
per iteration for every window step. A step that has been in the window for ``n`` iterations has
``min(n - 1, memory_size - 1)`` valid columns: the newest ones, found from the column's age. Only
valid columns enter the sums and a step's own system, so a step new to the window uses only its own
recent differences and stale columns of a slot's previous occupant never leak in.
"""

from __future__ import annotations

import torch

__all__ = ["TriangularAnderson"]


class TriangularAnderson:
    """Fixed-size TAA history and update for one sample (see the module docstring).

    Args:
        capacity: number of slots, at least the window size.
        latent_shape: shape of one latent.
        memory_size: iterates kept per step, ``>= 2`` (1 means no acceleration: don't build one).
        regularization: lambda, absolute, on inner products over all latent entries.
        device, dtype: of the history (float64 by design).
    """

    def __init__(self, capacity: int, latent_shape: tuple[int, ...], memory_size: int,
                 regularization: float, device: torch.device, dtype: torch.dtype = torch.float64):
        if memory_size < 2:
            raise ValueError("memory_size must be >= 2 for Anderson acceleration")
        self.capacity = capacity
        self.columns = memory_size - 1
        self.regularization = regularization
        self._dx = torch.zeros((capacity, self.columns, *latent_shape), device=device, dtype=dtype)
        self._dr = torch.zeros_like(self._dx)
        self._prev_x = torch.zeros((capacity, *latent_shape), device=device, dtype=dtype)
        self._prev_r = torch.zeros_like(self._prev_x)
        self._has_prev = torch.zeros(capacity, dtype=torch.bool, device=device)
        self._valid_columns = torch.zeros(capacity, dtype=torch.long, device=device)
        self._writes = 0  # iterations recorded so far; the next column written is _writes % columns

    def slots(self, lo: int, hi: int) -> torch.Tensor:
        """Slots of window steps ``lo..hi-1``, in step order."""
        return torch.arange(lo, hi, device=self._dx.device) % self.capacity

    def forget(self, slots: torch.Tensor) -> None:
        """Start an empty history for steps entering the window in ``slots``."""
        self._has_prev[slots] = False
        self._valid_columns[slots] = 0

    def update(self, slots: torch.Tensor, x: torch.Tensor, residual: torch.Tensor, plain_from: int) -> torch.Tensor:
        """Record this iteration and return the new iterates of the window.

        Args:
            slots: ``(n,)`` slots of the window steps, in step order (``slots(lo, hi)``).
            x: ``(n, *latent)`` current iterates of the window steps.
            residual: ``(n, *latent)`` their order-K residuals ``R``.
            plain_from: window-local index of the highest unconverged step (the safeguard): steps
                at or above it take the plain update ``x + R``. ``n`` or more: accelerate every step.

        Returns:
            ``(n, *latent)`` updated iterates.
        """
        column = self._writes % self.columns
        self._writes += 1
        has_prev = self._has_prev[slots]
        self._dx[slots, column] = x - self._prev_x[slots]
        self._dr[slots, column] = residual - self._prev_r[slots]
        self._prev_x[slots] = x
        self._prev_r[slots] = residual
        self._has_prev[slots] = True
        counts = torch.where(has_prev, (self._valid_columns[slots] + 1).clamp(max=self.columns), 0)
        self._valid_columns[slots] = counts

        age = (column - torch.arange(self.columns, device=x.device)) % self.columns  # 0 = written now
        valid = (age[None, :] < counts[:, None]).to(x.dtype)  # (n, columns)
        dx, dr = self._dx[slots], self._dr[slots]  # (n, columns, *latent)
        flat_dr, flat_r = dr.flatten(2), residual.flatten(1)
        gram = torch.einsum("ncl,ndl->ncd", flat_dr, flat_dr) * valid[:, :, None] * valid[:, None, :]
        rhs = torch.einsum("ncl,nl->nc", flat_dr, flat_r) * valid
        gram, rhs = _suffix_sum(gram), _suffix_sum(rhs)  # sums over s >= i
        # Step i's own system over its valid columns; an invalid column j gets lambda * gamma_j = 0.
        gram = gram * valid[:, :, None] * valid[:, None, :]
        gram = gram + self.regularization * torch.eye(self.columns, dtype=x.dtype, device=x.device)
        gamma = torch.linalg.solve(gram, (rhs * valid).unsqueeze(-1)).squeeze(-1)
        gamma[plain_from:] = 0
        correction = torch.einsum("ncl,nc->nl", (dx + dr).flatten(2), gamma).view_as(x)
        return x + residual - correction


def _suffix_sum(v: torch.Tensor) -> torch.Tensor:
    """``out[i] = v[i] + v[i+1] + ... + v[n-1]`` along the first dimension."""
    return v.flip(0).cumsum(0).flip(0)
