"""Matched-accuracy comparison: every method's (iterations, distance from the sequential sample) pairs.

A method that stops earlier but further from the sequential sample has not won. For each problem,
sampler and window this benchmark sweeps each method's tolerance, records per run the parallel
iterations (the largest over the batch's samples), network evaluations and the largest absolute
difference of the final samples from the sequential sampler's (same noise), and reports, per
method, the **fewest iterations that reach a max difference <= 1e-2, 1e-3 and 1e-4**.

Methods (``paratAA.solve`` with ``order`` K, ``memory_size`` m, ``map_form``; tol1 = tol2 = tol):

- ``FP`` (K 1, m 1), ``FP+`` (K = window, m 1), ``ParaTAA paper m2`` / ``m3`` (affine form, the
  paper's equations, K = window), ``ParaTAA inc m2`` (increment form, new steps copied as in the
  paper), ``ParaTAA inc m2 denoised`` (the same with ``init="denoised"``), ``default`` (``solve``
  with only ``window_size``, ``tol1``, ``tol2``: the library's recommended configuration,
  ``paratAA.RECOMMENDED``);
- ``ParaDiGMS`` (``paratAA.paradigms``) and ``ParaSolver`` (``paratAA.parasolver``), sweeping their
  noise-relative ``tolerance``.

A sweep runs from loose to tight and stops once a run is within ``3e-5`` of the sequential sample
or needs T iterations (tighter tolerances then only cost iterations). Problems come from ``benchmarks.compare``:
``digits`` (the trained pixel-space DiT of ``models/digits``, guidance ``--cfg_scales``), ``gmm``
(the analytic Gaussian mixture, 4x32x32), the tiny random models and real models by path.

Usage::

    .venv/bin/python -m benchmarks.accuracy --quick                        # a few minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.accuracy                                # the full grid (digits, gmm)
    .venv/bin/python -m benchmarks.accuracy --problems digits --scenarios ddim-50 --windows T
    .venv/bin/python -m benchmarks.accuracy --problems gmm --scenarios fm-28,fm-50 --windows T \
        --out benchmarks/results/accuracy_flow.json                        # flow matching (SD3's sampler)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.compare import PROBLEMS, latent_metrics, load_problem

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "accuracy.json"
THRESHOLDS = (1e-2, 1e-3, 1e-4)
STOP_BELOW = 3e-5  # a sweep stops once a run is this close to the sequential sample (or takes T iterations)
# Tolerances swept, loose to tight: tol1 = tol2 for paratAA.solve; the noise-relative tolerance of
# ParaDiGMS and ParaSolver (their bounds are tolerance^2 * sigma^2 on a mean squared change).
SOLVE_TOLERANCES = (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6)
STRIDE_TOLERANCES = (0.5, 0.2, 0.1, 0.05, 0.02, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5)
# Scenarios: name -> (sampler, T, eta). "ddim" builds a DDIMScheduler (eta may be 1), "ddpm" a DDPMScheduler,
# "flow" SD3's FlowMatchEulerDiscreteScheduler (shift 3; the gmm problem only: its exact rectified-flow velocity),
# "dpm" DPMSolverMultistepScheduler (DPM-Solver++ 2M, multistep) over the problem's configuration.
SCENARIOS = {"ddim-25": ("ddim", 25, 0.0), "ddim-50": ("ddim", 50, 0.0), "ddim-100": ("ddim", 100, 0.0),
             "eta1-100": ("ddim", 100, 1.0), "ddpm-1000": ("ddpm", 1000, 1.0),
             "fm-28": ("flow", 28, 0.0), "fm-50": ("flow", 50, 0.0), "dpm-20": ("dpm", 20, 0.0),
             "dpm-25": ("dpm", 25, 0.0)}
FLOW_PROBLEMS = ("gmm",)
FULL_SCENARIOS = ("ddim-25", "ddim-50", "ddim-100", "eta1-100")
QUICK_SCENARIOS = ("ddim-25", "eta1-100")


@dataclass(frozen=True)
class Method:
    """A sampler configuration and how its tolerance is swept."""

    name: str
    run: Callable[..., Any]  # (eps_fn, schedule, noise, window, tol) -> SolveResult
    tolerances: tuple[float, ...]


def _solve_method(name: str, **options: Any) -> Method:
    def run(eps_fn, schedule, noise, window, tol):
        from paratAA import solve

        fixed = {k: (window if v == "W" else v) for k, v in options.items()}
        return solve(eps_fn, schedule, noise, window_size=window, tol1=tol, tol2=tol, **fixed)

    return Method(name, run, SOLVE_TOLERANCES)


def _stride_method(name: str, module: str, function: str) -> Method:
    def run(eps_fn, schedule, noise, window, tol):
        import importlib

        solver = getattr(importlib.import_module(module), function)
        return solver(eps_fn, schedule, noise, window_size=window, tolerance=tol)

    return Method(name, run, STRIDE_TOLERANCES)


METHODS = {
    "FP": _solve_method("FP", order=1, memory_size=1, map_form="affine", init="copy"),
    "FP+": _solve_method("FP+", order="W", memory_size=1, map_form="affine", init="copy"),
    "ParaTAA paper m2": _solve_method("ParaTAA paper m2", order="W", memory_size=2, map_form="affine", init="copy"),
    "ParaTAA paper m3": _solve_method("ParaTAA paper m3", order="W", memory_size=3, map_form="affine",
                                      init="copy"),
    "ParaTAA inc m2": _solve_method("ParaTAA inc m2", order="W", memory_size=2, map_form="increment", init="copy"),
    "default": _solve_method("default"),
    "ParaTAA inc m2 denoised": _solve_method("ParaTAA inc m2 denoised", order="W", memory_size=2,
                                             map_form="increment", init="denoised"),
    "ParaDiGMS": _stride_method("ParaDiGMS", "paratAA.paradigms", "solve_paradigms"),
    "ParaSolver": _stride_method("ParaSolver", "paratAA.parasolver", "solve_parasolver"),
}


def sweep(method: Method, eps_fn: Callable, schedule: Any, noise: torch.Tensor, window: int,
          reference: torch.Tensor) -> list[dict[str, Any]]:
    """Run ``method`` at each of its tolerances (loose to tight) until within STOP_BELOW of ``reference``."""
    runs = []
    for tol in method.tolerances:
        start = time.perf_counter()
        result = method.run(eps_fn, schedule, noise, window, tol)
        metrics = latent_metrics(result.samples, reference)
        runs.append(dict(tol=tol, iterations=result.iterations, evaluations=result.evaluations,
                         per_sample_iterations=result.per_sample_iterations, converged=result.converged,
                         seconds=time.perf_counter() - start, **metrics))
        if metrics["max_abs_diff"] <= STOP_BELOW or result.iterations >= schedule.num_steps:
            break
    return runs


def fewest_iterations(runs: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """The run with the fewest iterations whose max difference is <= threshold (ties: the loosest tol)."""
    good = [r for r in runs if r["max_abs_diff"] <= threshold]
    return min(good, key=lambda r: (r["iterations"], -r["tol"])) if good else None


def monotone_violations(runs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Pairs (tol, next tighter tol) where the tighter tolerance ended further from the sequential sample."""
    return [(a["tol"], b["tol"]) for a, b in zip(runs, runs[1:]) if b["max_abs_diff"] > a["max_abs_diff"] * 1.0001]


