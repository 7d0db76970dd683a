"""Side by side on one problem, noise and tolerance: sequential, FP, FP+, ParaTAA, ParaDiGMS (and diffusers' own).

Rows: a problem (``gmm``: the analytic Gaussian mixture, latent 4x32x32; ``digits``: the trained
pixel-space DiT of ``models/digits``; ``tiny-dit`` / ``tiny-sd`` / ``tiny-sdxl`` / ``tiny-sd3``: the tiny
random-weight models; ``dit`` / ``sd`` with ``--dit_path`` / ``--sd_path``), a sampler
(DDIM eta 0 or DDPM) with T steps, and a window size. Columns per method: parallel iterations,
network evaluations (rows; classifier-free guidance's doubled batch counts once), wall-clock and
its ratio to the sequential sampler, the largest absolute latent difference from the sequential
sample and the latent PSNR against it (``10 log10(range^2 / MSE)``, range = max - min of the
sequential latents). Every method solves the same B samples from ``paratAA.sample_noise(seed, ...)``.

This is the single-tolerance side-by-side: one run per method, with its residual trace, and
diffusers' own ParaDiGMS pipeline beside ours. Matched accuracy (each method's tolerance swept, the
fewest iterations reaching a stated distance) is ``benchmarks.accuracy``; both take their problems
from ``benchmarks.problems`` and their methods from ``benchmarks.methods``.

Methods (the registry's, ``order`` K, ``memory`` m of ``paratAA.solve``; tolerances ``--tol`` for tol1
and tol2):

- ``sequential``: ``paratAA.sequential`` (T network calls of batch B).
- ``FP``: K = 1, m = 1.  ``FP+``: K = window, m = 1.  ``ParaTAA m{m} K{K}``: m in {2, 3}, a few K; the
  paper's affine equations with new steps copied.
- ``ParaTAA-inc ...``: the same with the order-K equations in increment form (``map_form="increment"``),
  also at a tenth and a hundredth of the tolerance (``tol/10``, ``tol/100``).
- ``ParaDiGMS tol={t}``: ``paratAA.baselines.paradigms.solve_paradigms`` at diffusers' default tolerance 0.1
  and at ``--tol``; for SD-shaped problems also ``diffusers ParaDiGMS tol={t}``, diffusers'
  ``StableDiffusionParadigmsPipeline`` itself (one sample at a time, as the noise contract needs).
  For those problems the schedulers are built with ``set_alpha_to_one=True`` (see
  ``benchmarks.diffusers_paradigms``), so that diffusers' pipeline samples the same sampler.

The summary checks issue 4's targets per row (see ``targets``). Wall-clock here is a CPU's: a
parallel iteration costs about ``window`` times a sequential step, so ratios above 1 are expected
without parallel hardware; ``benchmarks/gpu_timing.py`` measures what a GPU gains.

Usage::

    .venv/bin/python -m benchmarks.compare --quick                 # < 10 minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.compare --problems gmm          # full GMM grid
    .venv/bin/python -m benchmarks.compare --problems sd --sd_path stable-diffusion-v1-5/stable-diffusion-v1-5 --device cuda
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

from benchmarks.arguments import comma_list
from benchmarks.methods import METHODS, Method, latent_metrics, run_outcome
from benchmarks.problems import PROBLEMS, Problem, load_problem

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "compare.json"

# (sampler, T) scenarios of issue 4: DDIM 25 / 50 / 100, DDPM (eta 1) 100 / 1000.
FULL_SCENARIOS = [("ddim", 25), ("ddim", 50), ("ddim", 100), ("ddpm", 100), ("ddpm", 1000)]
QUICK_PLAN = {
    "gmm": [("ddim", 25, [10, 25]), ("ddim", 50, [50]), ("ddim", 100, [10, 100]), ("ddpm", 100, [100]),
            ("ddpm", 1000, [100])],
    "tiny-dit": [("ddim", 25, [25]), ("ddpm", 100, [25])],
    "tiny-sd": [("ddim", 25, [8, 25]), ("ddpm", 100, [25])],
}
DIFFUSERS_DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class GridEntry:
    """One column of a row: a registered method (``benchmarks.methods``) at one tolerance, or, with
    ``method`` None, diffusers' own ``StableDiffusionParadigmsPipeline`` at that tolerance."""

    name: str
    method: Method | None
    tol: float


