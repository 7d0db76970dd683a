"""Solver overhead: time per parallel iteration of everything except the network, and peak memory.

Every configuration (latent shape, T, window, memory) runs in its own subprocess, so the peak
resident memory (``resource.getrusage`` max RSS; ``torch.cuda.max_memory_allocated`` on CUDA) is
that configuration's alone. The network is a near-free linear map (``0.1 * x``): the records split
each iteration's wall-clock into ``network_seconds`` and ``solver_seconds``, and this reports the
latter. Tolerances are 0, so the window stays full for the few timed iterations; the first iteration
(empty TAA history) is reported apart from the steady state: the fastest of the others, the usual
estimate of a deterministic computation's cost on a machine shared with other work (every
iteration's time is kept in the JSON).

Usage::

    .venv/bin/python -m benchmarks.solver_overhead                # full grid, about 10 minutes on 1 CPU thread
    .venv/bin/python -m benchmarks.solver_overhead --quick        # tiny grid (tests)
    .venv/bin/python -m benchmarks.solver_overhead --device cuda --out $OUT/solver_overhead_gpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.arguments import comma_list

__all__ = ["main", "measure", "parse_latent", "grid"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "solver_overhead.json"


def parse_latent(text: str) -> tuple[int, ...]:
    """``"4x32x32"`` -> ``(4, 32, 32)``."""
    try:
        shape = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(v < 1 for v in shape):
        raise argparse.ArgumentTypeError(f"latent shape must look like 4x32x32, got {text!r}")
    return shape


def grid(latents: list[tuple[int, ...]], steps: list[int], windows: list[int],
         memories: list[int]) -> list[dict[str, Any]]:
    """Configurations: every latent x T x memory, windows ``<= T`` plus ``T`` itself (order = window)."""
    configs = []
    for latent in latents:
        for num_steps in steps:
            for window in sorted({w for w in windows if w < num_steps} | {num_steps}):
                for memory in memories:
                    configs.append(dict(latent=list(latent), num_steps=num_steps, window=window, memory=memory))
    return configs


def measure(config: dict[str, Any], iterations: int, device: str, batch: int = 1) -> dict[str, Any]:
    """Run one configuration in this process and return its timings and memory.

    Args:
        config: ``latent``, ``num_steps``, ``window``, ``memory`` (order = window).
        iterations: iterations to run (the first is reported apart).
        device: ``"cpu"`` or ``"cuda"``.
        batch: samples solved together.

    Returns:
        The configuration with ``solver_ms_first``, ``solver_ms`` (fastest later iteration), ``solver_ms_all``,
        ``solver_us_per_step``, ``network_ms``, ``peak_rss_mb`` / ``solve_rss_mb`` (CPU) or
        ``peak_cuda_mb`` (CUDA), ``trajectory_mb``.
    """
    import torch
    from diffusers import DDIMScheduler

    from paratAA import Schedule, solve

    latent, num_steps, window = tuple(config["latent"]), config["num_steps"], config["window"]
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(num_steps)
    schedule = Schedule.from_scheduler(scheduler, eta=0.0, verify=False)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn((batch, num_steps + 1, *latent), generator=generator, dtype=torch.float64).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_before = torch.cuda.memory_allocated()
    rss_before_mb = _current_rss_mb()
    result = solve(lambda x, steps, samples: 0.1 * x, schedule, noise, window_size=window, order=window,
                   memory_size=config["memory"], tol1=0.0, tol2=0.0, max_iters=iterations)
    solver = [r.solver_seconds for r in result.records]
    later = solver[1:] or solver
    out = dict(config, batch=batch, device=device, iterations_timed=len(solver),
               solver_ms_first=1e3 * solver[0], solver_ms=1e3 * min(later),
               solver_ms_all=[round(1e3 * v, 3) for v in solver],
               solver_us_per_step=1e6 * min(later) / (batch * window),
               network_ms=1e3 * statistics.median(r.network_seconds for r in result.records),
               trajectory_mb=noise.numel() * 8 / 2**20)
    if device == "cuda":
        out["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
    else:
        out["peak_rss_mb"] = _peak_rss_mb()
        out["solve_rss_mb"] = out["peak_rss_mb"] - rss_before_mb
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _current_rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:  # not Linux: fall back to the peak so far
        return _peak_rss_mb()


def _run_isolated(config: dict[str, Any], iterations: int, device: str, threads: int | None) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.solver_overhead", "--worker", json.dumps(config),
               "--iters", str(iterations), "--device", device]
    if threads:
        command += ["--threads", str(threads)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"configuration {config} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the results."""
    memory_key = "peak_cuda_mb" if rows and "peak_cuda_mb" in rows[0] else "solve_rss_mb"
    header = ("| latent | T | window | memory | solver ms/iter (first) | solver ms/iter | us/step "
              f"| {'CUDA peak MB' if memory_key == 'peak_cuda_mb' else 'solve RSS MB'} | trajectory MB |")
    lines = [header, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {'x'.join(map(str, r['latent']))} | {r['num_steps']} | {r['window']} | {r['memory']} "
                     f"| {r['solver_ms_first']:.1f} | {r['solver_ms']:.1f} | {r['solver_us_per_step']:.0f} "
                     f"| {r[memory_key]:.0f} | {r['trajectory_mb']:.0f} |")
    return "\n".join(lines)


