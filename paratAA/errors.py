"""The library's own exception types, importable without torch (the entry scripts' fast paths need them)."""

from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(RuntimeError):
    """NaN or inf in the network's output or in the solver's state; the solve stops instead of returning garbage."""
