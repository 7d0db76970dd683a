"""Sharding network calls across CPU processes (gloo) gives exactly the single-process results."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import PrepareForLaunch, patch_environment
from torch.multiprocessing import start_processes

from paratAA import Schedule, solve
from paratAA.analytic import gaussian_mixture_problem
from paratAA.distributed import shard_bounds, shard_eps_fn
from paratAA.noise import sample_noise

ROW_COUNTS = (1, 2, 5, 7)  # with 2 or 3 processes: fewer rows than processes, and not divisible
LATENT = (2, 3, 3)
NUM_STEPS = 12
WINDOWS = (1, 5, NUM_STEPS)  # x 2 samples: 2, 10 and 24 rows per iteration


def _toy_eps(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """A row-wise function of all three inputs, in float32 as a real network would return."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    return (torch.sin(x) * (steps.view(shape) + 1) + samples.view(shape)).float()


def _rows(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    x = torch.randn((n, *LATENT), generator=g, dtype=torch.float64)
    return x, torch.arange(n) % NUM_STEPS, torch.arange(n) % 2


def _schedule(kind: str = "ddim") -> Schedule:
    """DDIM (eta 0) or SD3's flow matching, on which ParaTAA needs fewer than T iterations here."""
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler  # parent only: workers get it pickled

    scheduler = DDIMScheduler(clip_sample=False) if kind == "ddim" else FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(NUM_STEPS)
    return Schedule.from_scheduler(scheduler, eta=0.0)


def _launch(function, args: tuple, num_processes: int, tmp_path: Path) -> None:
    """``accelerate.debug_launcher`` with spawned processes: forking a process whose OpenMP pool
    has been used (any earlier test did) can deadlock the children."""
    # MASTER_* are only checked by accelerate: the FileStore rendezvous needs no port.
    with patch_environment(world_size=num_processes, master_addr="127.0.0.1", master_port="29500",
                           accelerate_use_cpu="yes", accelerate_mixed_precision="no",
                           accelerate_debug_rdv_file=str(tmp_path / "rendezvous"), gloo_socket_ifname="lo"):
        start_processes(PrepareForLaunch(_closing_group, debug=True), args=(function, *args), nprocs=num_processes,
                        start_method="spawn")


def _closing_group(function, *args) -> None:
    """Run ``function`` in a launched process, then leave the process group: a gloo group still
    alive at interpreter exit has aborted a worker ("terminate called without an active exception")."""
    try:
        function(*args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _solve(eps_fn_for, window_size: int, schedule: Schedule) -> dict:
    """ParaTAA on an analytic Gaussian mixture: two samples, order <= 3, memory 3."""
    mixture = gaussian_mixture_problem(LATENT, num_components=3, seed=0)
    noise = sample_noise(7, num_samples=2, num_steps=NUM_STEPS, latent_shape=LATENT)
    result = solve(eps_fn_for(mixture.eps_fn(schedule)), schedule, noise, window_size=window_size,
                   order=min(3, window_size), memory_size=3, tol1=1e-3, tol2=1e-3)
    return {"trajectory": result.trajectory, "iterations": result.iterations,
            "per_sample_iterations": result.per_sample_iterations, "evaluations": result.evaluations}


def _worker(out_dir: str, schedule: Schedule) -> None:
    """Runs in every launched process: sharded toy calls and full solves, saved per rank."""
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    calls: list[int] = []

    def counting_eps(x, steps, samples):
        calls.append(x.shape[0])
        return _toy_eps(x, steps, samples)

    sharded = shard_eps_fn(counting_eps, accelerator)
    toy = {n: sharded(*_rows(n)) for n in ROW_COUNTS}
    solves = {w: _solve(lambda f: shard_eps_fn(f, accelerator), w, schedule) for w in WINDOWS}
    torch.save({"toy": toy, "calls": calls, "solves": solves}, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.parametrize("num_processes, kind", [(2, "ddim"), (3, "ddim")])  # flow matching: test_pipelines
def test_sharded_results_equal_single_process(tmp_path: Path, num_processes: int, kind: str) -> None:
    schedule = _schedule(kind)
    _launch(_worker, (str(tmp_path), schedule), num_processes, tmp_path)
    outs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(num_processes)]

    for n in ROW_COUNTS:
        expected = _toy_eps(*_rows(n)).double()
        for out in outs:  # every process receives every row, in order, exactly
            assert out["toy"][n].dtype == torch.float64
            assert torch.equal(out["toy"][n], expected)
    for r, out in enumerate(outs):  # each process evaluated only its own shard; empty shards made no call
        own = [shard_bounds(n, num_processes, r) for n in ROW_COUNTS]
        assert out["calls"][: len(ROW_COUNTS)] == [hi - lo for lo, hi in own if hi > lo]

    for window in WINDOWS:
        single = _solve(lambda f: f, window, schedule)
        for out in outs:
            got = out["solves"][window]
            assert torch.equal(got["trajectory"], single["trajectory"])
            assert got["per_sample_iterations"] == single["per_sample_iterations"]
            assert max(single["per_sample_iterations"]) < NUM_STEPS or window == 1
            assert got["evaluations"] == single["evaluations"]


def test_shard_bounds_tile_rows_evenly() -> None:
    for n, world in itertools.product(range(12), range(1, 6)):
        bounds = [shard_bounds(n, world, r) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(prev[1] == nxt[0] for prev, nxt in zip(bounds, bounds[1:]))
        sizes = [hi - lo for lo, hi in bounds]
        assert max(sizes) - min(sizes) <= 1


def test_shard_bounds_rejects_bad_rank() -> None:
    with pytest.raises(ValueError, match="rank"):
        shard_bounds(4, 2, 2)


def test_single_process_is_pass_through() -> None:
    assert shard_eps_fn(_toy_eps, None) is _toy_eps


def _main_value_worker(out_dir: str) -> None:
    from accelerate import Accelerator

    from paratAA.distributed import main_process_value

    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    # Each process measures differently; every process must act on the main process's value.
    seen = main_process_value({"rank": rank, "linear": rank == 0})
    torch.save(seen, f"{out_dir}/rank{rank}.pt")


def test_main_process_value_is_the_main_process_value_everywhere(tmp_path):
    from paratAA.distributed import main_process_value

    assert main_process_value([3, 4]) == [3, 4]  # no process group: the value itself
    _launch(_main_value_worker, (str(tmp_path),), 2, tmp_path)
    for rank in range(2):
        assert torch.load(tmp_path / f"rank{rank}.pt") == {"rank": 0, "linear": True}
