"""GPU timing of full-size DiT-XL/2 and SD 1.5 UNet (random weights, fp16): what a parallel iteration costs.

For each model: seconds per sequential step (network batch = CFG x samples) against seconds per
parallel iteration (batch = window x CFG x samples) for several windows, the ParaTAA solver's own time
per iteration on that latent size (``benchmarks.solver_overhead.measure``: the real update on the
device) as a fraction of the iteration, and the wall-clock speed-up these imply with the iteration
counts of ``benchmarks/compare.py``'s JSON:

    speed-up(W) = T * t_step / (iterations(W) * (t_network(W) + t_solver(W)))

On one GPU a window only pays while W x CFG rows run in about the time of CFG rows (the GPU is
underused at small batches); past that the iteration time grows about linearly with W and the
speed-up is bounded by T / (iterations x W / saturation batch). Several GPUs split the window.

The models are built from their published configurations, nothing is downloaded:
DiT-XL/2 = ``DiTTransformer2DModel`` (28 layers, hidden 1152 = 16 heads x 72, patch 2, sample 32,
4 -> 8 channels, 1000 classes); SD 1.5 = ``UNet2DConditionModel`` default configuration
(blocks 320/640/1280/1280, cross-attention 768, sample 64) with 77 x 768 text embeddings.

Usage (one self-contained command, a few minutes on one H100)::

    python -m benchmarks.gpu_timing --out_dir $OUT
    python -m benchmarks.gpu_timing --device cpu --tiny --out_dir /tmp/x     # smoke run (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_COMPARE = REPO_ROOT / "benchmarks" / "results" / "compare.json"

DIT_XL2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
               sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
DIT_TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
SD15_UNET: dict[str, Any] = dict(sample_size=64, cross_attention_dim=768)  # the rest: diffusers' defaults = SD 1.5
SD_TINY = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
               norm_num_groups=4)
TEXT_TOKENS = 77


def build_network(kind: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[Callable, tuple[int, ...]]:
    """A random-weight network as ``forward(x, t) -> out`` and its latent shape.

    Args:
        kind: ``"dit"`` or ``"sd"``.
        tiny: the tiny configuration instead of the full-size one.
        device, dtype: where and in which precision it runs.
    """
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    with torch.device(device):  # initialise on the device: full-size CPU initialisation takes minutes
        if kind == "dit":
            config = DIT_TINY if tiny else DIT_XL2
            model = DiTTransformer2DModel(**config).to(dtype).eval()
            latent = (4, config["sample_size"], config["sample_size"])

            def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                return model(x, timestep=t, class_labels=labels).sample
        else:
            config = SD_TINY if tiny else SD15_UNET
            model = UNet2DConditionModel(**config).to(dtype).eval()
            size = config["sample_size"]
            latent = (4, size, size)
            width = config["cross_attention_dim"]

            def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                text = torch.zeros(x.shape[0], TEXT_TOKENS, width, dtype=x.dtype, device=x.device)
                return model(x, t, encoder_hidden_states=text).sample
    return forward, latent


@torch.inference_mode()
def time_batch(forward: Callable, latent: tuple[int, ...], batch: int, device: torch.device, dtype: torch.dtype,
               repeats: int) -> float:
    """Median seconds of one forward pass of ``batch`` rows (after one warm-up pass)."""
    x = torch.randn((batch, *latent), device=device, dtype=dtype)
    t = torch.randint(0, 1000, (batch,), device=device)
    times = []
    for k in range(repeats + 1):
        _sync(device)
        start = time.perf_counter()
        forward(x, t)
        _sync(device)
        if k:  # the first pass warms up kernels and allocator
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def iteration_counts(compare_json: Path | None) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Fewest ParaTAA iterations per (sampler, T, window) in a ``compare.py`` JSON (all problems)."""
    if compare_json is None or not compare_json.is_file():
        return {}
    best: dict[tuple[str, int, int], dict[str, Any]] = {}
    for row in json.loads(compare_json.read_text())["rows"]:
        if not row["method"].startswith("ParaTAA"):
            continue
        key = (row["sampler"], row["num_steps"], row["window"])
        if key not in best or row["iterations"] < best[key]["iterations"]:
            best[key] = dict(iterations=row["iterations"], method=row["method"], problem=row["problem"])
    return best


