"""Quality against latency: sequential samplers at k steps, parallel solvers after k iterations.

Why: a parallel solver's gain is real only at equal quality. Latency is counted in **rounds of
network calls** (k): a sequential sampler with k steps makes k rounds, a parallel solver k rounds
after k iterations (each round then evaluates up to a window of steps per sample, so it costs more
compute; the ``evaluations`` column says how much). Quality is a Fréchet distance (FD) to real
images in a fixed feature space (``benchmarks.quality.PatchFeatures``).

Models (``--model``, each as ``benchmarks.problems`` loads it; float32 network, float64 solver):

- ``digits`` (``models/digits``): ``count`` samples, ``count / 10`` per class (labels 0..9 in blocks),
  guidance ``--cfg_scale`` (3). Features fitted on all 1,797 real digits
  (``training.train_digits.load_digit_images``), which are also the real reference.
- ``patches`` (``models/patches``): ``count`` unconditional samples. Features: ``benchmarks.quality``'s
  fixed space (fitted on 20,000 seeded real crops); real reference: ``count`` real crops of
  ``benchmarks.quality.REAL_SEED``, as in ``benchmarks.quality``.

Sample ``j`` of noise seed ``s`` draws its noise with ``paratAA.sample_noise`` seed
``s * SEED_STRIDE + j`` (seed 0 is the other benchmarks' noise; seed 1 must not reuse seeds
1..count-1 of seed 0, as ``sample_noise(1, ...)`` would). Every sampler starts from the same ``x[T]``.

Samplers (``benchmarks.problems.ordinary_scheduler`` over the model's DDIM configuration, ``linspace``
timesteps, final alpha 1, as in ``benchmarks.accuracy``):

- sequential DDIM (eta 0) at ``--ddim_steps`` and DPM-Solver++ 2M at ``--dpm_steps`` steps;
- ``--curves``: parallel solvers, each ``method:sampler:steps`` with a method of ``benchmarks.methods`` out
  of the box (``default``: ``paratAA.solve`` with no options, ``RECOMMENDED``; ``ParaDiGMS`` and
  ``ParaSolver``: their default tolerances), window T: the FD of each iteration's ``IterationRecord.x0``
  (each sample's current estimate of ``x[0]``).

Images are clamped to [-1, 1] (what the pipeline shows) before the features.

Noise floors:

- real vs real: FD between disjoint real sets of ``count`` (``--floor_repeats`` pairs; digits:
  class-stratified, and also one subset against the remaining real digits, the closest analogue of
  "``count`` samples vs the real set");
- seed to seed: FD between sequential DDIM-100 sets from seeds ``--seed`` and ``--seed2``, and each
  one's FD to the real set. A k is "within the floor" of a target when the FD of its set to the
  target's set (same noise) is at most the seed-to-seed FD: the two sets then differ less than two
  seeds of the target itself do.

Usage::

    .venv/bin/python -m benchmarks.frontier --model digits              # the full run (15-18 min on 1 shared core)
    .venv/bin/python -m benchmarks.frontier --model patches --count 200 # ~35 min on 1 core
    .venv/bin/python -m benchmarks.frontier --count 20 --out /tmp/frontier_smoke.json  # a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from benchmarks.quality import PatchFeatures, fd_between

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_OUT = {"digits": RESULTS / "quality_digits.json", "patches": RESULTS / "quality_patches_frontier.json"}
NUM_CLASSES = 10
SEED_STRIDE = 1_000_000  # noise seed s uses per-sample seeds s * SEED_STRIDE + j: disjoint for s = 0, 1, ...
REAL_SPLIT_SEED = 12345  # the random real subsets of the digits floors
RISE = 0.005  # an FD "rises" when it exceeds the previous iteration's by more than this (half the printed 0.01)
# Per model: the sequential sweeps and the parallel curves (method, sampler, steps) run by default.
MODEL_DEFAULTS = {
    "digits": dict(ddim_steps=[1, 2, 3, 5, 10, 20, 50, 100], dpm_steps=[2, 3, 5, 10, 20],
                   curves=["default:ddim:100", "default:dpm:20", "ParaDiGMS:ddim:100"]),
    "patches": dict(ddim_steps=[5, 10, 20, 50, 100], dpm_steps=[5, 10, 20, 30, 50],
                    curves=["default:ddim:100", "ParaDiGMS:ddim:100", "ParaSolver:ddim:100", "default:dpm:50"]),
}
FLOOR_TARGET = ("ddim", 100)  # the seed-to-seed floor's sampler; every curve's sequential sample is also computed


# ------------------------------------------------------------------------------------------ problem

@dataclass
class QualityProblem:
    """A registry problem (``benchmarks.problems``) with its real reference, noise by seed.

    Attributes:
        problem: the ``benchmarks.problems.Problem`` (float32 network, CPU).
        count: samples per set.
        features: the fixed feature map.
        real: the real reference's features.
        real_floor: FD between real sets of ``count`` (``{"count", "repeats", "pairs": {mean, std, values}}``,
            digits also ``"vs_rest"``).
        facts: what was measured against what, for the JSON.
    """

    problem: Any
    count: int
    features: PatchFeatures
    real: np.ndarray
    real_floor: dict[str, Any]
    facts: dict[str, Any]

    def setup(self, sampler: str, steps: int, seed: int) -> tuple[Callable, Any, torch.Tensor]:
        """``(eps_fn, schedule, noise)`` of ``sampler`` (``"ddim"`` or ``"dpm"``) at ``steps`` for noise seed
        ``seed`` (see the module docstring); ``x[T]`` scaled by the scheduler's ``init_noise_sigma``."""
        from paratAA import Schedule, sample_noise

        scheduler = self.problem.make_scheduler(sampler, steps)
        schedule = Schedule.from_scheduler(scheduler, eta=0.0)
        noise = sample_noise(seed * SEED_STRIDE, self.count, steps, self.problem.latent_shape)
        noise[:, steps] *= float(getattr(scheduler, "init_noise_sigma", 1.0))
        return self.problem.make_eps_fn(schedule), schedule, noise