def method_grid(window: int, tol: float, with_diffusers: bool) -> list[GridEntry]:
    """The methods of one row, from the registry: the paper's FP, FP+ and ParaTAA at a few orders K,
    the increment form, ParaDiGMS (and diffusers' own), each at one tolerance."""
    grid = [GridEntry("FP", METHODS["FP"], tol), GridEntry("FP+", METHODS["FP+"], tol)]
    for memory in (2, 3):
        for order in sorted({min(20, window), window}):
            name = f"ParaTAA m{memory} K{order}"
            grid.append(GridEntry(name, METHODS["ParaTAA paper m2"].variant(name, memory_size=memory, order=order), tol))
    # The increment form of the order-K equations (paratAA.equations; same solution), at --tol and at
    # --tol / 10 and / 100: ParaDiGMS' tolerance is relative to the noise std, ours absolute, so equal
    # tolerances do not mean equal distance from the sequential sample; the tighter runs show the
    # iterations at the distance ParaDiGMS reaches.
    for memory in (2, 3):
        name = f"ParaTAA-inc m{memory} K{window}"
        grid.append(GridEntry(name, METHODS["ParaTAA inc m2"].variant(name, memory_size=memory), tol))
    for scale in (10, 100):
        name = f"ParaTAA-inc m3 K{window} tol/{scale}"
        grid.append(GridEntry(name, METHODS["ParaTAA inc m2"].variant(name, memory_size=3), tol / scale))
    for tolerance in sorted({DIFFUSERS_DEFAULT_TOLERANCE, tol}, reverse=True):
        grid.append(GridEntry(f"ParaDiGMS tol={tolerance:g}", METHODS["ParaDiGMS"], tolerance))
        if with_diffusers:
            grid.append(GridEntry(f"diffusers ParaDiGMS tol={tolerance:g}", None, tolerance))
    return grid


def run_entry(entry: GridEntry, problem: Problem, sampler: str, schedule: Any, eps_fn: Callable,
              noise: torch.Tensor, window: int, args: argparse.Namespace) -> dict[str, Any]:
    """Run one column on one row; returns iterations, evaluations, seconds, residual trace, samples."""
    if entry.method is not None:
        return run_outcome(entry.method, eps_fn, schedule, noise, window, entry.tol)
    from benchmarks.diffusers_paradigms import run_diffusers_paradigms

    runs = [run_diffusers_paradigms(problem.sd_pipe, problem.prompt, problem.negative_prompt, problem.cfg_scale,
                                    sampler, schedule.num_steps, window, entry.tol, args.seed + k)
            for k in range(noise.shape[0])]
    return dict(iterations=max(r.iterations for r in runs), evaluations=sum(r.evaluations for r in runs),
                seconds=sum(r.seconds for r in runs), converged=True, residuals=[],
                samples=torch.cat([r.latents for r in runs]))