def time_model(kind: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
               counts: dict[tuple[str, int, int], dict[str, Any]]) -> dict[str, Any]:
    """Sequential step, parallel iterations per window, solver overhead and implied speed-ups of one model."""
    from benchmarks.solver_overhead import measure

    forward, latent = build_network(kind, args.tiny, device, dtype)
    rows_per_sample = 2 * args.samples  # classifier-free guidance doubles the batch
    step = time_batch(forward, latent, rows_per_sample, device, dtype, args.repeats)
    windows = []
    for window in args.windows:
        network = time_batch(forward, latent, window * rows_per_sample, device, dtype, args.repeats)
        solver_ms = None
        for num_steps in args.steps:
            if window > num_steps:
                continue
            overhead = measure(dict(latent=list(latent), num_steps=num_steps, window=window, memory=args.memory),
                               iterations=4, device=device.type, batch=args.samples)
            solver_ms = overhead["solver_ms"]
            entry = dict(window=window, num_steps=num_steps, network_seconds=network,
                         solver_seconds=solver_ms / 1e3, solver_fraction=solver_ms / 1e3 / network,
                         iteration_over_step=network / step,
                         peak_solver_mb=overhead.get("peak_cuda_mb", overhead.get("solve_rss_mb")))
            for sampler in ("ddim", "ddpm"):
                found = counts.get((sampler, num_steps, window))
                if found:
                    iteration = network + solver_ms / 1e3
                    entry[f"{sampler}_iterations"] = found["iterations"]
                    entry[f"{sampler}_speedup"] = num_steps * step / (found["iterations"] * iteration)
            windows.append(entry)
        print(f"  {kind} W={window}: {network * 1e3:.1f} ms/iteration ({network / step:.1f}x a step)",
              file=sys.stderr, flush=True)
    del forward
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(model=kind, config="tiny" if args.tiny else ("DiT-XL/2" if kind == "dit" else "SD 1.5 UNet"),
                latent=list(latent), samples=args.samples, cfg_rows=rows_per_sample,
                sequential_step_seconds=step, windows=windows)


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: per model and window, times, solver fraction, implied speed-ups."""
    lines = ["| model | T | window | step ms | iteration ms | iteration / step | solver ms | solver % "
             "| DDIM iters -> speed-up | DDPM iters -> speed-up |", "|" + "---|" * 10]
    for result in results:
        for w in result["windows"]:
            implied = [f"{w[f'{s}_iterations']} -> {w[f'{s}_speedup']:.2f}x" if f"{s}_iterations" in w else "-"
                       for s in ("ddim", "ddpm")]
            lines.append(f"| {result['config']} | {w['num_steps']} | {w['window']} "
                         f"| {result['sequential_step_seconds'] * 1e3:.1f} | {w['network_seconds'] * 1e3:.1f} "
                         f"| {w['iteration_over_step']:.1f} | {w['solver_seconds'] * 1e3:.1f} "
                         f"| {100 * w['solver_fraction']:.1f} | {implied[0]} | {implied[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, time both models, print the table, write ``gpu_timing.json``."""
    from benchmarks.solver_overhead import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda",
                        help="cuda (default) or cpu: tiny models, or full-size ones with small --windows "
                             "(a DiT-XL/2 forward of a few rows takes seconds on a CPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny configurations (smoke run; numbers meaningless)")
    parser.add_argument("--models", type=lambda s: s.split(","), default=["dit", "sd"], help="dit,sd")
    parser.add_argument("--windows", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 10, 25, 50, 100])
    parser.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[25, 50, 100],
                        help="T values for the solver overhead and the implied speed-up")
    parser.add_argument("--memory", type=int, default=2, help="TAA memory of the solver-overhead run")
    parser.add_argument("--samples", type=int, default=1, help="samples per batch")
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per batch size")
    parser.add_argument("--compare_json", type=Path, default=DEFAULT_COMPARE,
                        help="compare.py JSON with iteration counts (default: the committed one)")
    parser.add_argument("--out_dir", type=Path, default=Path(os.environ.get("OUT", REPO_ROOT / "benchmarks" / "results")),
                        help="where gpu_timing.json goes (default: $OUT, else benchmarks/results)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_timing: --device cuda but CUDA is not available here. This benchmark needs a GPU; "
                         "for a smoke run on a CPU use --device cpu --tiny.")
    if any(w < 1 for w in args.windows) or args.samples < 1 or args.repeats < 1:
        parser.error("--windows, --samples and --repeats must be >= 1")
    unknown = [m for m in args.models if m not in ("dit", "sd")]
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from dit, sd")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and args.tiny:
        torch.set_num_threads(1)  # spinning OpenMP threads slow tiny networks down
    counts = iteration_counts(args.compare_json)
    start = time.perf_counter()
    results = [time_model(kind, args, device, dtype, counts) for kind in args.models]
    report = dict(benchmark="gpu_timing", command=" ".join(["python -m benchmarks.gpu_timing", *(argv or sys.argv[1:])]),
                  machine=machine_info(device.type), dtype=str(dtype), seconds=time.perf_counter() - start,
                  iteration_counts_from=str(args.compare_json) if counts else None,
                  smoke_run=args.tiny, results=results)
    print(format_table(results))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # A full-size run on a CPU is kept apart from the GPU results that plots.py reads.
    path = args.out_dir / ("cpu_timing.json" if device.type == "cpu" and not args.tiny else "gpu_timing.json")
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path} ({report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
