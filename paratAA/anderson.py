"""Triangular Anderson Acceleration (TAA, Tang et al. 2024, section 4) for one sample's window.

Every window step ``i`` keeps its last ``memory_size`` iterates ``x_i`` and order-K residuals
``R_i`` as ``memory_size - 1`` differences of consecutive entries (columns of ``dX_i``, ``dR_i``).
Because ``x_i`` depends only on equations ``s >= i`` (the system is triangular), step ``i`` solves
the regularised least squares over itself and every noisier window step:

    gamma_i = (sum_{s>=i} dR_s^T dR_s + lambda I)^-1  sum_{s>=i} dR_s^T R_s
    x_i    <- x_i + R_i - (dX_i + dR_i) gamma_i

Storage is fixed-size: ``capacity`` slots (step ``i`` lives in slot ``i % capacity``; a window never
holds two steps with the same slot, and its slots are one or two contiguous slices) by
``memory_size - 1`` columns written round-robin, one column per iteration for every window step.
A step that has been in the window for ``n`` iterations has ``min(n - 1, memory_size - 1)`` valid
columns: the newest ones, found from the column's age. Only valid columns enter the sums and a
step's own system, so a step new to the window uses only its own recent differences and stale
columns of a slot's previous occupant never leak in.
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

    def forget(self, lo: int, hi: int) -> None:
        """Start an empty history for steps ``lo..hi-1``, which are entering the window."""
        self._write(self._has_prev, lo, hi, False)
        self._write(self._valid_columns, lo, hi, 0)

    def update(self, lo: int, hi: int, x: torch.Tensor, residual: torch.Tensor, plain_from: int,
               reanchor_a: torch.Tensor | None = None) -> torch.Tensor:
        """Record this iteration of window steps ``lo..hi-1`` and return their new iterates.

        Args:
            lo, hi: the window.
            x: ``(n, *latent)`` current iterates of the window steps, ``n = hi - lo``.
            residual: ``(n, *latent)`` their order-K residuals ``R``.
            plain_from: window-local index of the highest unconverged step (the safeguard): steps
                at or above it take the plain update ``x + R``. ``n`` or more: accelerate every step.
            reanchor_a: ``(n,)`` per-step factors to re-anchor the accelerated steps on the plain
                update of step ``i* = plain_from`` (an extension, off when None): the coefficients
                ``a`` for the paper's (affine) order-K map, ones for the increment form. With full
                order, ``G_i = x_i + R_i`` splits into the steps ``i..i*-1`` plus ``C(i) G_{i*}``,
                ``C(i)`` the product of the factors of steps ``i..i*-1`` (``A(i, i*-1)`` or 1); step
                ``i*`` takes no correction, so ``C(i) (dX_{i*} + dR_{i*}) gamma_i`` is removed from
                step ``i``'s correction. Otherwise the steps just below ``i*`` are corrected for a
                move of ``x[i*]`` that does not happen, and the next iteration is spent
                re-converging them (a one-step lag of the frontier). Only the iterates change,
                never the solution.

        Returns:
            ``(n, *latent)`` updated iterates.
        """
        column = self._writes % self.columns
        self._writes += 1
        has_prev = self._read(self._has_prev, lo, hi).clone()  # a view; overwritten below
        self._write_column(self._dx, lo, hi, column, x - self._read(self._prev_x, lo, hi))
        self._write_column(self._dr, lo, hi, column, residual - self._read(self._prev_r, lo, hi))
        self._write(self._prev_x, lo, hi, x)
        self._write(self._prev_r, lo, hi, residual)
        self._write(self._has_prev, lo, hi, True)
        counts = torch.where(has_prev, (self._read(self._valid_columns, lo, hi) + 1).clamp(max=self.columns), 0)
        self._write(self._valid_columns, lo, hi, counts)

        age = (column - torch.arange(self.columns, device=x.device)) % self.columns  # 0 = written now
        valid = (age[None, :] < counts[:, None]).to(x.dtype)  # (n, columns)
        pair_valid = valid[:, :, None] * valid[:, None, :]
        dx = self._read(self._dx, lo, hi).flatten(2)  # (n, columns, latent size)
        dr = self._read(self._dr, lo, hi).flatten(2)
        gram = _suffix_sum(torch.bmm(dr, dr.transpose(1, 2)) * pair_valid)  # sums over s >= i
        rhs = _suffix_sum(torch.bmm(dr, residual.flatten(1).unsqueeze(2)).squeeze(2) * valid)
        # Step i's own system over its valid columns; an invalid column j gets lambda * gamma_j = 0.
        gram = gram * pair_valid + self.regularization * torch.eye(self.columns, dtype=x.dtype, device=x.device)
        gamma = torch.linalg.solve(gram, (rhs * valid).unsqueeze(-1)).transpose(1, 2)  # (n, 1, columns)
        gamma[plain_from:] = 0
        correction = torch.bmm(gamma, dx).add_(torch.bmm(gamma, dr))  # (n, 1, latent size)
        if reanchor_a is not None and 0 < plain_from < x.shape[0]:
            top = plain_from
            carried = reanchor_a[:top].flip(0).cumprod(0).flip(0)  # C(i) for i < i*
            inherited = torch.bmm(gamma[:top], (dx[top] + dr[top]).expand(top, -1, -1))
            correction[:top].sub_(inherited * carried.view(-1, 1, 1))
        return (x + residual).sub_(correction.view_as(x))

    # Steps lo..hi-1 live in slots lo % capacity, ...: one slice, or two where the range wraps.
    def _slices(self, lo: int, hi: int) -> list[tuple[slice, slice]]:
        """(buffer slice, window slice) pairs covering steps lo..hi-1."""
        start = lo % self.capacity
        first = min(hi - lo, self.capacity - start)
        pairs = [(slice(start, start + first), slice(0, first))]
        if first < hi - lo:
            pairs.append((slice(0, hi - lo - first), slice(first, hi - lo)))
        return pairs

    def _read(self, buffer: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        parts = [buffer[where] for where, _ in self._slices(lo, hi)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)  # a view unless the range wraps

    def _write(self, buffer: torch.Tensor, lo: int, hi: int, value) -> None:
        for where, part in self._slices(lo, hi):
            buffer[where] = value[part] if isinstance(value, torch.Tensor) else value

    def _write_column(self, buffer: torch.Tensor, lo: int, hi: int, column: int, value: torch.Tensor) -> None:
        for where, part in self._slices(lo, hi):
            buffer[where, column] = value[part]


def _suffix_sum(v: torch.Tensor) -> torch.Tensor:
    """``out[i] = v[i] + v[i+1] + ... + v[n-1]`` along the first dimension."""
    return v.flip(0).cumsum(0).flip(0)