def run_row(problem: Problem, sampler: str, num_steps: int, windows: list[int],
            args: argparse.Namespace) -> list[dict[str, Any]]:
    """Sequential once, then every method for every window; one result dict per (window, method)."""
    from paratAA import Schedule, sample_noise, sequential

    schedule = Schedule.from_scheduler(problem.make_scheduler(sampler, num_steps), eta=0.0)
    eps_fn = problem.make_eps_fn(schedule)
    noise = sample_noise(args.seed, args.samples, num_steps, problem.latent_shape, device=args.device)
    start = time.perf_counter()
    reference = sequential(eps_fn, schedule, noise)[:, 0]
    sequential_seconds = time.perf_counter() - start
    base = dict(problem=problem.name, sampler=sampler, num_steps=num_steps, samples=args.samples, tol=args.tol)
    rows = []
    for window in windows:
        rows.append(dict(base, window=window, method="sequential", iterations=num_steps,
                         evaluations=num_steps * args.samples, seconds=sequential_seconds, time_ratio=1.0,
                         converged=True, residuals=[], **latent_metrics(reference, reference)))
        for entry in method_grid(window, args.tol, problem.sd_pipe is not None):
            outcome = run_entry(entry, problem, sampler, schedule, eps_fn, noise, window, args)
            samples = outcome.pop("samples")
            rows.append(dict(base, window=window, method=entry.name, **outcome,
                             time_ratio=outcome["seconds"] / sequential_seconds,
                             **latent_metrics(samples, reference)))
            print(f"  {problem.name} {sampler}-{num_steps} W={window} {entry.name}: "
                  f"{rows[-1]['iterations']} it, diff {rows[-1]['max_abs_diff']:.2e}", file=sys.stderr, flush=True)
    return rows


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 4's targets, per (problem, sampler, T, window) row group.

    - ``taa_lt_fpplus_lt_fp``: the fewest ParaTAA iterations < FP+ iterations < FP iterations.
    - ``taa_le_0.7_paradigms@tol``: some ParaTAA run has at most 0.7x the iterations of the ParaDiGMS
      run (ours) at that tolerance, with a largest latent difference no bigger than ParaDiGMS'.
    - ``ddim100_gmm_le_7_iters``: on ``gmm`` DDIM-100, some ParaTAA run converges in <= 7 iterations
      with a largest difference < 1e-2.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["problem"], row["sampler"], row["num_steps"], row["window"]), []).append(row)
    checks = []
    for (problem, sampler, num_steps, window), group in groups.items():
        by_name = {r["method"]: r for r in group}
        taa = [r for r in group if r["method"].startswith("ParaTAA")]
        best = min(taa, key=lambda r: (r["iterations"], r["max_abs_diff"]))
        check = dict(problem=problem, sampler=sampler, num_steps=num_steps, window=window,
                     best_paratAA=best["method"], paratAA_iterations=best["iterations"],
                     fp_plus_iterations=by_name["FP+"]["iterations"], fp_iterations=by_name["FP"]["iterations"])
        check["taa_lt_fpplus_lt_fp"] = (best["iterations"] < check["fp_plus_iterations"] < check["fp_iterations"])
        for r in group:
            if r["method"].startswith("ParaDiGMS"):
                tol = r["method"].split("=")[1]
                check[f"paradigms_iterations@{tol}"] = r["iterations"]
                check[f"taa_le_0.7_paradigms@{tol}"] = any(
                    t["iterations"] <= 0.7 * r["iterations"] and t["max_abs_diff"] <= r["max_abs_diff"] for t in taa)
        if problem == "gmm" and sampler == "ddim" and num_steps == 100:
            check["ddim100_gmm_le_7_iters"] = any(t["iterations"] <= 7 and t["max_abs_diff"] < 1e-2 for t in taa)
        checks.append(check)
    return checks


