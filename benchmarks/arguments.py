"""The benchmark scripts' comma-separated flags (``--windows 10,25``, ``--methods default,ParaDiGMS``): one parser."""

from __future__ import annotations

import argparse
from typing import Callable, Sequence, TypeVar

__all__ = ["comma_list"]

T = TypeVar("T")


def comma_list(cast: Callable[[str], T] = str, *, choices: Sequence[str] | None = None,
               minimum: float | None = None) -> Callable[[str], list[T]]:
    """An argparse ``type`` reading ``"a,b,c"`` as ``[cast("a"), cast("b"), cast("c")]``.

    Blank items are dropped (``"a,,b "`` is ``a, b``). An empty list, an item ``cast`` rejects (its
    ``ValueError``), an item outside ``choices`` or a number below ``minimum`` raises
    ``argparse.ArgumentTypeError``, which argparse prints as a usage error naming the flag.
    """

    def parse(text: str) -> list[T]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        if choices is not None:
            unknown = [item for item in items if item not in choices]
            if unknown:
                raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        try:
            values = [cast(item) for item in items]
        except ValueError:
            kind = getattr(cast, "__name__", "value")
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind} values, got {text!r}") from None
        if minimum is not None and any(value < minimum for value in values):
            raise argparse.ArgumentTypeError(f"every value must be >= {minimum:g}, got {text!r}")
        return values

    parse.__name__ = "comma-separated list"  # argparse's fallback message names the type
    return parse
