"""Checks shared by the parallel samplers (``paratAA.solver``, ``paratAA.baselines.paradigms``)."""

from __future__ import annotations

from typing import Any

import torch

from paratAA.arguments import is_bool, is_int, is_real, require_bool, require_int, require_real
from paratAA.errors import NonFiniteError
from paratAA.schedule import Schedule

__all__ = ["NonFiniteError", "check_callable", "check_finite_state", "checked_output", "is_bool", "is_int",
           "is_real", "require_bool", "require_int", "require_real", "synchronize",
           "validate_noise"]


def checked_output(out: torch.Tensor, x: torch.Tensor, iteration: int) -> torch.Tensor:
    """The network output as float64 on ``x``'s device; ValueError for a wrong shape, NonFiniteError for NaN/inf."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"eps_fn returned {got}, expected a tensor of shape {tuple(x.shape)}")
    out = out.to(device=x.device, dtype=torch.float64)
    if not bool(torch.isfinite(out).all()):
        raise NonFiniteError(f"the network returned NaN or inf at iteration {iteration}; stopping the solve")
    return out


def synchronize(device: torch.device) -> None:
    """Wait for the device (honest wall-clock timings on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def validate_noise(schedule: Schedule, noise: torch.Tensor) -> None:
    """ValueError unless ``noise`` is a finite ``(B, T+1, *latent)`` float tensor for ``schedule``."""
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a paratAA.Schedule, got {type(schedule).__name__}")
    expected = schedule.num_steps + 1
    if not isinstance(noise, torch.Tensor) or noise.dim() < 3 or noise.shape[1] != expected:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise ValueError(f"noise must have shape (B, T+1={expected}, *latent), got {got}")
    if not noise.is_floating_point() or not bool(torch.isfinite(noise).all()):
        raise ValueError("noise must be a finite floating-point tensor")


def check_finite_state(iteration: int, *values: torch.Tensor) -> None:
    """NonFiniteError when the solver's own state (iterates, residuals) overflowed to NaN or inf.

    Finite network outputs can still overflow there (e.g. a huge guidance scale); the solve stops
    instead of carrying NaN into the samples and the metrics.
    """
    if not all(bool(torch.isfinite(v).all()) for v in values):
        raise NonFiniteError(f"the solver's state overflowed to NaN or inf at iteration {iteration} although the "
                             "network's outputs were finite (outputs too large, e.g. a huge guidance scale); "
                             "stopping the solve")


def check_callable(name: str, fn: Any) -> None:
    """ValueError unless ``fn`` can be called (checked up front, not at the first iteration)."""
    if not callable(fn):
        raise ValueError(f"{name} must be callable, got {type(fn).__name__}")
