"""window_size="auto" against fixed windows and the sequential sampler, in seconds.

Two parts, one run (``python -m benchmarks.planner``):

(a) **this CPU**, the trained digits DiT (``paratAA.cli.models.load_dit("digits")``), real
    wall-clock: the sequential sampler, fixed windows T, T/2, T/4, T/8 and ``window_size="auto"``
    (its one-off cost measurement reported beside it). On a loaded CPU these numbers are noisy.
(b) **emulated accelerators**: the network's real outputs, but each call is charged a GPU-like
    cost curve on a virtual clock -- flat (``--flat_ms``) up to a knee of 16, 64 or 256 rows per
    process, then linear -- for 1 and 8 emulated processes (a call's rows split evenly, no
    communication cost), on the digits DiT (``paratAA.solve``) and on a tiny SD pipeline
    (``paratAA.pipelines.sample``, the UNet's forward charged; sequential = the pipeline's own
    loop). Emulated seconds = the charged network time + the rest of the run's own work measured
    here in *CPU seconds of this process* (``time.process_time``, one torch thread: on an idle
    machine the same as wall-clock, and unlike it not inflated by other processes on a shared one);
    the planner measures its cost curve through the same virtual clock (``paratAA.cost.use_timer``),
    so nothing sleeps and the machine's load does not disturb the network part.

For every case it reports whether ``auto`` is within ``1.15x`` of the best fixed choice (the
sequential sampler included) and never above ``1.1x`` sequential, and lists the misses; the planner's
predicted seconds and iterations per window are printed beside the measured ones. Writes
``benchmarks/results/planner.json`` (``--out``) and, when matplotlib is installed, a plot beside it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.arguments import comma_list

BEST_FACTOR = 1.15  # auto within 1.15x of the best fixed choice
SEQUENTIAL_FACTOR = 1.1  # and never slower than 1.1x sequential


class EmulatedDevice:
    """Charges every network call ``flat * max(1, ceil(rows / processes) / knee)`` seconds on a virtual clock."""

    def __init__(self, flat: float, knee: int, processes: int):
        self.flat, self.knee, self.processes = flat, knee, processes
        self.now = 0.0  # virtual seconds charged so far
        self.real = 0.0  # CPU seconds the wrapped calls took (subtracted from the run's CPU seconds)

    def curve(self, rows: int) -> float:
        return self.flat * max(1.0, math.ceil(rows / self.processes) / self.knee)

    def clock(self) -> float:
        return self.now

    def charge(self, rows: int, call: Callable[[], Any]) -> Any:
        start = time.process_time()
        out = call()
        self.real += time.process_time() - start
        self.now += self.curve(rows)
        return out

    def wrap(self, eps_fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def charged(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
            return self.charge(x.shape[0], lambda: eps_fn(x, steps, samples))

        charged.cost_timer = self.clock  # paratAA.cost reads the virtual clock
        return charged


def _machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def _windows(num_steps: int) -> list[int]:
    """T, T/2, T/4, T/8 rounded up (the planner's own candidates)."""
    return sorted({max(1, math.ceil(num_steps / 2 ** k)) for k in range(4)}, reverse=True)


def _judge(row: dict[str, Any]) -> dict[str, Any]:
    """Best fixed choice (sequential included) and whether auto meets the targets."""
    fixed = {"sequential": row["sequential_seconds"], **{f"w{w}": s for w, s in row["fixed_seconds"].items()}}
    best = min(fixed, key=fixed.get)
    auto = row["auto_seconds"]
    row.update(best=best, best_seconds=fixed[best], auto_over_best=auto / fixed[best],
               auto_over_sequential=auto / row["sequential_seconds"],
               within_best=auto <= BEST_FACTOR * fixed[best],
               within_sequential=auto <= SEQUENTIAL_FACTOR * row["sequential_seconds"])
    return row


# --------------------------------------------------------------------------------------- the digits DiT
def _digits(num_steps: int, samples: int) -> tuple[Any, Any, torch.Tensor, Any]:
    from paratAA import sample_noise
    from paratAA.cli.models import load_dit
    from paratAA.pipelines.runner import class_conditioning

    runner = load_dit("digits", device="cpu")
    schedule = runner.make_schedule(num_steps)
    eps_fn = runner.eps_fn(class_conditioning([(3 * k + 3) % 10 for k in range(samples)], 3.0))
    noise = sample_noise(0, samples, num_steps, runner.latent_shape)
    return runner, schedule, noise, eps_fn


def _overhead_run(call: Callable[[], Any], device: EmulatedDevice) -> tuple[Any, float]:
    """``call()``'s result and its CPU seconds outside the network (``device`` wraps the network)."""
    device.real = 0.0
    start = time.process_time()
    result = call()
    return result, time.process_time() - start - device.real


def _emulated_seconds(run: tuple[Any, float], device: EmulatedDevice) -> float:
    """Charged network time of a solve's calls (its records' rows) plus its own CPU overhead."""
    result, overhead = run
    return sum(device.curve(r.evaluations) for r in result.records) + overhead


def digits_cpu(num_steps: int, samples: int, repeats: int) -> dict[str, Any]:
    """(a): real wall-clock on this CPU; every method run ``repeats`` times in turn, the fastest kept
    (the machine is shared: the minimum is the least disturbed). ``auto``'s first call measures the
    network's cost (reported as "measuring"); the later ones reuse it, as a process would."""
    from paratAA import cost, sequential, solve

    _, schedule, noise, eps_fn = _digits(num_steps, samples)
    solve(eps_fn, schedule, noise, window_size=num_steps)  # warm-up (first linear algebra calls, allocations)
    cost.clear_cache()
    sequential_seconds, fixed, iterations, autos = math.inf, {}, {}, []
    for _ in range(repeats):
        start = time.perf_counter()
        sequential(eps_fn, schedule, noise)
        sequential_seconds = min(sequential_seconds, time.perf_counter() - start)
        for window in _windows(num_steps):
            result = solve(eps_fn, schedule, noise, window_size=window)
            fixed[window] = min(fixed.get(window, math.inf), result.seconds)
            iterations[window] = result.iterations
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            autos.append(solve(eps_fn, schedule, noise, window_size="auto"))
    plan = autos[0].plan
    auto = min(autos, key=lambda r: r.seconds)
    return _judge({
        "case": "digits DiT, this CPU (wall-clock)", "model": "digits", "device": "cpu", "knee": None,
        "processes": 1, "num_steps": num_steps, "samples": samples,
        "sequential_seconds": sequential_seconds, "fixed_seconds": fixed, "fixed_iterations": iterations,
        "auto_seconds": auto.seconds, "auto_window": plan.window_size or "sequential",
        "auto_iterations": auto.iterations, "measure_seconds": plan.measure_seconds,
        "predicted_seconds": {w: plan.candidates.get(w) for w in fixed},
        "predicted_sequential_seconds": plan.sequential_seconds, "cost": plan.cost.describe()})


def digits_emulated(num_steps: int, samples: int, knees: list[int], processes: list[int],
                    flat: float, repeats: int) -> list[dict[str, Any]]:
    """(b) on the digits DiT: fixed windows run ``repeats`` times (their calls' rows do not depend on
    the device), charged on every curve, the least disturbed (smallest) total kept; auto runs
    ``repeats`` times per curve (the first measures the curve), the smallest kept."""
    from paratAA import cost, solve
    from paratAA.planner import expected_iterations, sequential_result

    _, schedule, noise, eps_fn = _digits(num_steps, samples)
    solve(eps_fn, schedule, noise, window_size=num_steps)  # warm-up (first linear algebra calls, allocations)
    meter = EmulatedDevice(0.0, 1, 1)  # only measures the network's CPU time
    metered = meter.wrap(eps_fn)
    fixed_runs = {w: [_overhead_run(lambda w=w: solve(metered, schedule, noise, window_size=w), meter)
                      for _ in range(repeats)] for w in _windows(num_steps)}
    seqs = [_overhead_run(lambda: sequential_result(metered, schedule, noise), meter) for _ in range(repeats)]
    rows = []
    for world in processes:
        for knee in knees:
            device = EmulatedDevice(flat, knee, world)
            charged = device.wrap(eps_fn)
            cost.clear_cache()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                autos = [_overhead_run(lambda c=charged: solve(c, schedule, noise, window_size="auto"), device)
                         for _ in range(1 + repeats)]  # the first measures the cost curve
            plan = autos[0][0].plan
            auto_run = min(autos[1:], key=lambda r: _emulated_seconds(r, device))
            auto = auto_run[0]
            rows.append(_judge({
                "case": f"digits DiT, emulated knee {knee} x {world} process{'es' if world > 1 else ''}",
                "model": "digits", "device": "emulated", "knee": knee, "processes": world, "flat_ms": 1e3 * flat,
                "num_steps": num_steps, "samples": samples,
                "sequential_seconds": min(_emulated_seconds(r, device) for r in seqs),
                "fixed_seconds": {w: min(_emulated_seconds(r, device) for r in runs) for w, runs in fixed_runs.items()},
                "fixed_iterations": {w: runs[0][0].iterations for w, runs in fixed_runs.items()},
                "predicted_iterations": {w: round(expected_iterations(num_steps, w), 1) for w in fixed_runs},
                "auto_seconds": _emulated_seconds(auto_run, device), "auto_window": plan.window_size or "sequential",
                "auto_iterations": auto.iterations, "measure_seconds": plan.measure_seconds,
                "predicted_seconds": {w: plan.candidates.get(w) for w in fixed_runs},
                "predicted_sequential_seconds": plan.sequential_seconds, "cost": plan.cost.describe()}))
    return rows


# ---------------------------------------------------------------------------------- a tiny SD pipeline
def pipeline_emulated(num_steps: int, samples: int, knees: list[int], processes: list[int],
                      flat: float, repeats: int) -> list[dict[str, Any]]:
    """(b) on a tiny SD pipeline through ``sample(pipe)``; the UNet's forward charged per call.
    ``auto`` is timed on its later calls (the first measured the cost curve: "measuring"); every
    method is run ``repeats`` times, the smallest kept."""
    from diffusers import DDIMScheduler

    from paratAA import cost
    from paratAA.cost import use_timer
    from paratAA.pipelines import sample
    from paratAA.pipelines.tiny import tiny_pipeline

    pipe = tiny_pipeline("sd")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    kwargs = dict(prompt=[f"prompt {k}" for k in range(samples)], num_inference_steps=num_steps, guidance_scale=4.0,
                  output_type="latent")
    unet_forward = pipe.unet.forward
    sample(pipe, window_size=num_steps, **kwargs, generator=torch.Generator().manual_seed(0))  # warm-up
    rows = []
    for world in processes:
        for knee in knees:
            device = EmulatedDevice(flat, knee, world)

            def charged(*args: Any, device: EmulatedDevice = device, **kw: Any) -> Any:
                batch = (args[0] if args else kw["sample"]).shape[0]
                return device.charge(batch, lambda: unet_forward(*args, **kw))

            def run(call: Callable[[], Any], device: EmulatedDevice = device) -> tuple[float, Any]:
                device.now, device.real = 0.0, 0.0
                start = time.process_time()
                out = call()
                used = time.process_time() - start
                return device.now + (used - device.real), out  # charged network + own CPU overhead

            pipe.unet.forward = charged
            try:
                sequential_seconds = min(run(lambda: pipe(**kwargs, generator=torch.Generator().manual_seed(0)))[0]
                                         for _ in range(repeats))
                fixed, iterations = {}, {}
                for window in _windows(num_steps):
                    timed = [run(lambda w=window: sample(pipe, window_size=w, max_batch_size=4096, **kwargs,
                                                         generator=torch.Generator().manual_seed(0)))
                             for _ in range(repeats)]
                    fixed[window] = min(t[0] for t in timed)
                    iterations[window] = timed[0][1].result.iterations
                cost.clear_cache()
                with use_timer(device.clock), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    auto_call = lambda: sample(pipe, window_size="auto", max_batch_size=4096, **kwargs,  # noqa: E731
                                               generator=torch.Generator().manual_seed(0))
                    _, first = run(auto_call)  # measures the cost curve (once per process and pipeline)
                    auto_solve, out = min((run(auto_call) for _ in range(repeats)), key=lambda t: t[0])  # reuse it
            finally:
                del pipe.unet.forward
            plan = first.result.plan
            rows.append(_judge({
                "case": f"tiny SD pipeline, emulated knee {knee} x {world} process{'es' if world > 1 else ''}",
                "model": "tiny-sd", "device": "emulated", "knee": knee, "processes": world, "flat_ms": 1e3 * flat,
                "num_steps": num_steps, "samples": samples, "sequential_seconds": sequential_seconds,
                "fixed_seconds": fixed, "fixed_iterations": iterations,
                "auto_seconds": auto_solve, "auto_window": plan.window_size or "sequential",
                "auto_iterations": out.result.iterations, "measure_seconds": plan.measure_seconds,
                "predicted_seconds": {w: plan.candidates.get(w) for w in fixed},
                "predicted_sequential_seconds": plan.sequential_seconds, "cost": plan.cost.describe()}))
    return rows


# ----------------------------------------------------------------------------------------------- report
def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (seconds)."""
    windows = list(rows[0]["fixed_seconds"])
    head = (["case", "sequential"] + [f"W={w}" for w in windows]
            + ["auto", "auto picks", "measuring", "auto/best", "auto/seq", "ok"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        ok = "yes" if row["within_best"] and row["within_sequential"] else "**no**"
        cells = ([row["case"], f"{row['sequential_seconds']:.3f}"]
                 + [f"{row['fixed_seconds'][w]:.3f}" for w in windows]
                 + [f"{row['auto_seconds']:.3f}", str(row["auto_window"]), f"{row['measure_seconds']:.3f}",
                    f"{row['auto_over_best']:.2f} (best {row['best']})", f"{row['auto_over_sequential']:.2f}", ok])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def prediction_table(rows: list[dict[str, Any]]) -> str:
    """Predicted against measured seconds per window (the planner's model checked)."""
    lines = ["| case | " + " | ".join(["sequential"] + [f"W={w}" for w in rows[0]["fixed_seconds"]]) + " |",
             "|" + "---|" * (2 + len(rows[0]["fixed_seconds"]))]
    for row in rows:
        cells = [f"{row['predicted_sequential_seconds']:.3f} / {row['sequential_seconds']:.3f}"]
        for w, measured in row["fixed_seconds"].items():
            predicted = row["predicted_seconds"].get(w)
            cells.append("-" if predicted is None else f"{predicted:.3f} / {measured:.3f}")
        lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> bool:
    """Per case, each fixed window's and auto's seconds over the sequential sampler's (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    windows = list(rows[0]["fixed_seconds"])
    series = [(f"W={w}", [r["fixed_seconds"][w] / r["sequential_seconds"] for r in rows]) for w in windows]
    series.append(("auto", [r["auto_seconds"] / r["sequential_seconds"] for r in rows]))
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(rows) + 1.2))
    height = 0.8 / len(series)
    for k, (label, values) in enumerate(series):
        positions = [i + (k - (len(series) - 1) / 2) * height for i in range(len(rows))]
        ax.barh(positions, values, height=height, label=label, color="black" if label == "auto" else None)
    ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{r['case']} (auto: {r['auto_window']})" for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("seconds / sequential sampler's seconds (dashed: sequential)")
    ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50, help="T (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=2, help="B (default: %(default)s)")
    parser.add_argument("--knees", type=comma_list(int, minimum=1), default="16,64,256",
                        help="emulated knees, rows per process")
    parser.add_argument("--processes", type=comma_list(int, minimum=1), default="1,8", help="emulated process counts")
    parser.add_argument("--flat_ms", type=float, default=20.0, help="emulated call time below the knee")
    parser.add_argument("--parts", type=comma_list(choices=("cpu", "digits", "pipeline")), default="cpu,digits,pipeline",
                        help="which parts to run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per method and case, the fastest kept")
    parser.add_argument("--out", default="benchmarks/results/planner.json")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    knees, processes, parts = args.knees, args.processes, args.parts
    flat = args.flat_ms / 1e3
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if "cpu" in parts:
        rows.append(digits_cpu(args.steps, args.samples, args.repeats))
    if "digits" in parts:
        rows.extend(digits_emulated(args.steps, args.samples, knees, processes, flat, args.repeats))
    if "pipeline" in parts:
        rows.extend(pipeline_emulated(args.steps, args.samples, knees, processes, flat, args.repeats))
    seconds = time.perf_counter() - start
    misses = [row["case"] for row in rows if not (row["within_best"] and row["within_sequential"])]
    print(f"Seconds per method (T={args.steps}, B={args.samples}; emulated rows: charged network + the run's own "
          f"CPU seconds; auto excludes its one-off measuring, listed apart)\n")
    print(table(rows))
    print("\nPlanner's predicted / measured seconds\n")
    print(prediction_table(rows))
    print(f"\nauto within {BEST_FACTOR}x of the best fixed choice and within {SEQUENTIAL_FACTOR}x of sequential: "
          f"{len(rows) - len(misses)} of {len(rows)} cases" + (f"; misses: {', '.join(misses)}" if misses else ""))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.planner " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"benchmark": "planner", "command": command.strip(), "machine": _machine(), "seconds": seconds,
              "targets": {"auto_over_best": BEST_FACTOR, "auto_over_sequential": SEQUENTIAL_FACTOR},
              "settings": vars(args), "misses": misses, "rows": rows}
    out.write_text(json.dumps(report, indent=1, default=str) + "\n")
    if plot(rows, out.with_suffix(".png")):
        print(f"plot: {out.with_suffix('.png')}")
    print(f"wrote {out} ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
