"""GPU timing of full-size DiT-XL/2, SD 1.5, SD3, Flux (fp16), Wan 1.3B (bf16) networks: what an iteration costs.

For each model: seconds per sequential step (network batch = guidance rows x samples) against
seconds per parallel iteration (batch = window x guidance rows x samples) for each window, the
ParaTAA solver's own time per iteration on that latent size (``benchmarks.solver_overhead.measure``:
the real update on the device) as a fraction of the iteration, and the wall-clock speed-up these imply
**at matched accuracy**: with the fewest iterations that reach a max difference of ``--accuracy``
(default 1e-3) from the sequential sample in the committed matched-accuracy sweeps
(``benchmarks/results/accuracy_*.json``, ``benchmarks/accuracy.py``), for the default method and
for ParaDiGMS, at the same sampler, step count and window:

    speed-up(W) = T * t_step / (iterations(W) * (t_network(W) + t_solver(W)))

ParaDiGMS's figure counts the network time only (its own update is cheaper than ParaTAA's and is
not timed here), so it is an upper bound: the comparison leans towards ParaDiGMS. The iteration
counts come from the trained digits DiT and the analytic Gaussian mixture (DDIM rows for DiT and
SD, flow-matching Euler rows for SD3 and Flux), not from these networks; the JSON says which.

On one GPU a window only pays while W x guidance rows run in about the time of one step's rows
(the GPU is underused at small batches); past that the iteration time grows about linearly with W
and the speed-up is bounded by T / (iterations x W / saturation batch). Several GPUs split the window.

The models are built from their published configurations, nothing is downloaded:
DiT-XL/2 = ``DiTTransformer2DModel`` (28 layers, hidden 1152 = 16 heads x 72, patch 2, sample 32,
4 -> 8 channels, 1000 classes); SD 1.5 = ``UNet2DConditionModel`` default configuration (blocks
320/640/1280/1280, cross-attention 768, sample 64) with 77 x 768 text embeddings; SD3-medium =
``SD3Transformer2DModel`` (24 layers, 24 heads x 64, patch 2, 16-channel 128 x 128 latents = 1024
pixels, joint attention 4096 over 77 + 256 text tokens, pooled 2048), classifier-free guidance;
FLUX.1-dev = ``FluxTransformer2DModel`` (19 + 38 layers, 24 heads x 128, packed 64-channel 4096
tokens = 1024 pixels, 512 T5 tokens, pooled 768, embedded guidance: one row per sample); Wan 2.1 1.3B =
``WanTransformer3DModel`` (30 layers, 12 heads x 128, patch 1x2x2, 16-channel 21 x 60 x 104 latents =
81 frames of 480 x 832, 512 UMT5 tokens, in bfloat16 as it ships), classifier-free guidance, with the
iteration counts of UniPC in Wan's 50-step flow setting.

Usage (one self-contained command, a few minutes on one H100/H200)::

    python -m benchmarks.gpu_timing --out_dir $OUT
    python -m benchmarks.gpu_timing --models sd3,flux --out_dir $OUT     # the flow-matching models only
    python -m benchmarks.gpu_timing --device cpu --tiny --out_dir /tmp/x  # smoke run (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.arguments import comma_list

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
MATCHED_METHODS = ("default", "ParaDiGMS")  # the methods whose matched-accuracy counts are read

DIT_XL2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
               sample_size=32, patch_size=2, num_embeds_ada_norm=1000)
DIT_TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                sample_size=8, patch_size=2, num_embeds_ada_norm=1000)
SD15_UNET: dict[str, Any] = dict(sample_size=64, cross_attention_dim=768)  # the rest: diffusers' defaults = SD 1.5
SD_TINY = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
               down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
               up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16, attention_head_dim=4,
               norm_num_groups=4)
SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, pos_embed_max_size=192)
SD3_TINY = dict(sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
                num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16)
FLUX_DEV = dict(in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128, num_attention_heads=24,
                joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
FLUX_TINY = dict(in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
                 joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
# Wan 2.1 T2V 1.3B (its transformer config): 480x832, 81 frames -> 16-channel latents of 21 frames x 60 x 104.
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_LATENT = (16, 21, 60, 104)
WAN_TINY = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=32)
WAN_TEXT_TOKENS = 512  # Wan's UMT5 max_sequence_length
TEXT_TOKENS = 77
SD3_TEXT_TOKENS = 77 + 256  # CLIP tokens and SD3's default max_sequence_length of T5 tokens
FLUX_TEXT_TOKENS = 512  # FLUX.1-dev's T5 max_sequence_length
FLUX_GUIDANCE = 3.5


@dataclass(frozen=True)
class ModelSpec:
    """A timed model: its name in tables, the samplers whose iteration counts apply, rows per sample."""

    label: str
    samplers: tuple[str, ...]  # the accuracy sweeps' sampler names: "ddim", "ddpm", "dpm", "flow"
    guidance_rows: int  # network rows per sample and step: 2 with classifier-free guidance, 1 for Flux-dev
    dtype: str | None = None  # the precision it ships in, if not the run's float16 (Wan: bfloat16)


MODELS = {"dit": ModelSpec("DiT-XL/2", ("ddim", "ddpm", "dpm"), 2),
          "sd": ModelSpec("SD 1.5 UNet", ("ddim", "ddpm", "dpm"), 2),
          "sd3": ModelSpec("SD3-medium transformer 1024px", ("flow",), 2),
          "flux": ModelSpec("FLUX.1-dev transformer 1024px", ("flow",), 1),
          "wan": ModelSpec("Wan 2.1 1.3B transformer 480x832x81", ("unipc-flow",), 2, "bfloat16")}


def build_network(kind: str, tiny: bool, device: torch.device, dtype: torch.dtype) -> tuple[Callable, tuple[int, ...]]:
    """A random-weight network as ``forward(x, t) -> out`` (``t``: timesteps in [0, 1000)) and its latent shape.

    Args:
        kind: a key of ``MODELS``.
        tiny: the tiny configuration instead of the full-size one.
        device, dtype: where and in which precision it runs.
    """
    from diffusers import (
        DiTTransformer2DModel,
        FluxTransformer2DModel,
        SD3Transformer2DModel,
        UNet2DConditionModel,
        WanTransformer3DModel,
    )

    with torch.device(device):  # initialise on the device: full-size CPU initialisation takes minutes
        if kind == "dit":
            config = DIT_TINY if tiny else DIT_XL2
            model = DiTTransformer2DModel(**config).to(dtype).eval()
            latent: tuple[int, ...] = (4, config["sample_size"], config["sample_size"])

            def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
                return model(x, timestep=t, class_labels=labels).sample
        elif kind == "sd":
            config = SD_TINY if tiny else SD15_UNET
            model = UNet2DConditionModel(**config).to(dtype).eval()
            size = config["sample_size"]
            latent = (4, size, size)
            width = config["cross_attention_dim"]

            def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                text = torch.zeros(x.shape[0], TEXT_TOKENS, width, dtype=x.dtype, device=x.device)
                return model(x, t, encoder_hidden_states=text).sample
        elif kind == "sd3":
            config = SD3_TINY if tiny else SD3_MEDIUM
            model = SD3Transformer2DModel(**config).to(dtype).eval()
            latent = (config["in_channels"], config["sample_size"], config["sample_size"])
            tokens = 6 if tiny else SD3_TEXT_TOKENS

            def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                n = x.shape[0]
                text = torch.zeros(n, tokens, config["joint_attention_dim"], dtype=x.dtype, device=x.device)
                pooled = torch.zeros(n, config["pooled_projection_dim"], dtype=x.dtype, device=x.device)
                return model(hidden_states=x, timestep=t.to(x.dtype), encoder_hidden_states=text,
                             pooled_projections=pooled).sample
        elif kind == "wan":
            config = WAN_TINY if tiny else WAN_1_3B
            model = WanTransformer3DModel(**config).to(dtype).eval()
            latent = (4, 2, 4, 4) if tiny else WAN_LATENT
            tokens = 6 if tiny else WAN_TEXT_TOKENS

            def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                text = torch.zeros(x.shape[0], tokens, config["text_dim"], dtype=x.dtype, device=x.device)
                return model(hidden_states=x, timestep=t, encoder_hidden_states=text).sample
        else:
            config = FLUX_TINY if tiny else FLUX_DEV
            model = FluxTransformer2DModel(**config).to(dtype).eval()
            side = 4 if tiny else 64  # packed 2x2 patches of the VAE's latent: 1024 px -> 128 -> 64 x 64 tokens
            latent = (side * side, config["in_channels"])
            tokens = 6 if tiny else FLUX_TEXT_TOKENS
            image_ids = torch.zeros(side, side, 3)
            image_ids[..., 1] += torch.arange(side)[:, None]
            image_ids[..., 2] += torch.arange(side)[None, :]
            image_ids = image_ids.reshape(-1, 3).to(dtype)
            text_ids = torch.zeros(tokens, 3, dtype=dtype)

            def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                n = x.shape[0]
                text = torch.zeros(n, tokens, config["joint_attention_dim"], dtype=x.dtype, device=x.device)
                pooled = torch.zeros(n, config["pooled_projection_dim"], dtype=x.dtype, device=x.device)
                guidance = torch.full((n,), FLUX_GUIDANCE, dtype=x.dtype, device=x.device)
                return model(hidden_states=x, timestep=t.to(x.dtype) / 1000, guidance=guidance,
                             pooled_projections=pooled, encoder_hidden_states=text, txt_ids=text_ids,
                             img_ids=image_ids).sample
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


Row = tuple[str, str, int, int]  # (sampler, scenario, T, window) of the accuracy sweeps: ("ddim", "eta1-100", 100, 25)


def matched_iteration_counts(paths: list[Path], accuracy: float) -> dict[Row, dict[str, Any]]:
    """Per (sampler, scenario, T, window) row of the sweeps: the fewest iterations each of ``MATCHED_METHODS``
    needs to reach max difference ``accuracy``, the largest over the sweeps' problems and guidance
    scales (the conservative count), with the problems it came from.

    Args:
        paths: ``benchmarks/accuracy.py`` JSON files (missing ones are skipped).
        accuracy: one of the sweeps' thresholds (1e-2, 1e-3, 1e-4).
    """
    from benchmarks.accuracy import merge_groups

    groups = [group for path in paths if path.is_file() for group in json.loads(path.read_text())["groups"]]
    counts: dict[Row, dict[str, Any]] = {}
    for group in merge_groups(groups):  # a later file's run of a method replaces an earlier one's
        key = (group["sampler"], group["scenario"], group["num_steps"], group["window"])
        for method in MATCHED_METHODS:
            best = group["methods"].get(method, {}).get("best", {}).get(f"{accuracy:g}")
            if best is None:
                continue
            entry = counts.setdefault(key, {}).setdefault(method, {"iterations": 0, "problems": []})
            entry["iterations"] = max(entry["iterations"], best["iterations"])
            entry["problems"] = sorted({*entry["problems"], group["problem"]})
    return counts


def model_rows(spec: ModelSpec, counts: dict[Row, dict[str, Any]], steps: list[int] | None,
               windows: list[int] | None) -> list[tuple[int, int | None, Row | None]]:
    """The (window, T, counted row) triples timed: every counted row of the model's samplers (T in
    ``--steps`` if given), plus window 1 for reference; with ``--windows``, those windows for each
    ``--steps`` T (no counts). T and the row are None where no count applies."""
    if windows is not None:
        rows = [(w, t, None) for w in windows for t in (steps or [])]
        return rows or [(w, None, None) for w in windows]
    counted = {(row[3], row[2], row) for row in counts if row[0] in spec.samplers and (not steps or row[2] in steps)}
    return sorted({(1, None, None), *counted}, key=lambda r: (r[0], r[1] or 0, r[2] or ()))


def time_model(kind: str, args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
               counts: dict[Row, dict[str, Any]]) -> dict[str, Any]:
    """Sequential step, parallel iterations per window, solver overhead and implied speed-ups of one model."""
    from benchmarks.solver_overhead import measure

    spec = MODELS[kind]
    if spec.dtype is not None and device.type == "cuda":
        dtype = getattr(torch, spec.dtype)
    forward, latent = build_network(kind, args.tiny, device, dtype)
    rows_per_sample = spec.guidance_rows * args.samples
    step = time_batch(forward, latent, rows_per_sample, device, dtype, args.repeats)
    network_seconds: dict[int, float] = {}
    overheads: dict[tuple[int, int], dict[str, Any]] = {}  # per (T, window): rows of several scenarios share one
    entries = []
    for window, num_steps, row in model_rows(spec, counts, args.steps, args.windows):
        if window not in network_seconds:
            network_seconds[window] = time_batch(forward, latent, window * rows_per_sample, device, dtype, args.repeats)
            print(f"  {kind} W={window}: {network_seconds[window] * 1e3:.1f} ms/iteration "
                  f"({network_seconds[window] / step:.1f}x a step)", file=sys.stderr, flush=True)
        network = network_seconds[window]
        entry: dict[str, Any] = dict(window=window, num_steps=num_steps, scenario=row[1] if row else None,
                                     network_seconds=network, iteration_over_step=network / step)
        if num_steps is not None and window <= num_steps:
            if (num_steps, window) not in overheads:
                overheads[num_steps, window] = measure(
                    dict(latent=list(latent), num_steps=num_steps, window=window, memory=args.memory),
                    iterations=4, device=device.type, batch=args.samples)
            overhead = overheads[num_steps, window]
            solver = overhead["solver_ms"] / 1e3
            entry.update(solver_seconds=solver, solver_fraction=solver / network,
                         peak_solver_mb=overhead.get("peak_cuda_mb", overhead.get("solve_rss_mb")))
            found = counts.get(row, {}) if row else {}
            for method, seconds in (("default", network + solver), ("ParaDiGMS", network)):
                if method in found:
                    iterations = found[method]["iterations"]
                    entry[method] = dict(iterations=iterations, problems=found[method]["problems"],
                                         speedup=num_steps * step / (iterations * seconds))
        entries.append(entry)
    del forward
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return dict(model=kind, config="tiny " + kind if args.tiny else spec.label, dtype=str(dtype),
                latent=list(latent), samples=args.samples, guidance_rows=rows_per_sample,
                sequential_step_seconds=step, windows=entries)


def format_table(results: list[dict[str, Any]], accuracy: float) -> str:
    """Markdown table: per model, T and window, times, solver fraction, implied speed-ups at matched accuracy."""
    lines = [f"| model | sampler | window | step ms | iteration ms | iteration / step | solver ms | solver % "
             f"| default: iterations at {accuracy:g} -> speed-up | ParaDiGMS: iterations -> speed-up (upper bound) |",
             "|" + "---|" * 10]
    for result in results:
        for w in result["windows"]:
            implied = [f"{w[m]['iterations']} -> {w[m]['speedup']:.2f}x" if m in w else "-" for m in MATCHED_METHODS]
            solver = (f"{w['solver_seconds'] * 1e3:.1f} | {100 * w['solver_fraction']:.1f}"
                      if "solver_seconds" in w else "- | -")
            row = w["scenario"] or (f"T={w['num_steps']}" if w["num_steps"] else "-")
            lines.append(f"| {result['config']} | {row} | {w['window']} "
                         f"| {result['sequential_step_seconds'] * 1e3:.1f} | {w['network_seconds'] * 1e3:.1f} "
                         f"| {w['iteration_over_step']:.1f} | {solver} | {implied[0]} | {implied[1]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, time the models, print the table, write ``gpu_timing.json``."""
    from benchmarks.solver_overhead import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda",
                        help="cuda (default) or cpu: tiny models, or full-size ones with small --windows "
                             "(a DiT-XL/2 forward of a few rows takes seconds on a CPU)")
    parser.add_argument("--tiny", action="store_true", help="tiny configurations (smoke run; numbers meaningless)")
    parser.add_argument("--models", type=comma_list(choices=tuple(MODELS)), default=list(MODELS), help=",".join(MODELS))
    parser.add_argument("--windows", type=comma_list(int, minimum=1), default=None,
                        help="windows to time (default: 1 and every window of the matched-accuracy rows)")
    parser.add_argument("--steps", type=comma_list(int, minimum=1), default=None,
                        help="T values of the speed-up rows (default: every T of the matched-accuracy rows)")
    parser.add_argument("--memory", type=int, default=2, help="TAA memory of the solver-overhead run")
    parser.add_argument("--samples", type=int, default=1, help="samples per batch")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per batch size")
    parser.add_argument("--accuracy", type=float, default=1e-3,
                        help="max difference from the sequential sample at which iterations are counted "
                             "(a threshold of the sweeps: 0.01, 0.001, 0.0001)")
    parser.add_argument("--accuracy_json", type=Path, nargs="*", default=sorted(RESULTS.glob("accuracy_*.json")),
                        help="benchmarks/accuracy.py JSON with the matched-accuracy counts (default: the committed ones)")
    parser.add_argument("--out_dir", type=Path, default=Path(os.environ.get("OUT", RESULTS)),
                        help="where gpu_timing.json goes (default: $OUT, else benchmarks/results)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_timing: --device cuda but CUDA is not available here. This benchmark needs a GPU; "
                         "for a smoke run on a CPU use --device cpu --tiny.")
    if args.samples < 1 or args.repeats < 1:
        parser.error("--samples and --repeats must be >= 1")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and args.tiny:
        torch.set_num_threads(1)  # spinning OpenMP threads slow tiny networks down
    counts = matched_iteration_counts(args.accuracy_json, args.accuracy)
    start = time.perf_counter()
    results = [time_model(kind, args, device, dtype, counts) for kind in args.models]
    report = dict(benchmark="gpu_timing", command=" ".join(["python -m benchmarks.gpu_timing", *(argv or sys.argv[1:])]),
                  machine=machine_info(device.type), dtype=str(dtype), seconds=time.perf_counter() - start,
                  accuracy=args.accuracy, iteration_counts_from=[str(p) for p in args.accuracy_json if p.is_file()],
                  smoke_run=args.tiny, results=results)
    print(format_table(results, args.accuracy))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # A full-size run on a CPU is kept apart from the GPU results that plots.py reads.
    path = args.out_dir / ("cpu_timing.json" if device.type == "cpu" and not args.tiny else "gpu_timing.json")
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path} ({report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