def _spread(values: list[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def digits_problem(count: int, cfg_scale: float, components: int, floor_repeats: int) -> QualityProblem:
    """``count`` digits samples, ``count // 10`` per class in blocks (0, 0, ..., 1, 1, ...), guidance ``cfg_scale``."""
    from benchmarks.problems import load_problem
    from training.train_digits import load_digit_images

    if count < NUM_CLASSES or count % NUM_CLASSES:
        raise SystemExit(f"--count must be a positive multiple of {NUM_CLASSES} for digits, got {count}")
    real_images, real_labels = load_digit_images()
    features = PatchFeatures.fit(real_images.double(), components)
    real = features(real_images)
    labels = [c for c in range(NUM_CLASSES) for _ in range(count // NUM_CLASSES)]
    args = argparse.Namespace(device="cpu", dtype="float32", samples=count, cfg_scale=cfg_scale, labels=labels,
                              dit_path=None)
    facts = {"model": "models/digits", "per_class": count // NUM_CLASSES, "cfg_scale": cfg_scale,
             "features": f"benchmarks.quality.PatchFeatures: whitened PCA-{components} pixels + whitened "
                         f"PCA-{components} 3x3 high-pass, fitted on all {len(real_labels)} real digits",
             "real_reference": f"all {len(real_labels)} real digits"}
    return QualityProblem(load_problem("digits", args), count, features, real,
                          real_floors(real, real_labels.numpy(), count, floor_repeats), facts)


def patches_problem(count: int, components: int, floor_repeats: int, features_cache: Path | None) -> QualityProblem:
    """``count`` unconditional samples of ``models/patches`` against ``count`` real crops (``benchmarks.quality``)."""
    from benchmarks.problems import load_problem
    from benchmarks.quality import REAL_SEED, describe_features, noise_floor
    from training.train_patches import real_crops

    features = PatchFeatures.cached(features_cache, components)
    floor = noise_floor(features, count, floor_repeats)
    args = argparse.Namespace(device="cpu", dtype="float32", samples=count, cfg_scale=1.0, dit_path=None)
    facts = {"model": "models/patches",
             "features": f"benchmarks.quality.PatchFeatures: {describe_features(components)}",
             "real_reference": f"{count} real crops (seed {REAL_SEED})"}
    pairs = {key: floor[key] for key in ("mean", "std", "values")}
    return QualityProblem(load_problem("patches", args), count, features, features(real_crops(count, REAL_SEED)),
                          {"count": count, "repeats": floor_repeats, "pairs": pairs}, facts)


def images(latents: torch.Tensor) -> torch.Tensor:
    """Latents (= pixels, no VAE) clamped to [-1, 1], float64."""
    return latents.detach().double().cpu().clamp(-1, 1)


# ---------------------------------------------------------------------------------------- real data

def stratified_subsets(labels: np.ndarray, per_class: int, parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``parts`` disjoint index sets of the real data, each with ``per_class`` images of every class."""
    chosen: list[list[int]] = [[] for _ in range(parts)]
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        if len(members) < parts * per_class:
            raise ValueError(f"class {c} has {len(members)} real images, fewer than {parts} x {per_class}")
        for p in range(parts):
            chosen[p].extend(members[p * per_class:(p + 1) * per_class])
    return [np.sort(np.array(idx)) for idx in chosen]


def real_floors(real_features: np.ndarray, real_labels: np.ndarray, count: int, repeats: int,
                seed: int = REAL_SPLIT_SEED) -> dict[str, Any]:
    """FD of disjoint stratified real subsets of ``count`` (``pairs``) and of one subset vs the rest (``vs_rest``)."""
    rng = np.random.default_rng(seed)
    pairs, vs_rest = [], []
    everything = np.arange(len(real_labels))
    for _ in range(repeats):
        a, b = stratified_subsets(real_labels, count // NUM_CLASSES, 2, rng)
        pairs.append(fd_between(real_features[a], real_features[b]))
        vs_rest.append(fd_between(real_features[a], real_features[np.setdiff1d(everything, a)]))
    return {"count": count, "repeats": repeats, "pairs": _spread(pairs), "vs_rest": _spread(vs_rest)}


# ------------------------------------------------------------------------------------------ curves

def sequential_row(problem: QualityProblem, sampler: str, steps: int, seed: int) -> tuple[dict[str, Any], torch.Tensor]:
    """One sequential sampler: its record (FD filled in later) and its final latents."""
    from paratAA import sequential

    eps_fn, schedule, noise = problem.setup(sampler, steps, seed)
    start = time.perf_counter()
    samples = sequential(eps_fn, schedule, noise)[:, 0]
    row = {"sampler": sampler, "steps": steps, "seed": seed, "rounds": steps, "evaluations_per_sample": steps,
           "seconds": round(time.perf_counter() - start, 1)}
    return row, samples


def parallel_curve(problem: QualityProblem, method: str, sampler: str, steps: int,
                   seed: int, reference: torch.Tensor) -> dict[str, Any]:
    """One parallel solve (window T), the features of ``x0`` after every iteration and the final exactness.

    ``method``: a ``benchmarks.methods`` name, run out of the box (``default``: ``paratAA.solve`` with no
    options; the baselines: their default tolerances).
    ``reference``: the sequential sampler's final latents from the same noise.
    """
    from benchmarks.accuracy import per_sample_distances, spread
    from benchmarks.methods import method as registered

    eps_fn, schedule, noise = problem.setup(sampler, steps, seed)
    per_iteration: list[np.ndarray] = []
    done: list[float] = []
    evaluations: list[int] = []

    def record(rec: Any) -> None:
        per_iteration.append(problem.features(images(rec.x0)))  # keep features only: x0 is dropped after the callback
        done.append(float(np.mean([f == 0 for f in rec.frontier])))
        evaluations.append(rec.evaluations)

    start = time.perf_counter()
    result = registered(method).run(eps_fn, schedule, noise, steps, None, callback=record)  # out of the box
    settings = ("paratAA.solve defaults (RECOMMENDED), window T" if method == "default"
                else "window T, its default tolerance")
    distances = per_sample_distances(result.samples, reference)
    shown = per_sample_distances(images(result.samples), images(reference))  # what the pipeline shows
    return {"method": method, "sampler": sampler, "steps": steps, "seed": seed, "settings": settings,
            "iterations": result.iterations, "converged": result.converged,
            "iterations_spread": spread(list(result.per_sample_iterations)),
            "distance_from_sequential": {**spread(distances), "over_0.1": sum(d > 0.1 for d in distances),
                                         "images": spread(shown)},
            "evaluations_per_sample": float(np.cumsum(evaluations)[-1] / problem.count),
            "cumulative_evaluations_per_sample": [float(v) / problem.count for v in np.cumsum(evaluations)],
            "fraction_done": done, "seconds": round(time.perf_counter() - start, 1),
            "_features": per_iteration, "_final": problem.features(images(result.samples))}


def pixel_fd(a: np.ndarray, b: np.ndarray, components: int) -> float:
    """FD on the pixel block alone (the first ``components`` features of ``PatchFeatures``): a robustness check."""
    return fd_between(a[:, :components], b[:, :components])


def rises(values: list[float]) -> list[dict[str, float]]:
    """Iterations (1-based) whose FD exceeds the previous one's (by more than ``RISE``)."""
    return [{"k": k + 1, "from": a, "to": b} for k, (a, b) in enumerate(zip(values, values[1:]), start=1)
            if b > a + RISE]


def first_within(values: list[float], floor: float) -> int | None:
    """The first k (1-based) from which every value is ``<= floor`` (None: never)."""
    first = None
    for k, v in enumerate(values, start=1):
        if v <= floor:
            first = first or k
        else:
            first = None
    return first


# ------------------------------------------------------------------------------------------- run

def parse_curve(text: str) -> tuple[str, str, int]:
    """``"method:sampler:steps"`` (``--curves``) as a tuple."""
    from benchmarks.methods import METHODS

    parts = text.split(":")
    if len(parts) != 3 or parts[0] not in METHODS or parts[1] not in ("ddim", "dpm") or not parts[2].isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not method:sampler:steps (a benchmarks.methods name, ddim or "
                                         "dpm, a number of steps)")
    return parts[0], parts[1], int(parts[2])


def run(problem: QualityProblem, seed: int, seed2: int, ddim_steps: list[int], dpm_steps: list[int],
        curves: list[tuple[str, str, int]], components: int, log: Callable[[str], None] = print,
        partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every curve and floor (see the module docstring); ``partial`` gets the result so far after each part."""
    start = time.perf_counter()
    features, real, count = problem.features, problem.real, problem.count
    result: dict[str, Any] = {**problem.facts, "count": count, "seeds": [seed, seed2], "seed_stride": SEED_STRIDE,
                              "real_floor": problem.real_floor}
    rf = problem.real_floor
    log(f"real vs real ({count} vs {count}): {rf['pairs']['mean']:.3f} +- {rf['pairs']['std']:.3f}"
        + (f"; {count} vs rest: {rf['vs_rest']['mean']:.3f} +- {rf['vs_rest']['std']:.3f}" if "vs_rest" in rf else ""))

    kept: dict[tuple[str, int], tuple[np.ndarray, torch.Tensor]] = {}
    rows = []
    for sampler, steps in [("ddim", n) for n in ddim_steps] + [("dpm", n) for n in dpm_steps]:
        row, samples = sequential_row(problem, sampler, steps, seed)
        kept[(sampler, steps)] = (features(images(samples)), samples)
        row["fd_to_real"] = fd_between(kept[(sampler, steps)][0], real)
        row["fd_to_real_pixels"] = pixel_fd(kept[(sampler, steps)][0], real, components)
        rows.append(row)
        log(f"sequential {sampler:4s} {steps:4d} steps: FD to real {row['fd_to_real']:.3f} ({row['seconds']} s)")
    for need in [FLOOR_TARGET] + [(sampler, steps) for _, sampler, steps in curves]:  # targets not in the sweep
        if need not in kept:
            row, samples = sequential_row(problem, *need, seed)
            kept[need] = (features(images(samples)), samples)
    target = kept[FLOOR_TARGET][0]
    for row in rows:
        row["fd_to_ddim100"] = fd_between(kept[(row["sampler"], row["steps"])][0], target)
    result["sequential"] = rows

    row2, samples2 = sequential_row(problem, *FLOOR_TARGET, seed2)
    feats2 = features(images(samples2))
    seed_floor = {"sampler": FLOOR_TARGET[0], "steps": FLOOR_TARGET[1], "seeds": [seed, seed2],
                  "fd_between_seeds": fd_between(target, feats2),
                  "fd_to_real": [fd_between(target, real), fd_between(feats2, real)],
                  "fd_to_real_pixels": [pixel_fd(target, real, components), pixel_fd(feats2, real, components)],
                  "fd_between_seeds_pixels": pixel_fd(target, feats2, components), "seconds": row2["seconds"]}
    result["seed_floor"] = seed_floor
    floor = seed_floor["fd_between_seeds"]
    log(f"seed to seed (DDIM-100, seeds {seed} vs {seed2}): FD {floor:.3f}; FD to real "
        f"{seed_floor['fd_to_real'][0]:.3f} / {seed_floor['fd_to_real'][1]:.3f}")
    for row in rows:
        row["within_floor_of_ddim100"] = row["fd_to_ddim100"] <= floor
    if partial:
        partial(result)

    results = []
    for method, sampler, steps in curves:
        own, own_samples = kept[(sampler, steps)]
        curve = parallel_curve(problem, method, sampler, steps, seed, own_samples)
        per_iteration, final = curve.pop("_features"), curve.pop("_final")
        curve["fd_to_real"] = [fd_between(f, real) for f in per_iteration]
        curve["fd_to_real_pixels"] = [pixel_fd(f, real, components) for f in per_iteration]
        curve["fd_to_sequential"] = [fd_between(f, own) for f in per_iteration]
        curve["final_fd_to_real"] = fd_between(final, real)
        curve["sequential_fd_to_real"] = fd_between(own, real)
        curve["rises_fd_to_real"] = rises(curve["fd_to_real"])
        curve["rises_fd_to_sequential"] = rises(curve["fd_to_sequential"])
        curve["monotone_fd_to_real"] = not curve["rises_fd_to_real"]
        first = curve["first_k_within_floor_of_sequential"] = first_within(curve["fd_to_sequential"], floor)
        cumulative = curve["cumulative_evaluations_per_sample"]
        curve["evaluations_per_sample_by_then"] = None if first is None else cumulative[first - 1]
        results.append(curve)
        log(f"{method} {sampler}-{steps}: {curve['iterations']} iterations ({curve['seconds']} s); FD to real per "
            f"iteration {', '.join(f'{v:.2f}' for v in curve['fd_to_real'])}")
        result["parallel"] = results
        if partial:
            partial(result)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


# ---------------------------------------------------------------------------------------- report

def _name(curve: dict[str, Any]) -> str:
    return f"{curve['method']} {'DDIM' if curve['sampler'] == 'ddim' else 'DPM++ 2M'}-{curve['steps']}"


def tables(result: dict[str, Any]) -> str:
    """Markdown: FD to real per latency k (sequential at k steps, parallel after k iterations), floors, exactness."""
    seq = {(r["sampler"], r["steps"]): r for r in result["sequential"]}
    curves = result.get("parallel", [])
    longest = max([len(c["fd_to_real"]) for c in curves] + [0])
    ks = sorted({n for _, n in seq} | set(range(1, longest + 1)))
    head = ["k (rounds)", "DDIM k steps", "DPM++ 2M k steps"] + [_name(c) + " iter k" for c in curves]
    lines = [f"FD to {result['real_reference']} (lower is better; in parentheses for the parallel methods: FD to their own "
             "sequential sample set)\n", "| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for k in ks:
        cells = [f"{seq[(s, k)]['fd_to_real']:.2f}" if (s, k) in seq else "" for s in ("ddim", "dpm")]
        for c in curves:
            cells.append(f"{c['fd_to_real'][k - 1]:.2f} ({c['fd_to_sequential'][k - 1]:.2f})"
                         if k <= len(c["fd_to_real"]) else "")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    rf, sf = result["real_floor"], result["seed_floor"]
    lines += ["", "| floor | FD |", "|---|---:|",
              f"| real vs real, {rf['count']} vs {rf['count']} disjoint ({rf['repeats']} pairs) | "
              f"{rf['pairs']['mean']:.2f} +- {rf['pairs']['std']:.2f} |",
              *([f"| real {rf['count']} vs the other real digits ({rf['repeats']} splits) | "
                 f"{rf['vs_rest']['mean']:.2f} +- {rf['vs_rest']['std']:.2f} |"] if "vs_rest" in rf else []),
              f"| DDIM-100 seed {sf['seeds'][0]} vs seed {sf['seeds'][1]} | {sf['fd_between_seeds']:.2f} |",
              f"| DDIM-100 to real, seed {sf['seeds'][0]} / seed {sf['seeds'][1]} | "
              f"{sf['fd_to_real'][0]:.2f} / {sf['fd_to_real'][1]:.2f} |"]
    lines += ["", "| sequential | FD to real | FD to real, pixel block only | FD to DDIM-100 | within seed floor of "
              "DDIM-100 |", "|---|---:|---:|---:|:-:|"]
    for r in result["sequential"]:
        lines.append(f"| {'DDIM' if r['sampler'] == 'ddim' else 'DPM++ 2M'} {r['steps']} | {r['fd_to_real']:.2f} | "
                     f"{r['fd_to_real_pixels']:.2f} | {r['fd_to_ddim100']:.2f} | "
                     f"{'yes' if r['within_floor_of_ddim100'] else 'no'} |")
    if curves:
        lines += ["", "| parallel | iterations (per sample median / max) | evaluations / sample | final FD to real "
                  "(sequential's) | latent distance from sequential: max / p90 / median (samples > 0.1) | first k within "
                  "seed floor (evaluations / sample by then) "
                  "| FD-to-real rises at k |", "|---|---:|---:|---:|---:|---:|---|"]
        for c in curves:
            d, s = c["distance_from_sequential"], c["iterations_spread"]
            up = ", ".join(f"{r['k']} ({r['from']:.2f} -> {r['to']:.2f})" for r in c["rises_fd_to_real"]) or "none"
            lines.append(f"| {_name(c)} | {c['iterations']} ({s['median']:g} / {s['max']:g}) | "
                         f"{c['evaluations_per_sample']:.0f} | {c['final_fd_to_real']:.2f} "
                         f"({c['sequential_fd_to_real']:.2f}) | {d['max']:.1e} / {d['p90']:.1e} / {d['median']:.1e} "
                         f"({d['over_0.1']}) | {c['first_k_within_floor_of_sequential']} "
                         f"({c['evaluations_per_sample_by_then'] or 0:.0f}) | {up} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run, print the tables, write JSON."""
    from benchmarks.solver_overhead import machine_info

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", choices=sorted(MODEL_DEFAULTS), default="digits")
    parser.add_argument("--count", type=int, default=400, help="samples per set (digits: a multiple of 10, /10 per class)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of every curve")
    parser.add_argument("--seed2", type=int, default=1, help="second noise seed, for the seed-to-seed floor")
    parser.add_argument("--ddim_steps", type=int, nargs="+", default=None, help="(default: per --model)")
    parser.add_argument("--dpm_steps", type=int, nargs="+", default=None, help="(default: per --model)")
    parser.add_argument("--curves", type=parse_curve, nargs="*", default=None, metavar="METHOD:SAMPLER:STEPS",
                        help="parallel curves, e.g. default:ddim:100 ParaDiGMS:ddim:100 (default: per --model)")
    parser.add_argument("--components", type=int, default=16, help="PCA components per feature block")
    parser.add_argument("--floor_repeats", type=int, default=10)
    parser.add_argument("--cfg_scale", type=float, default=3.0, help="digits' guidance scale (patches: unguided)")
    parser.add_argument("--features_cache", type=Path, default=None,
                        help="patches: an .npz keeping benchmarks.quality's fitted feature space (created if missing)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON output (default: per --model, in benchmarks/results)")
    args = parser.parse_args(argv)
    if args.seed == args.seed2:
        parser.error("--seed2 must differ from --seed")
    defaults = MODEL_DEFAULTS[args.model]
    ddim_steps = args.ddim_steps or defaults["ddim_steps"]
    dpm_steps = args.dpm_steps or defaults["dpm_steps"]
    curves = args.curves if args.curves is not None else [parse_curve(c) for c in defaults["curves"]]
    out = args.out or DEFAULT_OUT[args.model]
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.frontier " + " ".join(argv if argv is not None else sys.argv[1:])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial_path = out.with_suffix(".partial.json")

    def write_partial(result: dict[str, Any]) -> None:
        partial_path.write_text(json.dumps(dict(result, partial=True, command=command.strip()), indent=1) + "\n")

    problem = (digits_problem(args.count, args.cfg_scale, args.components, args.floor_repeats) if args.model == "digits"
               else patches_problem(args.count, args.components, args.floor_repeats, args.features_cache))
    result = run(problem, args.seed, args.seed2, ddim_steps, dpm_steps, curves, args.components, partial=write_partial)
    result = {"benchmark": "frontier", "command": command.strip(), "machine": machine_info("cpu"), **result}
    print(tables(result))
    out.write_text(json.dumps(result, indent=1) + "\n")
    partial_path.unlink(missing_ok=True)
    print(f"wrote {out} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
