"""Checks shared by the parallel samplers (``paratAA.solver``, ``paratAA.paradigms``)."""

from __future__ import annotations

import torch

from paratAA.schedule import Schedule

__all__ = ["NonFiniteError", "checked_output", "is_int", "synchronize", "validate_noise"]


class NonFiniteError(RuntimeError):
    """The network returned NaN or inf; the solve stops instead of returning garbage."""


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


def is_int(v: object) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)
