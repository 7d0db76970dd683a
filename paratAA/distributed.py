"""Split one parallel iteration's network calls across processes and gather them back in order.

Every process holds the same float64 solver state and runs the identical solver (noise and class
labels come from per-sample CPU generators, so they agree everywhere without communication). Only
the rows of each ``eps_fn(x, steps, samples)`` call are divided: with ``n`` rows and ``P``
processes, process ``r`` evaluates the contiguous shard ``[lo_r, hi_r)`` (sizes differ by at most
one, the first ``n % P`` shards get the extra row), then every shard is padded to the largest size,
all-gathered, and the padding is dropped, so each process receives all ``n`` outputs in row order.
A process whose shard is empty (``n < P``) still joins the collective with padding only.

This is the only module of the package that touches ``accelerate`` / ``torch.distributed``; the
solver never knows how many processes there are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, TypeVar

import torch

if TYPE_CHECKING:  # imported lazily: single-process runs never need accelerate
    from accelerate import Accelerator

EpsFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
T = TypeVar("T")


def shard_bounds(num_rows: int, num_processes: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` that process ``rank`` evaluates out of ``num_rows``.

    Args:
        num_rows: rows in the batch (>= 0).
        num_processes: number of processes (>= 1).
        rank: this process's index in ``[0, num_processes)``.

    Returns:
        ``(lo, hi)``; shard sizes over all ranks differ by at most one and tile ``[0, num_rows)``.
    """
    if num_processes < 1 or not 0 <= rank < num_processes or num_rows < 0:
        raise ValueError(f"invalid shard request: rows={num_rows}, processes={num_processes}, rank={rank}")
    base, extra = divmod(num_rows, num_processes)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def shard_eps_fn(eps_fn: EpsFn, accelerator: Accelerator | None) -> EpsFn:
    """Wrap ``eps_fn`` so each call is evaluated in shards across the accelerator's processes.

    Outputs are exchanged in float64, which holds fp16/fp32/fp64 network outputs exactly, so
    the result is bit-identical to evaluating every row on one process (given a network whose
    per-row output does not depend on which other rows share its batch).

    Args:
        eps_fn: ``eps_fn(x, steps, samples) -> out`` as the solver expects (see ``paratAA.solve``).
        accelerator: an initialised ``accelerate.Accelerator``, or None for a single process.

    Returns:
        ``eps_fn`` itself for one process, else a wrapper with the same signature whose output
        (float64, on ``x``'s device) holds all rows on every process.
    """
    if accelerator is None or accelerator.num_processes == 1:
        return eps_fn
    world, rank, comm_device = accelerator.num_processes, accelerator.process_index, accelerator.device

    def sharded(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        num_rows = x.shape[0]
        if num_rows == 0:  # every process sees the same batch, so all skip the collective together
            return x.new_zeros(x.shape, dtype=torch.float64)
        lo, hi = shard_bounds(num_rows, world, rank)
        padded_rows = -(-num_rows // world)  # size of the largest shard
        padded = torch.zeros((padded_rows, *x.shape[1:]), dtype=torch.float64, device=comm_device)
        if hi > lo:
            padded[: hi - lo] = eps_fn(x[lo:hi], steps[lo:hi], samples[lo:hi]).to(comm_device, torch.float64)
        gathered = accelerator.gather(padded)  # (world * padded_rows, *latent), rank-major
        shards = [
            gathered[r * padded_rows : r * padded_rows + (b - a)]
            for r, (a, b) in enumerate(shard_bounds(num_rows, world, r) for r in range(world))
        ]
        return torch.cat(shards).to(x.device)

    return sharded


@dataclass(frozen=True)
class ProcessContext:
    """Where this process runs and who it is.

    Attributes:
        accelerator: the ``accelerate.Accelerator`` under a multi-process launch, else None.
        device: the torch device this process computes on.
        num_processes: world size (1 without a multi-process launch).
        process_index: this process's rank.
    """

    accelerator: Accelerator | None
    device: torch.device
    num_processes: int
    process_index: int

    @property
    def is_main(self) -> bool:
        """True on the one process that prints and writes files."""
        return self.process_index == 0


def in_process_group() -> bool:
    """Whether a torch.distributed group with more than one process is running."""
    return (torch.distributed.is_available() and torch.distributed.is_initialized()
            and torch.distributed.get_world_size() > 1)


def main_process_value(value: T) -> T:
    """``value`` as the main process has it, on every process of the group (itself without a group).

    For decisions taken from measurements (timings differ between processes) that every process
    must take alike, because the calls that follow are collective.
    """
    if not in_process_group():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def launched_world_size() -> int:
    """World size announced by the launcher (``accelerate launch`` / ``torchrun``), 1 if none."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_processes(device: torch.device) -> ProcessContext:
    """Set up the process group when launched with several processes.

    Under ``accelerate launch --num_processes N`` (N > 1) the device is accelerate's choice (one
    GPU per process, or CPU with gloo when ``ACCELERATE_USE_CPU=1``) and ``device`` only says
    whether the CPU was asked for; otherwise ``device`` is used as given and no process group is
    created.

    Args:
        device: the device requested on the command line.

    Returns:
        The process context for this process.
    """
    if launched_world_size() <= 1:
        return ProcessContext(accelerator=None, device=device, num_processes=1, process_index=0)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device.type == "cpu")
    return ProcessContext(
        accelerator=accelerator,
        device=accelerator.device,
        num_processes=accelerator.num_processes,
        process_index=accelerator.process_index,
    )
