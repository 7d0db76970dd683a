"""ParaTAA: parallel sampling of diffusion models with Triangular Anderson Acceleration.

Tang, Tang, Luo, Wang, Chang, "Accelerating Parallel Sampling of Diffusion Models", ICML 2024.
The sampler's whole trajectory is solved as a triangular system of nonlinear equations by
fixed-point iteration, one batched network call per iteration; converged, the result is the
sequential sampler's. Index convention: ``paratAA.schedule``; the method: ``paratAA.solver``;
the batch loop every sampler shares: ``paratAA.batch``.

The names below are imported on first use, so that ``import paratAA.cli`` (the entry scripts'
argument parsing, ``--help``) does not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "EpsFn": "paratAA.batch", "IterationRecord": "paratAA.batch", "SolveResult": "paratAA.batch",
    "PAPER": "paratAA.options", "RECOMMENDED": "paratAA.options", "SolverOptions": "paratAA.options",
    "OptionError": "paratAA.options", "Solver": "paratAA.solver",
    "sequential": "paratAA.solver", "solve": "paratAA.solver",
    "NonFiniteError": "paratAA.errors", "Schedule": "paratAA.schedule", "ScheduleError": "paratAA.schedule",
    "sample_noise": "paratAA.noise",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
    elif find_spec(f"{__name__}.{name}") is not None:  # a submodule: ``paratAA.solver`` works without importing it
        value = import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'paratAA' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
