"""``sample(pipe)`` on the tiny pipelines loaded in float32, float16 and bfloat16: iterations and distances.

What a user of a pipeline sees: for every tiny pipeline family asked for (``--kinds``) and dtype, one
batch of ``--samples`` prompts (random prompt embeddings of ``tiny_embeddings``; DiT: class labels
0, 1, ...) with the pipeline's own scheduler and ``--steps`` steps, sampled

- by ``pipe(...)`` in float32: the reference latents,
- by ``pipe(...)`` in the dtype: its distance from the reference is the *bar* (half precision's own
  error; 0 in float32),
- by ``paratAA.pipelines.sample(pipe, window_size=steps)`` in the dtype (the whole trajectory in
  parallel; the planner's choice of window is not what is measured here): batch and per-sample
  iterations (median / p90 / max), each sample's largest difference from the reference, stop reasons.

Distances are taken on the latents (``output_type="latent"``; DiT, which has no latent output, on its
decoded images). The network's weights are cast with ``pipe.to(dtype)``, as ``torch_dtype=`` would load
them. Prints a Markdown table and writes JSON.

Usage::

    .venv/bin/python -m benchmarks.pipeline_dtypes                       # sdxl, sd3, flux, dit; B = 8, 28 steps
    .venv/bin/python -m benchmarks.pipeline_dtypes --kinds sdxl --samples 2 --steps 6 --out /tmp/p.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.accuracy import per_sample_distances, spread
from benchmarks.arguments import comma_list

__all__ = ["KINDS", "DTYPES", "main", "measure_kind"]

KINDS = ("sdxl", "sd3", "flux", "dit")  # tiny families with a prompt-embedding (or class-label) call
DTYPES = ("float32", "float16", "bfloat16")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "pipeline_dtypes.json"


def _call_arguments(kind: str, samples: int, steps: int, dtype: torch.dtype) -> dict[str, Any]:
    """One batch's ``pipe(...)`` arguments, the same initial noise every call (a fresh seeded generator)."""
    from paratAA.pipelines.tiny import tiny_embeddings

    arguments: dict[str, Any] = dict(num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
    if kind == "dit":
        arguments["class_labels"] = [k % 10 for k in range(samples)]
        arguments["output_type"] = "np"  # DiTPipeline has no latent output: its decoded images
    else:
        arguments.update({name: value.to(dtype) for name, value in tiny_embeddings(kind, samples).items()})
        arguments["output_type"] = "latent"
    return arguments


def _images(output: Any) -> torch.Tensor:
    return torch.as_tensor(output.images).double()


def measure_kind(kind: str, samples: int, steps: int, dtypes: tuple[str, ...]) -> list[dict[str, Any]]:
    """The rows of one pipeline family, one per dtype (module docstring)."""
    from paratAA.pipelines import sample
    from paratAA.pipelines.tiny import tiny_pipeline

    rows, reference = [], None
    for name in ("float32",) + tuple(d for d in dtypes if d != "float32"):
        dtype = getattr(torch, name)
        pipe = tiny_pipeline(kind).to(dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        start = time.perf_counter()
        own = _images(pipe(**_call_arguments(kind, samples, steps, dtype)))
        pipe_seconds = time.perf_counter() - start
        reference = own if reference is None else reference
        if name not in dtypes:  # float32 only for the reference
            continue
        out = sample(pipe, window_size=steps, **_call_arguments(kind, samples, steps, dtype))
        result = out.result
        distances = per_sample_distances(_images(out), reference)
        bars = per_sample_distances(own, reference)
        rows.append(dict(kind=kind, dtype=name, samples=samples, steps=steps, iterations=result.iterations,
                         per_sample_iterations=result.per_sample_iterations,
                         iterations_spread=spread(result.per_sample_iterations),
                         per_sample_distance=distances, distance_spread=spread(distances),
                         bar=max(bars), per_sample_bar=bars, stop_reasons=sorted(set(result.stop_reasons)),
                         converged=result.converged, seconds=result.seconds, pipe_seconds=pipe_seconds))
    by_dtype = {r["dtype"]: r for r in rows}
    if "float32" in by_dtype:
        for row in rows:
            row["iterations_over_float32"] = row["iterations"] / by_dtype["float32"]["iterations"]
    for row in rows:
        row["distance_over_bar"] = row["distance_spread"]["max"] / row["bar"] if row["bar"] > 0 else None
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per (family, dtype)."""
    lines = ["| pipeline | dtype | B | steps | batch iters | / float32 | per-sample iters median / p90 / max "
             "| distance median / max | bar (pipe() in dtype) | max / bar | stop reasons |",
             "|" + "---|" * 11]
    for r in rows:
        it, d = r["iterations_spread"], r["distance_spread"]
        ratio = r.get("iterations_over_float32")
        over_bar = r["distance_over_bar"]
        lines.append(f"| tiny-{r['kind']} | {r['dtype']} | {r['samples']} | {r['steps']} | {r['iterations']} "
                     f"| {'-' if ratio is None else f'{ratio:.2f}'} | {it['median']:g} / {it['p90']:g} / {it['max']:g} "
                     f"| {d['median']:.2e} / {d['max']:.2e} | {r['bar']:.2e} "
                     f"| {'-' if over_bar is None else f'{over_bar:.2f}'} | {', '.join(r['stop_reasons'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, measure every family, print the table, write JSON."""
    from benchmarks.solver_overhead import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", type=comma_list(choices=KINDS), default=KINDS, help="tiny pipeline families")
    parser.add_argument("--dtypes", type=comma_list(choices=DTYPES), default=DTYPES, help="dtypes to measure")
    parser.add_argument("--samples", type=int, default=8, help="batch size B (>= 1)")
    parser.add_argument("--steps", type=int, default=28, help="inference steps (>= 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    if args.steps < 2:
        parser.error("--steps must be >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = [row for kind in args.kinds for row in measure_kind(kind, args.samples, args.steps, args.dtypes)]
    print(format_table(rows))
    report = dict(benchmark="pipeline_dtypes", command="python -m benchmarks.pipeline_dtypes " + " ".join(
        sys.argv[1:] if argv is None else argv), machine=machine_info("cpu"), seconds=time.perf_counter() - start,
        rows=rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