def run_group(problem: Any, scenario: str, window: int | str, methods: list[str], args: argparse.Namespace,
              cache: dict) -> dict[str, Any]:
    """Every method's sweep on one (problem, scenario, window); the sequential reference is cached."""
    from paratAA import Schedule, sample_noise, sequential

    sampler, num_steps, eta = SCENARIOS[scenario]
    size = num_steps if window == "T" else (num_steps // 4 if window == "T/4" else int(window))
    key = (problem.name, scenario)
    if key not in cache:
        schedule = Schedule.from_scheduler(problem.make_scheduler(sampler, num_steps), eta=eta)
        eps_fn = problem.make_eps_fn(schedule)
        noise = sample_noise(args.seed, args.samples, num_steps, problem.latent_shape, device=args.device)
        cache[key] = (schedule, eps_fn, noise, sequential(eps_fn, schedule, noise)[:, 0])
    schedule, eps_fn, noise, reference = cache[key]
    group = dict(problem=problem.name, scenario=scenario, sampler=sampler, num_steps=num_steps, eta=eta,
                 window=size, window_label=str(window), samples=args.samples, methods={})
    for name in methods:
        runs = sweep(METHODS[name], eps_fn, schedule, noise, size, reference)
        best = {f"{t:g}": fewest_iterations(runs, t) for t in THRESHOLDS}
        group["methods"][name] = dict(runs=runs, best=best, monotone_violations=monotone_violations(runs))
        summary = ", ".join(f"<= {t}: {b['iterations'] if b else '-'}" for t, b in best.items())
        print(f"  {problem.name} {scenario} W={size} {name}: {len(runs)} runs; fewest iterations {summary}",
              file=sys.stderr, flush=True)
    return group


def format_tables(groups: list[dict[str, Any]]) -> str:
    """Markdown: per group, per method, the fewest iterations (and the tol) reaching each threshold."""
    out = []
    for g in groups:
        out.append(f"\n**{g['problem']}, {g['scenario']} (T = {g['num_steps']}, eta = {g['eta']:g}), "
                   f"window {g['window']}** (B = {g['samples']})\n")
        out.append("| method | " + " | ".join(f"<= {t:g}: iters (tol)" for t in THRESHOLDS)
                   + " | x ParaDiGMS at 1e-3 |")
        out.append("|---|" + "---|" * (len(THRESHOLDS) + 1))
        anchor = g["methods"].get("ParaDiGMS", {}).get("best", {}).get("0.001")
        for name, m in g["methods"].items():
            cells = [f"{b['iterations']} ({b['tol']:g})" if b else "not reached" for b in m["best"].values()]
            mine = m["best"].get("0.001")
            ratio = f"{mine['iterations'] / anchor['iterations']:.2f}" if mine and anchor else "-"
            out.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(out)


def merge_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups of several runs merged by (problem, scenario, window): their methods side by side."""
    merged: dict[tuple, dict[str, Any]] = {}
    for g in groups:
        key = (g["problem"], g["scenario"], g["window"])
        if key in merged:
            merged[key]["methods"].update(g["methods"])
        else:
            merged[key] = {**g, "methods": dict(g["methods"])}
    return list(merged.values())


def headline_table(groups: list[dict[str, Any]], threshold: float = 1e-3) -> str:
    """Markdown: one row per group, one column per method: the fewest iterations reaching ``threshold``.

    The best exact method of a row is in bold; ``ratio`` is the default's count over ParaDiGMS's.
    """
    methods = list(dict.fromkeys(name for g in groups for name in g["methods"]))
    key = f"{threshold:g}"
    out = [f"| problem | sampler | W | " + " | ".join(methods) + " | default / ParaDiGMS |",
           "|---|---|---|" + "---|" * (len(methods) + 1)]
    for g in groups:
        counts = {name: (m["best"].get(key) or {}).get("iterations") for name, m in g["methods"].items()}
        best = min((c for c in counts.values() if c is not None), default=None)
        cells = [("-" if counts.get(name) is None else
                  (f"**{counts[name]}**" if counts[name] == best else str(counts[name]))) for name in methods]
        ratio = (f"{counts['default'] / counts['ParaDiGMS']:.2f}"
                 if counts.get("default") and counts.get("ParaDiGMS") else "-")
        out.append(f"| {g['problem']} | {g['scenario']} | {g['window']} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(out)


def tolerance_meaning(groups: list[dict[str, Any]]) -> str:
    """Markdown: per method and tolerance, the median and the largest final max difference over all groups."""
    table: dict[str, dict[float, list[float]]] = {}
    for g in groups:
        for name, m in g["methods"].items():
            for run in m["runs"]:
                table.setdefault(name, {}).setdefault(run["tol"], []).append(run["max_abs_diff"])
    out = ["| method | tolerance: median / largest max diff from the sequential sample over all rows |", "|---|---|"]
    for name, by_tol in table.items():
        cells = []
        for tol in sorted(by_tol, reverse=True):
            diffs = sorted(by_tol[tol])
            cells.append(f"{tol:g}: {diffs[len(diffs) // 2]:.1e} / {diffs[-1]:.1e}")
        out.append(f"| {name} | " + "; ".join(cells) + " |")
    return "\n".join(out)


def plot(groups: list[dict[str, Any]], path: Path) -> None:
    """Iterations against max difference from the sequential sample, one panel per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(groups))
    rows = (len(groups) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    styles = ["o-", "s--", "^-.", "v:", "D-", "x--", "P-.", "*:"]
    for ax, g in zip(axes.flat, groups):
        for (name, m), style in zip(g["methods"].items(), styles):
            runs = sorted(m["runs"], key=lambda r: r["max_abs_diff"])
            ax.plot([max(r["max_abs_diff"], 1e-7) for r in runs], [r["iterations"] for r in runs], style,
                    label=name, markersize=3)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_title(f"{g['problem']} {g['scenario']} W={g['window']}", fontsize=9)
        ax.set_xlabel("max |x0 - sequential x0|", fontsize=8)
        ax.set_ylabel("parallel iterations", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_if_possible(groups: list[dict[str, Any]], path: Path) -> None:
    try:
        plot(groups, path)
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[bench]')", file=sys.stderr)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, sweep every group, print the tables, write JSON (and a plot)."""
    from benchmarks.solver_overhead import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--problems", type=lambda s: s.split(","), default=["digits", "gmm"],
                        help=f"comma-separated, from {', '.join(PROBLEMS)}")
    parser.add_argument("--scenarios", type=lambda s: s.split(","), default=None,
                        help=f"comma-separated, from {', '.join(SCENARIOS)} (default: {', '.join(FULL_SCENARIOS)})")
    parser.add_argument("--windows", type=lambda s: s.split(","), default=["T", "T/4"],
                        help="window sizes: T, T/4 or numbers (default: T,T/4)")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--cfg_scales", type=lambda s: [float(v) for v in s.split(",")], default=[1.0, 3.0],
                        help="guidance scales of the digits / DiT / SD problems (default: 1,3)")
    parser.add_argument("--quick", action="store_true",
                        help=f"scenarios {', '.join(QUICK_SCENARIOS)}, window T, guidance 3 only")
    parser.add_argument("--samples", type=int, default=4, help="B, samples solved together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    parser.add_argument("--dit_path", default=None)
    parser.add_argument("--sd_path", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path (a .png plot beside it)")
    parser.add_argument("--report", type=Path, nargs="+", default=None,
                        help="run nothing: print the tables of these JSON files together and plot them to --out's .png")
    args = parser.parse_args(argv)
    if args.report:
        groups = merge_groups([g for path in args.report for g in json.loads(path.read_text())["groups"]])
        print(headline_table(groups), "\n", tolerance_meaning(groups), format_tables(groups), sep="\n")
        _plot_if_possible(groups, args.out.with_suffix(".png"))
        return {"groups": groups}
    scenarios = args.scenarios or list(QUICK_SCENARIOS if args.quick else FULL_SCENARIOS)
    windows = ["T"] if args.quick else args.windows
    cfg_scales = [3.0] if args.quick else args.cfg_scales
    for flag, values, known in (("--problems", args.problems, PROBLEMS), ("--scenarios", scenarios, SCENARIOS),
                                ("--methods", args.methods, METHODS)):
        unknown = [v for v in values if v not in known]
        if unknown:
            parser.error(f"{flag}: unknown {unknown}; choose from {', '.join(known)}")
    flow = [s for s in scenarios if SCENARIOS[s][0] == "flow"]
    if flow and any(p not in FLOW_PROBLEMS for p in args.problems):
        parser.error(f"--scenarios {','.join(flow)}: flow matching runs on --problems {','.join(FLOW_PROBLEMS)} only")
    for w in windows:
        if w not in ("T", "T/4") and not (w.isdigit() and int(w) >= 1):
            parser.error(f"--windows: {w!r} is not T, T/4 or a positive integer")
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)

    start = time.perf_counter()
    groups = []
    for name in args.problems:
        guided = name not in ("gmm",)
        for cfg_scale in (cfg_scales if guided else [None]):
            problem_args = argparse.Namespace(**{**vars(args), "cfg_scale": cfg_scale or 1.0})
            problem = load_problem(name, problem_args)
            if guided:
                problem.name = f"{name} cfg {cfg_scale:g}"
            cache: dict = {}
            for scenario in scenarios:
                for window in windows:
                    groups.append(run_group(problem, scenario, window, args.methods, args, cache))
    report = dict(benchmark="accuracy",
                  command=" ".join(["python -m benchmarks.accuracy", *(argv if argv is not None else sys.argv[1:])]),
                  machine=machine_info("cuda" if args.device.startswith("cuda") else "cpu"),
                  seconds=time.perf_counter() - start, thresholds=list(THRESHOLDS),
                  settings={k: v for k, v in vars(args).items() if k != "out"}, groups=groups)
    print(headline_table(groups), "\n", tolerance_meaning(groups), format_tables(groups), sep="\n")
    print(f"\ntotal {report['seconds']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    _plot_if_possible(groups, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
