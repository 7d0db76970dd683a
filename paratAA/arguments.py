"""Checks of scalar arguments, shared by the options (``paratAA.options``) and the library (``paratAA.validation``).

Importable without torch or numpy (the entry scripts check their flags with it before anything heavy
loads). Numpy scalars pass as their Python kinds: a numpy bool is a bool (recognised by its type's
name, ``bool`` or ``bool_`` by numpy version, so that numpy need not be imported), a numpy integer
an integer, a numpy float a real number.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["is_bool", "is_int", "is_real", "require_bool", "require_int", "require_real"]


def is_bool(v: object) -> bool:
    """A Python or numpy bool."""
    return isinstance(v, bool) or type(v).__name__ in ("bool", "bool_")


def is_int(v: object) -> bool:
    """An integer (Python or numpy, any ``numbers.Integral``) that is not a bool."""
    return isinstance(v, numbers.Integral) and not is_bool(v)


def is_real(v: object) -> bool:
    """A real number (Python or numpy int or float, any ``numbers.Real``) that is not a bool."""
    return isinstance(v, numbers.Real) and not is_bool(v)


def require_int(name: str, value: object, low: int = 1, high: int | None = None) -> None:
    """ValueError naming ``name`` unless ``value`` is an integer (Python or numpy, not a bool) in ``[low, high]``."""
    if not is_int(value) or value < low or (high is not None and value > high):
        where = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {where}, got {value!r}")


def require_real(name: str, value: object, low: float = 0.0, *, strict: bool = False) -> None:
    """ValueError naming ``name`` unless ``value`` is a finite real number ``>= low`` (``> low`` if ``strict``)."""
    if not is_real(value) or not math.isfinite(value) or value < low or (strict and value == low):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {low:g}, got {value!r}")


def require_bool(name: str, value: object) -> None:
    """ValueError naming ``name`` unless ``value`` is a bool (a string such as ``"no"`` is not)."""
    if not is_bool(value):
        raise ValueError(f"{name} must be True or False, got {value!r}")
