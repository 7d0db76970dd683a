"""Figures from the benchmark JSON: iterations vs T, residual vs iteration, speed-up vs window, a converging strip.

Needs matplotlib (the ``bench`` extra). Reads ``compare.json`` (and ``gpu_timing.json`` if present)
and writes small PNGs next to them:

- ``iterations_vs_T.png``: per method, parallel iterations against T (problem ``gmm``, window = T).
- ``residual_vs_iteration.png``: largest first-order residual per iteration (gmm, DDIM-100, window 100).
- ``speedup_vs_window.png``: implied GPU speed-up against window (``gpu_timing.json``); without it,
  the iteration speed-up ``T / iterations`` against window from ``compare.json``.
- ``strip.png``: ParaTAA's current x0 estimate after each iteration on the GMM problem, a sample's
  first three latent channels as RGB (re-solved here: a few seconds), the sequential sample last.

Usage::

    .venv/bin/python -m benchmarks.plots [--results benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"
METHOD_ORDER = ("FP", "FP+", "ParaTAA m2 K20", "ParaTAA m2 K100", "ParaTAA m3 K100", "ParaDiGMS tol=0.1",
                "ParaDiGMS tol=0.001")


def _pyplot():
    try:
        import matplotlib
    except ImportError as error:  # the optional extra
        raise SystemExit("benchmarks.plots needs matplotlib: pip install -e '.[bench]' -c constraints.txt") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cycler import cycler

    # More methods than a 10-colour cycle: vary colour and line style together so no two curves match.
    plt.rcParams["axes.prop_cycle"] = (cycler(linestyle=["-", "--"]) * cycler(color=plt.get_cmap("tab10").colors))

    return plt


def iterations_vs_steps(rows: list[dict[str, Any]], path: Path) -> None:
    """Iterations against T per method and sampler (gmm rows with window = T)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
    for ax, sampler in zip(axes, ("ddim", "ddpm")):
        picked = [r for r in rows if r["problem"] == "gmm" and r["sampler"] == sampler]
        for method in sorted({r["method"] for r in picked}, key=lambda m: (m not in METHOD_ORDER, m)):
            best: dict[int, int] = {}
            for r in picked:
                if r["method"] == method:  # the largest window run of each T
                    if r["num_steps"] not in best or r["window"] >= best[r["num_steps"]][1]:
                        best[r["num_steps"]] = (r["iterations"], r["window"])
            steps = sorted(best)
            ax.plot(steps, [best[t][0] for t in steps], marker="o", label=method)
        ax.set(xscale="log", yscale="log", xlabel="T (steps)", title=f"gmm, {sampler.upper()}, largest window")
    axes[0].set_ylabel("parallel iterations")
    axes[1].legend(fontsize=6)
    _save(fig, path)


def residual_vs_iteration(rows: list[dict[str, Any]], path: Path) -> None:
    """Largest residual per iteration for each method on one row."""
    plt = _pyplot()
    candidates = [r for r in rows if r["problem"] == "gmm" and r["residuals"]]
    target = max(candidates, key=lambda r: (r["sampler"] == "ddim" and r["num_steps"] == 100, r["window"]))
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for r in candidates:
        if (r["sampler"], r["num_steps"], r["window"]) == (target["sampler"], target["num_steps"], target["window"]):
            ax.semilogy(range(1, len(r["residuals"]) + 1), [max(v, 1e-16) for v in r["residuals"]],
                        marker=".", label=r["method"])
    ax.set(xlabel="iteration", ylabel="max first-order RMS residual",
           title=f"gmm {target['sampler'].upper()}-{target['num_steps']}, window {target['window']}")
    ax.legend(fontsize=6)
    _save(fig, path)


def speedup_vs_window(rows: list[dict[str, Any]], gpu: dict[str, Any] | None, path: Path) -> None:
    """Implied GPU speed-up against window (or T / iterations without GPU timings)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    if gpu:
        for result in gpu["results"]:
            for scenario in sorted({w["scenario"] for w in result["windows"] if "default" in w}):
                points = [(w["window"], w["default"]["speedup"]) for w in result["windows"]
                          if w["scenario"] == scenario and "default" in w]
                ax.plot(*zip(*sorted(points)), marker="o", label=f"{result['config']} {scenario}")
        ax.set(ylabel=f"implied speed-up at max diff {gpu['accuracy']:g} (1 GPU)")
    else:
        for key in sorted({(r["sampler"], r["num_steps"]) for r in rows if r["problem"] == "gmm"}):
            best = {}
            for r in rows:
                if r["problem"] == "gmm" and (r["sampler"], r["num_steps"]) == key and r["method"].startswith("ParaTAA"):
                    best[r["window"]] = min(best.get(r["window"], 10**9), r["iterations"])
            ax.plot(sorted(best), [key[1] / best[w] for w in sorted(best)], marker="o", label=f"{key[0]}-{key[1]}")
        ax.set(ylabel="T / ParaTAA iterations")
    ax.axhline(1.0, color="grey", lw=0.5)
    ax.set(xscale="log", xlabel="window size")
    ax.legend(fontsize=6)
    _save(fig, path)


def converging_strip(path: Path, num_steps: int = 100, max_frames: int = 10) -> None:
    """ParaTAA's x0 estimate per iteration on the GMM problem (channels 0-2 as RGB), sequential last."""
    from diffusers import DDIMScheduler

    from paratAA import Schedule, sample_noise, sequential, solve
    from paratAA.analytic import gaussian_mixture_problem

    plt = _pyplot()
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(num_steps)
    schedule = Schedule.from_scheduler(scheduler, eta=0.0)
    eps_fn = gaussian_mixture_problem((4, 32, 32), num_components=8, seed=0).eps_fn(schedule)
    noise = sample_noise(0, 1, num_steps, (4, 32, 32))
    frames: list[torch.Tensor] = []
    solve(eps_fn, schedule, noise, window_size=num_steps, order=num_steps, memory_size=2,
          callback=lambda record: frames.append(record.x0[0].clone()))
    frames = frames[:max_frames - 1] + [sequential(eps_fn, schedule, noise)[0, 0]]
    low, high = frames[-1][:3].min(), frames[-1][:3].max()
    fig, axes = plt.subplots(1, len(frames), figsize=(1.1 * len(frames), 1.35))
    for k, (ax, frame) in enumerate(zip(axes, frames)):
        image = ((frame[:3] - low) / (high - low)).clamp(0, 1).permute(1, 2, 0).numpy()
        ax.imshow(image, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title("sequential" if k == len(frames) - 1 else f"it {k + 1}", fontsize=6)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    """Draw every figure from the JSON in ``--results``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder with compare.json (and gpu_timing.json)")
    parser.add_argument("--compare_json", type=Path, default=None, help="default: <results>/compare.json")
    args = parser.parse_args(argv)
    compare_json = args.compare_json or args.results / "compare.json"
    if not compare_json.is_file():
        raise SystemExit(f"--compare_json: {compare_json} not found; run python -m benchmarks.compare first")
    rows = json.loads(compare_json.read_text())["rows"]
    gpu_json = args.results / "gpu_timing.json"
    gpu = json.loads(gpu_json.read_text()) if gpu_json.is_file() else None
    if gpu and gpu.get("smoke_run"):
        gpu = None  # tiny-model timings say nothing about speed-ups
    iterations_vs_steps(rows, args.results / "iterations_vs_T.png")
    residual_vs_iteration(rows, args.results / "residual_vs_iteration.png")
    speedup_vs_window(rows, gpu, args.results / "speedup_vs_window.png")
    converging_strip(args.results / "strip.png")


if __name__ == "__main__":
    main()