def format_tables(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    """Markdown: one table per (problem, sampler, T, window) group, then the targets."""
    out = []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["problem"], row["sampler"], row["num_steps"], row["window"]), []).append(row)
    for (problem, sampler, num_steps, window), group in groups.items():
        out.append(f"\n**{problem}, {sampler.upper()} {num_steps} steps, window {window}** "
                   f"(B = {group[0]['samples']}, tol = {group[0]['tol']:g})\n")
        out.append("| method | iterations | evaluations | seconds | x sequential | max abs diff | PSNR dB |")
        out.append("|---|---|---|---|---|---|---|")
        for r in group:
            flag = "" if r["converged"] else " (not converged)"
            out.append(f"| {r['method']}{flag} | {r['iterations']} | {r['evaluations']} | {r['seconds']:.2f} "
                       f"| {r['time_ratio']:.2f} | {r['max_abs_diff']:.2e} | {r['psnr_db']:.1f} |")
    out.append("\n**Targets (issue 4)**\n")
    keys = sorted({k for c in checks for k in c if k.startswith(("taa_", "ddim100"))})
    out.append("| row | best ParaTAA (iters) | FP+ | FP | " + " | ".join(keys) + " |")
    out.append("|---|---|---|---|" + "---|" * len(keys))
    for c in checks:
        marks = [("met" if c[k] else "NOT met") if k in c else "" for k in keys]
        out.append(f"| {c['problem']} {c['sampler']}-{c['num_steps']} W={c['window']} "
                   f"| {c['best_paratAA']} ({c['paratAA_iterations']}) | {c['fp_plus_iterations']} "
                   f"| {c['fp_iterations']} | " + " | ".join(marks) + " |")
    return "\n".join(out)


def _plan(args: argparse.Namespace) -> list[tuple[str, str, int, list[int]]]:
    if args.quick:
        return [(p, s, t, w) for p in args.problems for s, t, w in QUICK_PLAN.get(p, QUICK_PLAN["tiny-sd"])]
    plan = []
    for problem in args.problems:
        for sampler, num_steps in FULL_SCENARIOS:
            if num_steps > args.max_steps:
                continue
            windows = sorted({w for w in args.windows if w < num_steps} | {min(num_steps, args.max_window)})
            plan.append((problem, sampler, num_steps, windows))
    return plan


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run every row, print the tables, write the JSON."""
    from benchmarks.solver_overhead import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=comma_list(choices=PROBLEMS), default=["gmm", "tiny-dit", "tiny-sd"],
                        help=f"comma-separated, from {', '.join(PROBLEMS)}")
    parser.add_argument("--quick", action="store_true", help="the quick suite (< 10 minutes on 2 CPU cores)")
    parser.add_argument("--windows", type=comma_list(int, minimum=1), default=[10],
                        help="window sizes besides T (full suite)")
    parser.add_argument("--max_window", type=int, default=1000, help="largest window (full suite)")
    parser.add_argument("--max_steps", type=int, default=1000, help="skip scenarios with more steps (full suite)")
    parser.add_argument("--samples", type=int, default=2, help="B, samples solved together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tol", type=float, default=1e-3, help="tol1 = tol2 of ParaTAA/FP/FP+; also a ParaDiGMS tolerance")
    parser.add_argument("--cfg_scale", type=float, default=4.0, help="guidance scale of the DiT / SD problems")
    parser.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    parser.add_argument("--dit_path", default=None, help="DiT weights for --problems dit")
    parser.add_argument("--sd_path", default=None, help="SD pipeline for --problems sd")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: tiny networks run 20-50x slower with spinning "
                             "OpenMP threads on a busy 2-core machine; 0: torch's default)")
    parser.add_argument("--fp16", action="store_true", help="run the networks in float16 (no diffusers column)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    if not (args.tol > 0):
        parser.error("--tol must be > 0")
    if args.max_window < 1:
        parser.error("--max_window must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    problems: dict[str, Problem] = {}
    for name, sampler, num_steps, windows in _plan(args):
        if name not in problems:
            problems[name] = load_problem(name, args)
        rows.extend(run_row(problems[name], sampler, num_steps, windows, args))
    checks = targets(rows)
    report = dict(benchmark="compare", command=" ".join(["python -m benchmarks.compare", *(argv or sys.argv[1:])]),
                  machine=machine_info("cuda" if args.device.startswith("cuda") else "cpu"),
                  torch_threads=torch.get_num_threads(), seconds=time.perf_counter() - start,
                  settings={k: v for k, v in vars(args).items() if k != "out"}, rows=rows, targets=checks)
    print(format_tables(rows, checks))
    print(f"\ntotal {report['seconds']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
