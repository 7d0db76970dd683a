"""The solver's memory, estimated before anything is allocated, and the check that it can fit.

A parallel solve holds, in float64 (8 bytes per latent entry), per sample:

- the noise and the trajectory: ``2 (T+1)`` latents (the noise ``(B, T+1, *latent)`` is the
  caller's, the trajectory the solver's; a warm start keeps one more trajectory, and so does a
  multistep sampler's store of every step's network output, ``T`` latents, whatever its number
  of levels);
- the Triangular Anderson history, with ``memory_size = m >= 2``: per window step the ``m - 1``
  differences of iterates and of residuals plus the previous iterate and residual, ``2 m`` latents
  (none with ``m = 1``);
- the window's temporaries of one iteration: the network's input and output, the step offsets,
  residuals and the update, about ``WINDOW_TEMPORARIES`` latents per window step.

``solve`` refuses a setting whose estimate exceeds the memory of the device it runs on (RAM, or the
GPU's memory), naming the argument that costs most, instead of being killed by the kernel later.
The network's own weights and activations are not counted: the estimate is a lower bound.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch

__all__ = ["BYTES_PER_ENTRY", "MemoryEstimate", "WINDOW_TEMPORARIES", "check_fits", "check_solve_fits", "device_memory",
           "estimate_solver_memory", "format_bytes"]

BYTES_PER_ENTRY = 8  # float64 state
WINDOW_TEMPORARIES = 8  # latents per window step and sample alive during one iteration (approximate)
_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of a solve's float64 state, by part.

    Attributes:
        trajectories: noise and trajectory (and a warm start's kept trajectory), all samples.
        history: Triangular Anderson Acceleration's per-step history, all samples.
        window: one iteration's temporaries, all samples.
    """

    trajectories: int
    history: int
    window: int

    @property
    def total(self) -> int:
        """All parts together, in bytes."""
        return self.trajectories + self.history + self.window

    def largest_part(self) -> str:
        """``"trajectories"``, ``"history"`` or ``"window"``: the part that costs most."""
        parts = {"trajectories": self.trajectories, "history": self.history, "window": self.window}
        return max(parts, key=parts.__getitem__)

    def describe(self) -> str:
        """E.g. ``"about 20.5 GB (noise and trajectory 1.0 MB, TAA history 20.5 GB, window 2.1 MB)"``."""
        return (f"about {format_bytes(self.total)} (noise and trajectory {format_bytes(self.trajectories)}, "
                f"TAA history {format_bytes(self.history)}, window {format_bytes(self.window)})")


def estimate_solver_memory(num_samples: int, num_steps: int, latent_numel: int, window_size: int,
                           memory_size: int, kept_trajectories: int = 0) -> MemoryEstimate:
    """The float64 state of ``solve`` for a batch (see the module docstring).

    Args:
        num_samples: B.
        num_steps: T.
        latent_numel: entries of one latent (e.g. 4 * 32 * 32).
        window_size: steps per sample and iteration (capped at T, as the solver does).
        memory_size: iterates kept per step for TAA (1: no history).
        kept_trajectories: further ``(B, T+1, *latent)`` tensors alive during the solve (a warm
            start's initial trajectory).

    Returns:
        The estimate, exact for the trajectories and the history, approximate for the window.
    """
    latent = latent_numel * BYTES_PER_ENTRY
    window = min(window_size, num_steps)
    history_latents = 2 * memory_size * window if memory_size >= 2 else 0
    return MemoryEstimate(
        trajectories=num_samples * (2 + kept_trajectories) * (num_steps + 1) * latent,
        history=num_samples * history_latents * latent,
        window=num_samples * WINDOW_TEMPORARIES * window * latent,
    )


def device_memory(device: torch.device) -> int | None:
    """Total memory of ``device`` in bytes: the GPU's, or the machine's RAM (or its cgroup limit,
    if lower) for the CPU; None where unknown."""
    if device.type == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(device).total_memory)
    if device.type != "cpu":
        return None
    try:
        sizes = [os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        sizes = []
    for path in _CGROUP_LIMITS:
        try:
            sizes.append(int(Path(path).read_text().strip()))
        except (OSError, ValueError):  # absent, or "max" (no limit)
            continue
    return min(sizes) if sizes else None


def check_fits(estimate: MemoryEstimate, device: torch.device, culprits: Mapping[str, str], sharing: int = 1) -> None:
    """ValueError when ``estimate`` exceeds the memory of ``device``, naming what costs most.

    Args:
        estimate: the solve's state.
        device: where it would live.
        culprits: for each part of the estimate (``"trajectories"``, ``"history"``, ``"window"``) the
            argument and value that drive it, as the caller writes them (``"memory_size=1000000"``,
            ``"--memory_size 1000000"``); the largest part's culprit opens the message.
        sharing: processes that each hold such a state in this device's memory (CPU launches).

    Raises:
        ValueError: it cannot fit.
    """
    capacity = device_memory(device)
    if capacity is None or estimate.total * sharing <= capacity:
        return
    culprit = culprits[estimate.largest_part()]
    per_process = f" in each of the {sharing} processes sharing it" if sharing > 1 else ""
    raise ValueError(f"{culprit} needs {estimate.describe()} of float64 solver state{per_process}, more than "
                     f"the {format_bytes(capacity)} of memory of this {device.type} device: lower it")


def check_solve_fits(noise: torch.Tensor, window_size: int, memory_size: int, warm_start: bool,
                     multistep: bool = False, updated_steps: int | None = None) -> None:
    """``check_fits`` for the arguments of ``paratAA.solve`` (validated), before it allocates anything
    (``multistep``: the schedule's, whose outputs are kept: counted as one more trajectory;
    ``updated_steps``: the most steps one iteration updates per sample, when more than the window:
    a half-precision solve's window and settling block, ``paratAA.solver``)."""
    estimate = estimate_solver_memory(noise.shape[0], noise.shape[1] - 1, math.prod(noise.shape[2:]),
                                      int(updated_steps or window_size), int(memory_size),
                                      kept_trajectories=int(warm_start) + int(multistep))
    check_fits(estimate, noise.device, {"trajectories": f"noise of shape {tuple(noise.shape)}",
                                        "history": f"memory_size={memory_size}",
                                        "window": f"window_size={window_size}"})


def format_bytes(size: float) -> str:
    """``1536`` -> ``"1.5 kB"`` (decimal units)."""
    if size < 1000:
        return f"{int(size)} B"
    exponent = min(int(math.log(size, 1000)), 5)
    return f"{size / 1000 ** exponent:.1f} {'kMGTP'[exponent - 1]}B"
