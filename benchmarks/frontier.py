"""Quality against latency on the ``digits`` model: sequential samplers at k steps, parallel solvers after k iterations.

Why: a parallel solver's gain is real only at equal quality. Latency is counted in **rounds of
network calls** (k): a sequential sampler with k steps makes k rounds, a parallel solver k rounds
after k iterations (each round then evaluates up to a window of steps per sample, so it costs more
compute; the ``evaluations`` column says how much). Quality is a Fréchet distance (FD) to the real
digits in a fixed feature space.

Problem (the model of ``models/digits``, as ``benchmarks.problems`` loads it): ``count`` samples,
``count / 10`` per class (labels 0..9 in blocks), guidance scale 3, float32 network, float64 solver.
Sample ``j`` of noise seed ``s`` draws its noise with ``paratAA.sample_noise`` seed
``s * SEED_STRIDE + j`` (seed 0 is the other benchmarks' noise; seed 1 must not reuse seeds
1..count-1 of seed 0, as ``sample_noise(1, ...)`` would). Every sampler starts from the same ``x[T]``.

Samplers (``benchmarks.problems.ordinary_scheduler`` over the model's DDIM configuration, ``linspace``
timesteps, final alpha 1, as in ``benchmarks.accuracy``):

- sequential DDIM (eta 0) at ``--ddim_steps`` and DPM-Solver++ 2M at ``--dpm_steps`` steps;
- ``paratAA.solve`` with its default options (``RECOMMENDED``; window T) on DDIM-100 and on DPM++ 2M-20,
  and ParaDiGMS (``paratAA.baselines.paradigms``, window T, its default tolerance 0.1) on DDIM-100: the
  FD of each iteration's ``IterationRecord.x0`` (each sample's current estimate of ``x[0]``).

Images are clamped to [-1, 1] (what the pipeline shows) before the features.

Feature space: ``benchmarks.quality.PatchFeatures`` (whitened PCA of the pixels plus whitened PCA of a
3x3 high-pass image, ``--components`` each; channel-agnostic) fitted once on all 1,797 real digits
(``training.train_digits.load_digit_images``). The real reference is the same 1,797 images.

Noise floors:

- real vs real: FD between disjoint class-stratified random subsets of ``count`` real digits
  (``count / 10`` per class, as the samples), ``--floor_repeats`` pairs; and FD between a stratified
  subset of ``count`` and the remaining real digits (the closest analogue of "``count`` samples vs the
  real set");
- seed to seed: FD between sequential DDIM-100 sets from seeds ``--seed`` and ``--seed2``, and each
  one's FD to the real set. A k is "within the floor" of a target when the FD of its set to the
  target's set (same noise) is at most the seed-to-seed FD: the two sets then differ less than two
  seeds of the target itself do.

Usage::

    .venv/bin/python -m benchmarks.quality_digits                       # the full run (15-18 min on 1 shared core)
    .venv/bin/python -m benchmarks.quality_digits --count 20 --out /tmp/quality_digits_smoke.json  # a smoke test
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
DEFAULT_OUT = REPO / "benchmarks" / "results" / "quality_digits.json"
NUM_CLASSES = 10
SEED_STRIDE = 1_000_000  # noise seed s uses per-sample seeds s * SEED_STRIDE + j: disjoint for s = 0, 1, ...
REAL_SPLIT_SEED = 12345  # the random real subsets of the floors
RISE = 0.005  # an FD "rises" when it exceeds the previous iteration's by more than this (half the printed 0.01)


# ------------------------------------------------------------------------------------------ problem

@dataclass
class DigitsProblem:
    """The registry's ``digits`` problem (``benchmarks.problems``) with fixed labels, noise by seed.

    Attributes:
        problem: the ``benchmarks.problems.Problem`` (float32 network, CPU).
        labels: per sample, its class.
    """

    problem: Any
    labels: list[int]

    @classmethod
    def load(cls, count: int, cfg_scale: float = 3.0) -> "DigitsProblem":
        """``count`` samples, ``count // 10`` per class in blocks (0, 0, ..., 1, 1, ...)."""
        from benchmarks.problems import load_problem

        if count < NUM_CLASSES or count % NUM_CLASSES:
            raise ValueError(f"count must be a positive multiple of {NUM_CLASSES}, got {count}")
        labels = [c for c in range(NUM_CLASSES) for _ in range(count // NUM_CLASSES)]
        args = argparse.Namespace(device="cpu", dtype="float32", samples=count, cfg_scale=cfg_scale, labels=labels,
                                  dit_path=None)
        return cls(load_problem("digits", args), labels)

    def setup(self, sampler: str, steps: int, seed: int) -> tuple[Callable, Any, torch.Tensor]:
        """``(eps_fn, schedule, noise)`` of ``sampler`` (``"ddim"`` or ``"dpm"``) at ``steps`` for noise seed
        ``seed`` (see the module docstring); ``x[T]`` scaled by the scheduler's ``init_noise_sigma``."""
        from paratAA import Schedule, sample_noise

        scheduler = self.problem.make_scheduler(sampler, steps)
        schedule = Schedule.from_scheduler(scheduler, eta=0.0)
        noise = sample_noise(seed * SEED_STRIDE, len(self.labels), steps, self.problem.latent_shape)
        noise[:, steps] *= float(getattr(scheduler, "init_noise_sigma", 1.0))
        return self.problem.make_eps_fn(schedule), schedule, noise


def images(latents: torch.Tensor) -> torch.Tensor:
    """Latents (= pixels, no VAE) clamped to [-1, 1], float64 ``(N, 1, 16, 16)``."""
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

    def summary(values: list[float]) -> dict[str, Any]:
        return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}

    return {"count": count, "repeats": repeats, "pairs": summary(pairs), "vs_rest": summary(vs_rest)}


# ------------------------------------------------------------------------------------------ curves

def sequential_row(problem: DigitsProblem, sampler: str, steps: int, seed: int) -> tuple[dict[str, Any], torch.Tensor]:
    """One sequential sampler: its record (FD filled in later) and its final latents."""
    from paratAA import sequential

    eps_fn, schedule, noise = problem.setup(sampler, steps, seed)
    start = time.perf_counter()
    samples = sequential(eps_fn, schedule, noise)[:, 0]
    row = {"sampler": sampler, "steps": steps, "seed": seed, "rounds": steps, "evaluations_per_sample": steps,
           "seconds": round(time.perf_counter() - start, 1)}
    return row, samples


def parallel_curve(problem: DigitsProblem, features: PatchFeatures, method: str, sampler: str, steps: int,
                   seed: int, reference: torch.Tensor) -> dict[str, Any]:
    """One parallel solve (window T), the features of ``x0`` after every iteration and the final exactness.

    ``method``: ``"default"`` (``paratAA.solve`` with no options) or ``"ParaDiGMS"`` (its default tolerance).
    ``reference``: the sequential sampler's final latents from the same noise.
    """
    from benchmarks.accuracy import per_sample_distances, spread
    from benchmarks.methods import method as registered
    from paratAA.baselines.paradigms import DEFAULT_TOLERANCE

    eps_fn, schedule, noise = problem.setup(sampler, steps, seed)
    per_iteration: list[np.ndarray] = []
    done: list[float] = []
    evaluations: list[int] = []

    def record(rec: Any) -> None:
        per_iteration.append(features(images(rec.x0)))  # keep features only: x0 is dropped after the callback
        done.append(float(np.mean([f == 0 for f in rec.frontier])))
        evaluations.append(rec.evaluations)

    start = time.perf_counter()
    # The registry's methods (benchmarks.methods): the default out of the box, ParaDiGMS at its default tolerance.
    tolerance = None if method == "default" else DEFAULT_TOLERANCE
    result = registered(method).run(eps_fn, schedule, noise, steps, tolerance, callback=record)
    settings = ("paratAA.solve defaults (RECOMMENDED), window T" if tolerance is None
                else f"window T, tolerance {tolerance}")
    distances = per_sample_distances(result.samples, reference)
    shown = per_sample_distances(images(result.samples), images(reference))  # what the pipeline shows
    return {"method": method, "sampler": sampler, "steps": steps, "seed": seed, "settings": settings,
            "iterations": result.iterations, "converged": result.converged,
            "iterations_spread": spread(list(result.per_sample_iterations)),
            "distance_from_sequential": {**spread(distances), "over_0.1": sum(d > 0.1 for d in distances),
                                         "images": spread(shown)},
            "evaluations_per_sample": float(np.cumsum(evaluations)[-1] / len(problem.labels)),
            "cumulative_evaluations_per_sample": [float(v) / len(problem.labels) for v in np.cumsum(evaluations)],
            "fraction_done": done, "seconds": round(time.perf_counter() - start, 1),
            "_features": per_iteration, "_final": features(images(result.samples))}


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

def run(count: int, seed: int, seed2: int, ddim_steps: list[int], dpm_steps: list[int], components: int,
        floor_repeats: int, cfg_scale: float = 3.0, log: Callable[[str], None] = print,
        partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every curve and floor (see the module docstring); ``partial`` gets the result so far after each part."""
    from training.train_digits import load_digit_images

    start = time.perf_counter()
    real_images, real_labels = load_digit_images()
    features = PatchFeatures.fit(real_images.double(), components)
    real = features(real_images)
    result: dict[str, Any] = {
        "model": "models/digits", "count": count, "per_class": count // NUM_CLASSES, "cfg_scale": cfg_scale,
        "seeds": [seed, seed2], "seed_stride": SEED_STRIDE,
        "features": f"benchmarks.quality.PatchFeatures: whitened PCA-{components} pixels + whitened "
                    f"PCA-{components} 3x3 high-pass, fitted on all {len(real_labels)} real digits",
        "real_reference": f"all {len(real_labels)} real digits"}
    result["real_floor"] = real_floors(real, real_labels.numpy(), count, floor_repeats)
    log(f"real vs real ({count} vs {count}): {result['real_floor']['pairs']['mean']:.3f} "
        f"+- {result['real_floor']['pairs']['std']:.3f}; {count} vs rest: "
        f"{result['real_floor']['vs_rest']['mean']:.3f} +- {result['real_floor']['vs_rest']['std']:.3f}")

    problem = DigitsProblem.load(count, cfg_scale)
    kept: dict[tuple[str, int], tuple[np.ndarray, torch.Tensor]] = {}
    rows = []
    for sampler, steps in [("ddim", n) for n in ddim_steps] + [("dpm", n) for n in dpm_steps]:
        row, samples = sequential_row(problem, sampler, steps, seed)
        kept[(sampler, steps)] = (features(images(samples)), samples)
        row["fd_to_real"] = fd_between(kept[(sampler, steps)][0], real)
        row["fd_to_real_pixels"] = pixel_fd(kept[(sampler, steps)][0], real, components)
        rows.append(row)
        log(f"sequential {sampler:4s} {steps:4d} steps: FD to real {row['fd_to_real']:.3f} ({row['seconds']} s)")
    for need in (("ddim", 100), ("dpm", 20)):  # the parallel curves' targets, if not in the sweep
        if need not in kept:
            row, samples = sequential_row(problem, *need, seed)
            kept[need] = (features(images(samples)), samples)
    target = kept[("ddim", 100)][0]
    for row in rows:
        row["fd_to_ddim100"] = fd_between(kept[(row["sampler"], row["steps"])][0], target)
    result["sequential"] = rows

    row2, samples2 = sequential_row(problem, "ddim", 100, seed2)
    feats2 = features(images(samples2))
    seed_floor = {"sampler": "ddim", "steps": 100, "seeds": [seed, seed2], "fd_between_seeds": fd_between(target, feats2),
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

    curves = []
    for method, sampler, steps in (("default", "ddim", 100), ("default", "dpm", 20), ("ParaDiGMS", "ddim", 100)):
        own, own_samples = kept[(sampler, steps)]
        curve = parallel_curve(problem, features, method, sampler, steps, seed, own_samples)
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
        curves.append(curve)
        log(f"{method} {sampler}-{steps}: {curve['iterations']} iterations ({curve['seconds']} s); FD to real per "
            f"iteration {', '.join(f'{v:.2f}' for v in curve['fd_to_real'])}")
        result["parallel"] = curves
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
    lines = ["FD to the real digits (lower is better; in parentheses for the parallel methods: FD to their own "
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
              f"| real {rf['count']} vs the other real digits ({rf['repeats']} splits) | "
              f"{rf['vs_rest']['mean']:.2f} +- {rf['vs_rest']['std']:.2f} |",
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
    parser.add_argument("--count", type=int, default=400, help="samples per set, a multiple of 10 (per class: /10)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of every curve")
    parser.add_argument("--seed2", type=int, default=1, help="second noise seed, for the seed-to-seed floor")
    parser.add_argument("--ddim_steps", type=int, nargs="+", default=[1, 2, 3, 5, 10, 20, 50, 100])
    parser.add_argument("--dpm_steps", type=int, nargs="+", default=[2, 3, 5, 10, 20])
    parser.add_argument("--components", type=int, default=16, help="PCA components per feature block")
    parser.add_argument("--floor_repeats", type=int, default=10)
    parser.add_argument("--cfg_scale", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.seed == args.seed2:
        parser.error("--seed2 must differ from --seed")
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.quality_digits " + " ".join(argv if argv is not None else sys.argv[1:])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial_path = args.out.with_suffix(".partial.json")

    def write_partial(result: dict[str, Any]) -> None:
        partial_path.write_text(json.dumps(dict(result, partial=True, command=command.strip()), indent=1) + "\n")

    result = run(args.count, args.seed, args.seed2, args.ddim_steps, args.dpm_steps, args.components,
                 args.floor_repeats, args.cfg_scale, partial=write_partial)
    result = {"benchmark": "quality_digits", "command": command.strip(), "machine": machine_info("cpu"), **result}
    print(tables(result))
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    partial_path.unlink(missing_ok=True)
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
