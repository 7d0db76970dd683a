"""Matched-accuracy comparison: every method's (iterations, distance from the sequential sample) pairs.

A method that stops earlier but further from the sequential sample has not won. For each problem,
sampler and window this benchmark sweeps each method's tolerance, records per run the parallel
iterations (the largest over the batch's samples), network evaluations and the largest absolute
difference of the final samples from the sequential sampler's (same noise), and reports, per
method, the **fewest iterations that reach a max difference <= 1e-2, 1e-3 and 1e-4**.

Methods (the registry ``benchmarks.methods``; ``paratAA.solve`` with ``order`` K, ``memory_size`` m, ``map_form``;
tol1 = tol2 = tol):

- ``FP`` (K 1, m 1), ``FP+`` (K = window, m 1), ``ParaTAA paper m2`` / ``m3`` (affine form, the
  paper's equations, K = window), ``ParaTAA inc m2`` (increment form, new steps copied as in the
  paper), ``ParaTAA inc m2 denoised`` (the same with ``init="denoised"``), ``default`` (``solve``
  with only ``window_size``, ``tol1``, ``tol2``: the library's recommended configuration,
  ``paratAA.RECOMMENDED``), ``default m2`` (the same with Anderson acceleration, ``memory_size=2``) and
  ``default m2 f1`` (the recommended method before issue 14: memory 2, ``freeze_factor=1``);
- ``ParaDiGMS`` (``paratAA.baselines.paradigms``) and ``ParaSolver`` (``paratAA.baselines.parasolver``), sweeping their
  noise-relative ``tolerance``.

A sweep runs from loose to tight and stops once a run is within ``--stop_below`` (default ``3e-5``) of
the sequential sample or needs T iterations (tighter tolerances then only cost iterations).

Per run it also records every sample's iterations and final distance (largest absolute difference
from its own sequential sample), and the tables give, beside the batch's iterations (the slowest
sample), the per-sample median / p90 / max iterations and the median / max final distance. For the
``default`` methods the **out-of-the-box** run (no tolerance given) is reported as well.

Half precision (``--dtype float16`` / ``bfloat16``; ``--fp16`` is ``--dtype float16``): the network
runs in that dtype; the ``paratAA.solve`` methods get ``network_dtype=`` it (their residual floor is
measured, ``paratAA.precision``) and the ``default`` methods sweep with ``precision_floor=True``.
Matched accuracy is then measured against the **float32** sequential sample (the same network loaded
in float32, the same noise); the half-precision sequential sampler's own distance from it is the
row's *bar*, and per method the fewest iterations reaching <= 1x, 1.5x and 2x the bar are reported
beside the absolute thresholds. A half-precision sweep also stops once a run is within the bar
(every multiple reached; absolute thresholds below the bar are then not searched further), within
``--stop_below`` of the half-precision sequential sample, or ends exactly where the previous
(looser) run ended (floor-bound: tighter tolerances change nothing). The bar is one realization of
rounding: ``--rounding_realizations`` N (default 5) reruns both sequential samplers N - 1 times with
``x[T]`` perturbed by a relative 1e-4, and each sample's median bar over them is reported beside the
row's (``rounding_bars``; a sensitive sample's bar varies several-fold). Problems come from ``benchmarks.problems``:
``digits`` (the trained pixel-space DiT of ``models/digits``, guidance ``--cfg_scales``), ``patches`` (the
unconditional one of ``models/patches``, whose samplers need 50+ steps), ``gmm``
(the analytic Gaussian mixture, 4x32x32), the tiny random models and real models by path.

Usage::

    .venv/bin/python -m benchmarks.accuracy --quick                        # a few minutes on 2 CPU cores
    .venv/bin/python -m benchmarks.accuracy                                # the full grid (digits, gmm)
    .venv/bin/python -m benchmarks.accuracy --problems digits --scenarios ddim-50 --windows T
    .venv/bin/python -m benchmarks.accuracy --problems gmm --scenarios fm-28,fm-50 --windows T \
        --out benchmarks/results/accuracy_flow.json                        # flow matching (SD3's sampler)
    .venv/bin/python -m benchmarks.accuracy --problems digits --cfg_scales 3 --scenarios ddim-50 --windows T \
        --samples 16 --dtype bfloat16 --out benchmarks/results/accuracy_b16_digits_bfloat16.json
    .venv/bin/python -m benchmarks.accuracy --report benchmarks/results/accuracy_b16_*.json   # tables + targets
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from benchmarks.arguments import comma_list
from benchmarks.methods import HALF, METHODS, Method, latent_metrics
from benchmarks.problems import OWN_SAMPLER_PROBLEMS, PROBLEMS, load_problem

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "accuracy.json"
THRESHOLDS = (1e-2, 1e-3, 1e-4)
BAR_MULTIPLES = (1.0, 1.5, 2.0)  # half precision: thresholds relative to the half-precision sequential sample's distance
DTYPES = ("float32", *HALF)
ROUNDING_REALIZATIONS = 5  # half precision: the bar's rounding realizations (the unperturbed one included)
ROUNDING_PERTURBATION = 1e-4  # relative change of x[T]: flips roundings; float32's sample moves <= 6e-3 (digits)
STOP_BELOW = 3e-5  # a sweep stops once a run is this close to the sequential sample (or takes T iterations)
# Scenarios: name -> (sampler, T, eta). "ddim" builds a DDIMScheduler (eta may be 1), "ddpm" a DDPMScheduler,
# "flow" SD3's FlowMatchEulerDiscreteScheduler (shift 3; the gmm problem only: its exact rectified-flow velocity),
# "dpm" DPMSolverMultistepScheduler (DPM-Solver++ 2M, multistep), "unipc" UniPCMultistepScheduler over the
# problem's configuration; on gmm only: "unipc-flow" Wan's UniPC (flow sigmas, shift 3), "unipc-sd" UniPC over
# SD 1.5's betas.
SCENARIOS = {"ddim-25": ("ddim", 25, 0.0), "ddim-50": ("ddim", 50, 0.0), "ddim-100": ("ddim", 100, 0.0),
             "eta1-100": ("ddim", 100, 1.0), "ddpm-1000": ("ddpm", 1000, 1.0),
             "fm-28": ("flow", 28, 0.0), "fm-50": ("flow", 50, 0.0), "dpm-20": ("dpm", 20, 0.0),
             "dpm-25": ("dpm", 25, 0.0), "unipc-20": ("unipc", 20, 0.0),
             "unipc-wan-50": ("unipc-flow", 50, 0.0), "unipc-sd-20": ("unipc-sd", 20, 0.0),
             "euler-25": ("euler", 25, 0.0)}
# "euler": the pipeline's own EulerDiscreteScheduler (tiny-sdxl only); tiny-sd3 runs "flow" with its own scheduler.
FLOW_PROBLEMS = ("gmm",)
UNGUIDED_PROBLEMS = ("gmm", "patches")  # no --cfg_scales sweep: an analytic score, an unconditional model
GMM_ONLY_SAMPLERS = ("flow", "unipc-flow", "unipc-sd")  # schedulers built for the analytic mixture only
PIPELINE_ONLY_SAMPLERS = ("euler",)  # a pipeline's own Euler scheduler (tiny-sdxl)


def supports(problem: str, sampler: str) -> bool:
    """Whether ``problem`` can run ``sampler`` (gmm: its own flow / UniPC schedulers, no Euler; tiny-sdxl,
    tiny-sd3: their pipeline's scheduler only; the others: DDIM, DDPM, DPM-Solver++, UniPC)."""
    if problem in OWN_SAMPLER_PROBLEMS:
        return sampler == OWN_SAMPLER_PROBLEMS[problem]
    if problem in FLOW_PROBLEMS:
        return sampler not in PIPELINE_ONLY_SAMPLERS
    return sampler not in GMM_ONLY_SAMPLERS + PIPELINE_ONLY_SAMPLERS


def supported_note(problem: str) -> str:
    """Which samplers ``problem`` runs, for messages."""
    samplers = sorted({sampler for sampler, _, _ in SCENARIOS.values() if supports(problem, sampler)})
    return "its samplers: " + ", ".join(samplers)
FULL_SCENARIOS = ("ddim-25", "ddim-50", "ddim-100", "eta1-100")
QUICK_SCENARIOS = ("ddim-25", "eta1-100")


def per_sample_distances(samples: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """Each sample's largest absolute difference from its reference sample."""
    return [float(v) for v in (samples.double().cpu() - reference.double().cpu()).flatten(1).abs().max(1).values]


def spread(values: list[float]) -> dict[str, float]:
    """Median, p90 (nearest rank) and max of ``values``."""
    ordered = sorted(values)
    p90 = ordered[max(0, -(-9 * len(ordered) // 10) - 1)]
    return dict(median=float(statistics.median(ordered)), p90=float(p90), max=float(ordered[-1]))


def rounding_bars(eps_fn: Callable, reference_eps_fn: Callable, schedule: Any, noise: torch.Tensor,
                  own: torch.Tensor, reference: torch.Tensor, count: int) -> list[list[float]]:
    """The bar's spread over rounding: per realization, each sample's half-precision sequential distance from the
    float32 sequential sample of the same noise.

    Realization 0 is the row's noise (its bar); realization ``r >= 1`` scales ``x[T]`` by
    ``1 + ROUNDING_PERTURBATION xi`` (``xi`` standard normal, seed ``r``), which changes where the
    half-precision network rounds, and recomputes both sequential samples. A sensitive sample's bar varies
    several-fold between realizations (benchmarks/RESULTS.md, section 16), so one realization can be a lucky
    or unlucky bar.
    """
    from paratAA import sequential

    bars = [per_sample_distances(own, reference)]
    for r in range(1, count):
        generator = torch.Generator().manual_seed(r)
        xi = torch.randn(noise[:, -1].shape, generator=generator, dtype=noise.dtype).to(noise.device)
        perturbed = noise.clone()
        perturbed[:, -1] *= 1 + ROUNDING_PERTURBATION * xi
        bars.append(per_sample_distances(sequential(eps_fn, schedule, perturbed)[:, 0],
                                         sequential(reference_eps_fn, schedule, perturbed)[:, 0]))
    return bars


def run_once(method: Method, eps_fn: Callable, schedule: Any, noise: torch.Tensor, window: int, tol: float | None,
             reference: torch.Tensor, dtype: str, own: torch.Tensor | None = None) -> tuple[dict[str, Any], torch.Tensor]:
    """One run of ``method`` at ``tol`` (None: out of the box): its record and its samples.

    ``own``: in half precision, the half-precision sequential sample (its distance is recorded too).
    """
    start = time.perf_counter()
    result = method.run(eps_fn, schedule, noise, window, tol, dtype)
    seconds = time.perf_counter() - start
    distances = per_sample_distances(result.samples, reference)
    record = dict(tol=tol, iterations=result.iterations, evaluations=result.evaluations,
                  per_sample_iterations=list(result.per_sample_iterations), converged=result.converged,
                  seconds=seconds, **latent_metrics(result.samples, reference),
                  per_sample_max_abs_diff=distances, iterations_spread=spread(result.per_sample_iterations),
                  distance_spread=spread(distances), stop_reasons=list(getattr(result, "stop_reasons", []) or []))
    if own is not None:
        record["max_abs_diff_own_sequential"] = float((result.samples.double().cpu() - own.double().cpu()).abs().max())
    return record, result.samples


def sweep(method: Method, eps_fn: Callable, schedule: Any, noise: torch.Tensor, window: int,
          reference: torch.Tensor, dtype: str = "float32", own: torch.Tensor | None = None,
          stop_below: float = STOP_BELOW, bar: float | None = None) -> list[dict[str, Any]]:
    """Run ``method`` at each of its tolerances (loose to tight) until within ``stop_below`` of ``reference``
    (or T iterations; in half precision also: within ``bar`` of ``reference`` (every multiple of the bar
    reached; the absolute thresholds below the bar are out of a half-precision network's reach), within
    ``stop_below`` of ``own``, the half-precision sequential sample, or the same samples as the previous run)."""
    runs: list[dict[str, Any]] = []
    previous = None
    for tol in method.tolerances:
        record, samples = run_once(method, eps_fn, schedule, noise, window, tol, reference, dtype, own)
        runs.append(record)
        if record["max_abs_diff"] <= stop_below or record["iterations"] >= schedule.num_steps:
            break
        if dtype in HALF and ((bar is not None and record["max_abs_diff"] <= bar)
                              or (own is not None and record["max_abs_diff_own_sequential"] <= stop_below)
                              or (previous is not None and torch.equal(samples, previous))):
            break
        previous = samples
    return runs


def threshold_keys(group: dict[str, Any]) -> dict[str, float]:
    """A group's thresholds by their JSON key: the absolute ones (``"0.001"``) and, in half precision,
    the multiples of the bar (``"bar x1.5"``)."""
    keys = {f"{t:g}": t for t in THRESHOLDS}
    if group.get("bar") is not None:
        keys.update({f"bar x{k:g}": k * group["bar"] for k in BAR_MULTIPLES})
    return keys


def fewest_iterations(runs: list[dict[str, Any]], threshold: float) -> dict[str, Any] | None:
    """The run with the fewest iterations whose max difference is <= threshold (ties: the loosest tol)."""
    good = [r for r in runs if r["max_abs_diff"] <= threshold]
    return min(good, key=lambda r: (r["iterations"], -r["tol"])) if good else None


def monotone_violations(runs: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Pairs (tol, next tighter tol) where the tighter tolerance ended further from the sequential sample."""
    return [(a["tol"], b["tol"]) for a, b in zip(runs, runs[1:]) if b["max_abs_diff"] > a["max_abs_diff"] * 1.0001]


def run_group(problem: Any, scenario: str, window: int | str, methods: list[str], args: argparse.Namespace,
              cache: dict, reference_problem: Any = None,
              progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every method's sweep on one (problem, scenario, window); the sequential samples are cached.

    ``reference_problem``: in half precision, the same problem with a float32 network; its sequential
    sample is then the reference, and the half-precision sequential sample's distance from it the bar.
    ``progress``: called with the group so far after each method (main writes a partial JSON).
    """
    from paratAA import Schedule, sample_noise, sequential

    sampler, num_steps, eta = SCENARIOS[scenario]
    size = num_steps if window == "T" else (num_steps // 4 if window == "T/4" else int(window))
    dtype = getattr(args, "dtype", None) or "float32"
    key = (problem.name, scenario)
    if key not in cache:
        scheduler = problem.make_scheduler(sampler, num_steps)
        schedule = Schedule.from_scheduler(scheduler, eta=eta)
        eps_fn = problem.make_eps_fn(schedule)
        noise = sample_noise(args.seed, args.samples, num_steps, problem.latent_shape, device=args.device)
        noise[:, num_steps] *= float(getattr(scheduler, "init_noise_sigma", 1.0))  # Euler's x[T] scale (else 1)
        start = time.perf_counter()
        own = sequential(eps_fn, schedule, noise)[:, 0]
        seconds = time.perf_counter() - start
        reference, bars = own, None
        if reference_problem is not None:
            reference_eps_fn = reference_problem.make_eps_fn(schedule)
            reference = sequential(reference_eps_fn, schedule, noise)[:, 0]
            bars = rounding_bars(eps_fn, reference_eps_fn, schedule, noise, own, reference,
                                 getattr(args, "rounding_realizations", ROUNDING_REALIZATIONS))
        cache[key] = (schedule, eps_fn, noise, reference, own, seconds, bars)
    schedule, eps_fn, noise, reference, own, sequential_seconds, bars = cache[key]
    group = dict(problem=problem.name, scenario=scenario, sampler=sampler, num_steps=num_steps, eta=eta,
                 window=size, window_label=str(window), samples=args.samples, dtype=dtype,
                 sequential_seconds=sequential_seconds, methods={})
    half = reference_problem is not None
    if half:
        bar = bars[0]
        typical = [statistics.median(column) for column in zip(*bars)]
        group.update(bar=max(bar), per_sample_bar=bar, bar_spread=spread(bar), rounding_bars=bars,
                     per_sample_typical_bar=typical)
        print(f"  {problem.name} {scenario} {dtype}: sequential sample {max(bar):.3g} from float32's (the bar); "
              f"over {len(bars)} rounding realizations each sample's median bar is "
              f"{min(typical):.3g}-{max(typical):.3g}", file=sys.stderr, flush=True)
    keys = threshold_keys(group)
    for name in methods:
        method = METHODS[name]
        runs = sweep(method, eps_fn, schedule, noise, size, reference, dtype, own if half else None,
                     args.stop_below, group.get("bar"))
        best = {k: fewest_iterations(runs, t) for k, t in keys.items()}
        entry = dict(runs=runs, best=best, monotone_violations=monotone_violations(runs))
        if method.out_of_box:
            # tol1 = tol2 = 1e-4 (and, in half precision, the floor on) is the out-of-the-box setting: reuse that run
            same = [r for r in runs if r["tol"] == 1e-4]
            if same:
                entry["out_of_box"] = dict(same[0], tol=None, same_as_sweep_tol=1e-4)
            else:
                entry["out_of_box"] = run_once(method, eps_fn, schedule, noise, size, None, reference, dtype,
                                               own if half else None)[0]
        group["methods"][name] = entry
        if progress is not None:
            progress(group)
        summary = ", ".join(f"<= {k}: {b['iterations'] if b else '-'}" for k, b in best.items())
        extra = ""
        if "out_of_box" in entry:
            o = entry["out_of_box"]
            extra = f"; out of the box {o['iterations']} it, {o['max_abs_diff']:.2e}"
        print(f"  {problem.name} {scenario} W={size} {dtype} {name}: {len(runs)} runs; fewest iterations {summary}"
              f"{extra}", file=sys.stderr, flush=True)
    return group


def format_tables(groups: list[dict[str, Any]]) -> str:
    """Markdown: per group, per method, the fewest iterations (and the tol) reaching each threshold."""
    out = []
    for g in groups:
        keys = list(threshold_keys(g))
        out.append(f"\n**{g['problem']}, {g['scenario']} (T = {g['num_steps']}, eta = {g['eta']:g}), "
                   f"window {g['window']}** (B = {g['samples']}{_dtype_note(g)})\n")
        out.append("| method | " + " | ".join(f"<= {k}: iters (tol)" for k in keys)
                   + " | x ParaDiGMS at 1e-3 |")
        out.append("|---|" + "---|" * (len(keys) + 1))
        anchor = g["methods"].get("ParaDiGMS", {}).get("best", {}).get("0.001")
        for name, m in g["methods"].items():
            cells = [f"{b['iterations']} ({b['tol']:g})" if b else "not reached"
                     for b in (m["best"].get(k) for k in keys)]
            mine = m["best"].get("0.001")
            ratio = f"{mine['iterations'] / anchor['iterations']:.2f}" if mine and anchor else "-"
            out.append(f"| {name} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(out)


def _dtype_note(group: dict[str, Any]) -> str:
    """``, bfloat16, bar 8.1e-02`` for a half-precision group, else empty."""
    if group.get("bar") is None:
        return ""
    return f", network {group['dtype']}, bar {group['bar']:.2g}: its sequential sample's distance from float32's"


def _runs_table_rows(name: str, m: dict[str, Any], keys: list[str]) -> list[str]:
    """Rows of the per-sample table: each distinct run that is the out-of-the-box one or the fewest-iterations
    one at some threshold (labelled with all it stands for), then the thresholds not reached."""
    picks: list[tuple[dict[str, Any], list[str]]] = []
    if m.get("out_of_box"):
        picks.append((m["out_of_box"], ["out of the box"]))
    missing = []
    for k in keys:
        run = m["best"].get(k)
        if run is None:
            missing.append(f"<= {k}")
            continue
        for other, labels in picks:
            if other is run or (other["tol"] is not None and other["tol"] == run["tol"]):
                labels.append(f"<= {k}")
                break
            if other["tol"] is None and other.get("same_as_sweep_tol") == run["tol"]:
                labels.append(f"<= {k}")
                break
        else:
            picks.append((run, [f"<= {k}"]))
    rows = []
    for run, labels in picks:
        i = run.get("iterations_spread") or spread(run["per_sample_iterations"])
        d = run.get("distance_spread")
        reasons = ",".join(sorted(set(run.get("stop_reasons") or []))) or "-"
        tol = "none" if run["tol"] is None else f"{run['tol']:g}"
        dist = f"{d['median']:.2e} / {d['max']:.2e}" if d else f"- / {run['max_abs_diff']:.2e}"
        rows.append(f"| {name} | {', '.join(labels)} | {tol} | {run['iterations']} | {i['median']:g} / {i['p90']:g} / "
                    f"{i['max']:g} | {dist} | {reasons} |")
    if missing:
        rows.append(f"| {name} | not reached: {', '.join(missing)} | | | | | |")
    return rows


def per_sample_tables(groups: list[dict[str, Any]]) -> str:
    """Markdown: per group and method, the out-of-the-box run and the run reaching each threshold, with the
    per-sample iterations (median / p90 / max) beside the batch's and the per-sample final distances."""
    out = []
    for g in groups:
        keys = list(threshold_keys(g))
        out.append(f"\n**{g['problem']}, {g['scenario']}, window {g['window']}** (B = {g['samples']}{_dtype_note(g)})\n")
        out.append("| method | run | tol | batch iters | per-sample iters median / p90 / max "
                   "| final distance median / max | stop reasons |")
        out.append("|---|---|---|---|---|---|---|")
        for name, m in g["methods"].items():
            out.extend(_runs_table_rows(name, m, keys))
    return "\n".join(out)


def merge_groups(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Groups of several runs merged by (problem, scenario, window, dtype, B): their methods side by side."""
    merged: dict[tuple, dict[str, Any]] = {}
    for g in groups:
        key = (g["problem"], g["scenario"], g["window"], g.get("dtype", "float32"), g.get("samples"))
        if key in merged:
            merged[key]["methods"].update(g["methods"])
        else:
            merged[key] = {**g, "methods": dict(g["methods"])}
    return list(merged.values())


def headline_table(groups: list[dict[str, Any]], threshold: float = 1e-3, key: str | None = None) -> str:
    """Markdown: one row per group, one column per method: the fewest iterations reaching ``threshold``
    (or the threshold named ``key``, e.g. ``"bar x2"``).

    The best exact method of a row is in bold; ``ratio`` is the default's count over ParaDiGMS's.
    """
    methods = list(dict.fromkeys(name for g in groups for name in g["methods"]))
    key = key or f"{threshold:g}"
    out = ["| problem | sampler | W | B | dtype | " + " | ".join(methods) + " | default / ParaDiGMS |",
           "|---|---|---|---|---|" + "---|" * (len(methods) + 1)]
    for g in groups:
        counts = {name: (m["best"].get(key) or {}).get("iterations") for name, m in g["methods"].items()}
        best = min((c for c in counts.values() if c is not None), default=None)
        cells = [("-" if counts.get(name) is None else
                  (f"**{counts[name]}**" if counts[name] == best else str(counts[name]))) for name in methods]
        ratio = (f"{counts['default'] / counts['ParaDiGMS']:.2f}"
                 if counts.get("default") and counts.get("ParaDiGMS") else "-")
        out.append(f"| {g['problem']} | {g['scenario']} | {g['window']} | {g['samples']} | {g.get('dtype', 'float32')} | "
                   + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(out)


def _matched_run(g: dict[str, Any], m: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """The run a group's targets (c) and (d) read at matched accuracy: <= 1e-3 in float32, <= 2x the bar in
    half precision."""
    key = "bar x2" if g.get("bar") is not None else "0.001"
    return key, m["best"].get(key)


def use_targets(groups: list[dict[str, Any]], methods: tuple[str, ...] = ("default", "default m2", "default m2 f1"),
                ratio_a: float = 1.25, bar_a: float = 2.0, ratio_b: float = 0.7, spread_c: float = 2.0,
                spread_d: float = 3.0) -> list[dict[str, Any]]:
    """Issue 14's targets for batches of samples, per group and method (``True`` met, ``False`` missed,
    absent: not measurable on that group).

    - ``a_iterations``: half precision: the out-of-the-box batch iterations <= ``ratio_a`` x the float32
      group's (same problem, scenario, window); ``a_distance``: its final max distance from the float32
      sequential sample <= ``bar_a`` x the bar. Reported beside it, not a target:
      ``a_worst_over_typical_bar``, the largest over samples of a sample's distance over its median bar over
      the rounding realizations (``rounding_bars``).
    - ``b_vs_paradigms``: float32, DDIM: the fewest iterations at max difference 1e-3 <= ``ratio_b`` x ParaDiGMS's.
    - ``c_iterations_spread``: no sample needs more than ``spread_c`` x the batch median iterations (the
      out-of-the-box run, and the run at matched accuracy, ``_matched_run``).
    - ``d_distance_spread``: the worst sample's final distance <= ``spread_d`` x the median (same runs).
    """
    float32 = {(g["problem"], g["scenario"], g["window"]): g for g in groups if g.get("dtype", "float32") == "float32"}
    checks = []
    for g in groups:
        dtype = g.get("dtype", "float32")
        for name in methods:
            m = g["methods"].get(name)
            if m is None:
                continue
            check: dict[str, Any] = dict(problem=g["problem"], scenario=g["scenario"], window=g["window"], dtype=dtype,
                                         samples=g["samples"], method=name)
            box = m.get("out_of_box")
            key, matched = _matched_run(g, m)
            if dtype in HALF and box is not None:
                base = float32.get((g["problem"], g["scenario"], g["window"]), {}).get("methods", {}).get(name, {})
                if base.get("out_of_box"):
                    check["a_float32_iterations"] = base["out_of_box"]["iterations"]
                    check["a_iterations_ratio"] = box["iterations"] / base["out_of_box"]["iterations"]
                    check["a_iterations"] = check["a_iterations_ratio"] <= ratio_a
                check["a_half_iterations"] = box["iterations"]
                check["a_distance_over_bar"] = box["max_abs_diff"] / g["bar"]
                check["a_distance"] = check["a_distance_over_bar"] <= bar_a
                if g.get("per_sample_typical_bar") and box.get("per_sample_max_abs_diff"):
                    check["a_worst_over_typical_bar"] = max(
                        d / t for d, t in zip(box["per_sample_max_abs_diff"], g["per_sample_typical_bar"]))
            if dtype == "float32" and g.get("sampler") == "ddim" and "ParaDiGMS" in g["methods"]:
                theirs = g["methods"]["ParaDiGMS"]["best"].get("0.001")
                mine = m["best"].get("0.001")
                if theirs is not None and mine is not None:
                    check["b_ratio"] = mine["iterations"] / theirs["iterations"]
                    check["b_vs_paradigms"] = check["b_ratio"] <= ratio_b
                elif theirs is not None or mine is not None:
                    check["b_ratio"] = None
                    check["b_vs_paradigms"] = mine is not None
            for label, run in (("out_of_box", box), (key, matched)):
                if run is None:
                    continue
                its = run["per_sample_iterations"]
                ratio = max(its) / statistics.median(its)
                check[f"c_iterations_spread@{label}"] = ratio
                check.setdefault("c_iterations_spread", True)
                check["c_iterations_spread"] &= ratio <= spread_c
                distances = run.get("per_sample_max_abs_diff")
                if distances:
                    ratio = max(distances) / max(statistics.median(distances), 1e-300)
                    check[f"d_distance_spread@{label}"] = ratio
                    check.setdefault("d_distance_spread", True)
                    check["d_distance_spread"] &= ratio <= spread_d
            checks.append(check)
    return checks


def targets_table(checks: list[dict[str, Any]]) -> str:
    """Markdown: one row per (group, method) with the numbers behind each target and met / MISSED."""

    def mark(check: dict[str, Any], key: str, detail: str) -> str:
        if key not in check:
            return "-"
        return f"{'met' if check[key] else 'MISSED'} ({detail})"

    out = ["| row | dtype | method | (a) iterations: half / float32 | (a) distance / bar "
           "| worst sample / its median bar over rounding | (b) / ParaDiGMS at 1e-3 "
           "| (c) max / median iterations: out of box; matched | (d) max / median distance: out of box; matched |",
           "|---|---|---|---|---|---|---|---|---|"]
    for c in checks:
        spreads = {t: "; ".join(f"{v:.2f}" for k, v in c.items() if k.startswith(f"{t}@"))
                   for t in ("c_iterations_spread", "d_distance_spread")}
        a_it = (f"{c['a_half_iterations']} / {c['a_float32_iterations']} = {c['a_iterations_ratio']:.2f}"
                if "a_iterations_ratio" in c else "")
        b = f"{c['b_ratio']:.2f}" if c.get("b_ratio") is not None else "one side not reached"
        out.append(f"| {c['problem']} {c['scenario']} W={c['window']} B={c['samples']} | {c['dtype']} | {c['method']} "
                   f"| {mark(c, 'a_iterations', a_it)} "
                   f"| {mark(c, 'a_distance', format(c.get('a_distance_over_bar', 0), '.2f'))} "
                   f"| {format(c['a_worst_over_typical_bar'], '.2f') if 'a_worst_over_typical_bar' in c else '-'} "
                   f"| {mark(c, 'b_vs_paradigms', b)} "
                   f"| {mark(c, 'c_iterations_spread', spreads['c_iterations_spread'])} "
                   f"| {mark(c, 'd_distance_spread', spreads['d_distance_spread'])} |")
    return "\n".join(out)


def out_of_box_table(groups: list[dict[str, Any]]) -> str:
    """Markdown: per group and out-of-the-box method, batch and per-sample iterations and final distances."""
    out = ["| problem | sampler | W | B | dtype | bar | method | batch iters | per-sample iters median / p90 / max "
           "| final distance median / max | stop reasons |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        for name, m in g["methods"].items():
            run = m.get("out_of_box")
            if run is None:
                continue
            i, d = run["iterations_spread"], run["distance_spread"]
            bar = f"{g['bar']:.2g}" if g.get("bar") is not None else "-"
            reasons = ",".join(sorted(set(run.get("stop_reasons") or []))) or "-"
            out.append(f"| {g['problem']} | {g['scenario']} | {g['window']} | {g['samples']} | {g.get('dtype', 'float32')} "
                       f"| {bar} | {name} | {run['iterations']} | {i['median']:g} / {i['p90']:g} / {i['max']:g} "
                       f"| {d['median']:.2e} / {d['max']:.2e} | {reasons} |")
    return "\n".join(out)


def print_report(groups: list[dict[str, Any]]) -> None:
    """Every table of ``groups`` on stdout: headline, tolerance meaning, per threshold, per sample, targets."""
    print(headline_table(groups), "\n", tolerance_meaning(groups), format_tables(groups), sep="\n")
    half = [g for g in groups if g.get("bar") is not None]
    if half:
        print("\n**Fewest iterations reaching 2x the bar (half precision)**\n", headline_table(half, key="bar x2"),
              sep="\n")
    if any(m.get("out_of_box") for g in groups for m in g["methods"].values()):
        print("\n**Out of the box (no tolerance given)**\n", out_of_box_table(groups), sep="\n")
    print("\n**Per sample**", per_sample_tables(groups), sep="\n")
    checks = use_targets(groups)
    if checks:
        print("\n**Targets for batches (issue 14)**\n", targets_table(checks), sep="\n")


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


def _write_partial(path: Path, groups: list[dict[str, Any]], current: dict[str, Any], start: float) -> None:
    """The groups so far (and the one in progress) to ``path``'s ``.partial.json``, in case the run is stopped."""
    partial = path.with_suffix(".partial.json")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_text(json.dumps(dict(benchmark="accuracy", partial=True, seconds=time.perf_counter() - start,
                                       groups=[*groups, current]), indent=1) + "\n")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, sweep every group, print the tables, write JSON (and a plot)."""
    from benchmarks.solver_overhead import machine_info

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--problems", type=comma_list(choices=PROBLEMS), default=["digits", "gmm"],
                        help=f"comma-separated, from {', '.join(PROBLEMS)}")
    parser.add_argument("--scenarios", type=comma_list(choices=tuple(SCENARIOS)), default=None,
                        help=f"comma-separated, from {', '.join(SCENARIOS)} (default: {', '.join(FULL_SCENARIOS)})")
    parser.add_argument("--windows", type=comma_list(), default=["T", "T/4"],
                        help="window sizes: T, T/4 or numbers (default: T,T/4)")
    parser.add_argument("--methods", type=comma_list(choices=tuple(METHODS)), default=list(METHODS),
                        help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--cfg_scales", type=comma_list(float), default=[1.0, 3.0],
                        help="guidance scales of the digits / DiT / SD problems (default: 1,3)")
    parser.add_argument("--quick", action="store_true",
                        help=f"scenarios {', '.join(QUICK_SCENARIOS)}, window T, guidance 3 only")
    parser.add_argument("--samples", type=int, default=4, help="B, samples solved together")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    parser.add_argument("--dit_path", default=None)
    parser.add_argument("--sd_path", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=DTYPES, default=None,
                        help="the network's dtype (default float32); in half precision the reference is the float32 "
                             "sequential sample and the solve methods get network_dtype=")
    parser.add_argument("--fp16", action="store_true", help="the same as --dtype float16")
    parser.add_argument("--rounding_realizations", type=int, default=ROUNDING_REALIZATIONS,
                        help="half precision: rounding realizations of the bar, the row's noise included (each "
                             f"other one runs both sequential samplers once more; default {ROUNDING_REALIZATIONS})")
    parser.add_argument("--stop_below", type=float, default=STOP_BELOW,
                        help=f"a sweep stops once a run is this close to the reference (default {STOP_BELOW:g})")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path (a .png plot beside it)")
    parser.add_argument("--report", type=Path, nargs="+", default=None,
                        help="run nothing: print the tables of these JSON files together and plot them to --out's .png")
    args = parser.parse_args(argv)
    if args.report:
        missing = [str(path) for path in args.report if not path.is_file()]
        if missing:
            parser.error(f"--report: no such file: {', '.join(missing)}")
        groups = merge_groups([g for path in args.report for g in json.loads(path.read_text())["groups"]])
        print_report(groups)
        _plot_if_possible(groups, args.out.with_suffix(".png"))
        return {"groups": groups, "targets": use_targets(groups)}
    if args.fp16 and args.dtype not in (None, "float16"):
        parser.error(f"--fp16 is --dtype float16; got --dtype {args.dtype} too")
    args.dtype = args.dtype or ("float16" if args.fp16 else "float32")
    args.fp16 = args.dtype == "float16"
    if args.dtype in HALF and "gmm" in args.problems:
        parser.error(f"--dtype {args.dtype}: the analytic problem gmm has no network to run in half precision")
    if args.rounding_realizations < 1:
        parser.error("--rounding_realizations must be >= 1")
    if not args.stop_below >= 0:
        parser.error("--stop_below must be >= 0")
    scenarios = args.scenarios or list(QUICK_SCENARIOS if args.quick else FULL_SCENARIOS)
    windows = ["T"] if args.quick else args.windows
    cfg_scales = [3.0] if args.quick else args.cfg_scales
    for problem in args.problems:
        for scenario in scenarios:
            if not supports(problem, SCENARIOS[scenario][0]):
                parser.error(f"--scenarios {scenario}: not a sampler of --problems {problem} "
                             f"({supported_note(problem)})")
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
        guided = name not in UNGUIDED_PROBLEMS
        for cfg_scale in (cfg_scales if guided else [None]):
            problem_args = argparse.Namespace(**{**vars(args), "cfg_scale": cfg_scale or 1.0})
            problem = load_problem(name, problem_args)
            reference_problem = None
            if args.dtype in HALF:  # the same network in float32: its sequential sample is the reference
                reference_problem = load_problem(name, argparse.Namespace(**{**vars(problem_args), "dtype": "float32",
                                                                             "fp16": False}))
            if guided:
                problem.name = f"{name} cfg {cfg_scale:g}"
            cache: dict = {}
            for scenario in scenarios:
                for window in windows:
                    groups.append(run_group(problem, scenario, window, args.methods, args, cache, reference_problem,
                                            lambda g: _write_partial(args.out, groups, g, start)))
    report = dict(benchmark="accuracy",
                  command=" ".join(["python -m benchmarks.accuracy", *(argv if argv is not None else sys.argv[1:])]),
                  machine=machine_info("cuda" if args.device.startswith("cuda") else "cpu"),
                  seconds=time.perf_counter() - start, thresholds=list(THRESHOLDS),
                  settings={k: v for k, v in vars(args).items() if k != "out"}, groups=groups,
                  targets=use_targets(groups))
    print_report(groups)
    print(f"\ntotal {report['seconds']:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    _plot_if_possible(groups, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