def machine_info(device: str) -> dict[str, Any]:
    """Where the numbers came from."""
    import os

    import torch

    info = dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                cpu_count=os.cpu_count(), python=platform.python_version(), torch=torch.__version__,
                torch_threads=torch.get_num_threads())
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run the grid (one subprocess per configuration), print the table, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latents", type=comma_list(parse_latent),
                        default=[(4, 32, 32), (4, 64, 64)], help="comma-separated latent shapes, e.g. 4x32x32,4x64x64")
    parser.add_argument("--steps", type=comma_list(int, minimum=1), default=[25, 50, 100, 1000], help="values of T")
    parser.add_argument("--windows", type=comma_list(int, minimum=1), default=[10, 100],
                        help="window sizes (T itself is always added)")
    parser.add_argument("--memories", type=comma_list(int, minimum=1), default=[2, 3, 4, 5], help="TAA memory sizes")
    parser.add_argument("--iters", type=int, default=4, help="iterations run per configuration (>= 2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per worker (default 1: stable numbers on a shared machine; 0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="tiny grid for a smoke test")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iters < 2:
        parser.error("--iters must be >= 2 (the first iteration is reported apart)")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: CUDA is not available on this machine")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(json.loads(args.worker), args.iters, args.device)))
        return {}
    if args.quick:
        args.latents, args.steps, args.windows, args.memories = [(4, 8, 8)], [10], [4], [2]
    configs = grid(args.latents, args.steps, args.windows, args.memories)
    start = time.perf_counter()
    report = dict(benchmark="solver_overhead", command=" ".join(["python -m benchmarks.solver_overhead",
                                                                 *(argv or sys.argv[1:])]),
                  machine=machine_info(args.device), seconds=0.0, complete=False,
                  network="0.1 * x (near free; solver_seconds excludes it)", order="= window",
                  tolerances="tol1 = tol2 = 0 (window stays full)", rows=[])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for k, config in enumerate(configs):
        report["rows"].append(_run_isolated(config, args.iters, args.device, args.threads))
        report["seconds"] = time.perf_counter() - start
        report["complete"] = k == len(configs) - 1
        args.out.write_text(json.dumps(report, indent=2) + "\n")  # after every configuration: a long run can be cut
        print(f"  {config} solver {report['rows'][-1]['solver_ms']:.1f} ms/iter", file=sys.stderr, flush=True)
    print(format_table(report["rows"]))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
