"""Sample quality vs solver steps for the ``patches`` model: a Fréchet distance in a fixed, offline feature space.

Why: parallel sampling only matters on a model whose samples keep improving with more sequential
steps. This module measures that, with no network download and no pretrained feature network.

Feature space (``PatchFeatures``): two whitened PCA projections fitted once, deterministically, on
``fit_count`` real crops (``training.train_patches.real_crops`` with seed ``fit_seed``):

- the first ``components`` principal components of the pixels (colour, layout, coarse texture);
- the first ``components`` principal components of a high-pass image (the pixels minus their 3x3
  box blur, per channel), which carries the fine detail that few-step samplers get wrong.

Each block is divided by the square root of its real-data eigenvalues, so every direction has unit
variance on real crops and both blocks weigh alike. The Fréchet distance between two sets is
``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2)`` in float64.

Noise floor (``noise_floor``): the FD between independent sets of real crops of the same size,
repeated; any FD within a few times this floor is indistinguishable from "perfect" at that set size.

Usage::

    .venv/bin/python -m benchmarks.quality                                   # 4 seeds, the regime verdict (~1.5 h)
    .venv/bin/python -m benchmarks.quality --seeds 0 1 --out a.json &        # the same on two cores ...
    .venv/bin/python -m benchmarks.quality --seeds 2 3 --out b.json; wait    # ... merged:
    .venv/bin/python -m benchmarks.quality --merge a.json b.json
    .venv/bin/python -m benchmarks.quality --dpm_steps 10 50 --ddim_steps --seeds 0 1 \
        --out benchmarks/results/quality_patches_quick.json                  # a quick check
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
FIT_SEED = 1_000_003  # seeds of real crops for the benchmark, far from training's (0)
FIT_COUNT = 20_000  # real crops the benchmark's feature space is fitted on
REAL_SEED = 2_000_003


def describe_features(components: int) -> str:
    """The benchmark's feature space (``PatchFeatures.default``), in words, for result files."""
    return (f"whitened PCA-{components} pixels + whitened PCA-{components} 3x3 high-pass, fitted on {FIT_COUNT} real "
            f"crops (seed {FIT_SEED})")


def high_pass(images: torch.Tensor) -> torch.Tensor:
    """Images minus their per-channel 3x3 box blur (reflect padding): the fine detail."""
    channels = images.shape[1]
    kernel = torch.full((channels, 1, 3, 3), 1.0 / 9.0, dtype=images.dtype)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), kernel, groups=channels)
    return images - blurred


def _whitened_pca(data: np.ndarray, components: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and projection ``(D, k)`` whose outputs have unit variance on ``data``."""
    mean = data.mean(axis=0)
    cov = np.cov(data - mean, rowvar=False)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:components]  # eigh sorts ascending; take the largest
    # fix each eigenvector's sign (first largest-magnitude entry positive) so the space is reproducible
    vectors = vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    return mean, vectors * signs / np.sqrt(values[order])


@dataclass
class PatchFeatures:
    """A fixed feature map of ``(N, 3, H, W)`` images in [-1, 1] to float64 ``(N, 2 * components)``."""

    pixel_mean: np.ndarray
    pixel_projection: np.ndarray
    detail_mean: np.ndarray
    detail_projection: np.ndarray

    @classmethod
    def fit(cls, real: torch.Tensor, components: int = 16) -> "PatchFeatures":
        """Fit both whitened PCA blocks on real images (deterministic given the images)."""
        pixels = real.double().flatten(1).numpy()
        detail = high_pass(real.double()).flatten(1).numpy()
        return cls(*_whitened_pca(pixels, components), *_whitened_pca(detail, components))

    @classmethod
    def default(cls, components: int = 16, fit_count: int = FIT_COUNT, fit_seed: int = FIT_SEED) -> "PatchFeatures":
        """The benchmark's feature space: fitted on ``fit_count`` seeded real crops."""
        from training.train_patches import real_crops

        return cls.fit(real_crops(fit_count, fit_seed), components)

    @classmethod
    def cached(cls, path: Path | None, components: int = 16) -> "PatchFeatures":
        """``default`` fitted once and kept in an ``.npz`` file (fitting takes about a minute)."""
        if path is not None and Path(path).exists():
            with np.load(path) as data:
                if data["pixel_projection"].shape[1] == components:
                    return cls(**{key: data[key] for key in data.files})
        features = cls.default(components)
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            np.savez(path, **vars(features))
        return features

    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = images.detach().cpu().double()
        pixels = (images.flatten(1).numpy() - self.pixel_mean) @ self.pixel_projection
        detail = (high_pass(images).flatten(1).numpy() - self.detail_mean) @ self.detail_projection
        return np.concatenate([pixels, detail], axis=1)


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (unbiased) covariance of ``(N, D)`` features, float64."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians, in float64.

    ``tr((S1 S2)^1/2)`` is computed as ``tr((S1^1/2 S2 S1^1/2)^1/2)``, a symmetric PSD matrix, so
    only symmetric eigendecompositions are needed (no complex parts to discard).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _sqrt_psd(sigma1)
    middle = _sqrt_psd(root1 @ sigma2 @ root1)
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(middle))
    return max(value, 0.0)


def fd_between(a: np.ndarray, b: np.ndarray) -> float:
    """FD between two feature sets ``(N, D)`` and ``(M, D)``."""
    return frechet_distance(*statistics(a), *statistics(b))


def noise_floor(features: Callable[[torch.Tensor], np.ndarray], count: int = 400, repeats: int = 5,
                seed: int = REAL_SEED + 1) -> dict:
    """FD between pairs of independent real-crop sets of ``count`` images: mean, std and values."""
    from training.train_patches import real_crops

    values = []
    for r in range(repeats):
        a = features(real_crops(count, seed + 2 * r))
        b = features(real_crops(count, seed + 2 * r + 1))
        values.append(fd_between(a, b))
    return {"count": count, "repeats": repeats, "mean": float(np.mean(values)), "std": float(np.std(values)),
            "values": values}


# ---------------------------------------------------------------------------------------------- sampling

def load_transformer(model_dir: Path):
    """The DiT of a ``DiTPipeline`` directory (pixel space, one class)."""
    from diffusers import DiTTransformer2DModel

    return DiTTransformer2DModel.from_pretrained(Path(model_dir) / "transformer").eval()


def make_scheduler(sampler: str, spacing: str, model_dir: Path):
    """A diffusers scheduler over the model's training schedule: ``dpm`` (DPM++ 2M) or ``ddim``."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    config = DDPMScheduler.from_pretrained(Path(model_dir) / "scheduler").config
    if sampler == "dpm":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       timestep_spacing=spacing)
    if sampler == "ddim":  # the DiT convention of this repository: alpha_bar = 1 after the last step
        return DDIMScheduler.from_config(config, timestep_spacing=spacing, set_alpha_to_one=True, steps_offset=0,
                                         clip_sample=False)
    raise ValueError(f"unknown sampler {sampler!r}")


@torch.no_grad()
def sample(transformer, scheduler, steps: int, count: int, seed: int, batch: int = 200) -> torch.Tensor:
    """Sequential sampling of ``count`` images from seeded noise (the same noise for every sampler)."""
    noise = torch.randn((count, transformer.config.in_channels, transformer.config.sample_size,
                         transformer.config.sample_size), generator=torch.Generator().manual_seed(seed))
    outputs = []
    for chunk in noise.split(batch):
        scheduler.set_timesteps(steps)
        x = chunk * scheduler.init_noise_sigma
        labels = torch.zeros(len(x), dtype=torch.long)
        for t in scheduler.timesteps:
            model_input = scheduler.scale_model_input(x, t)
            eps = transformer(model_input, timestep=t.expand(len(x)), class_labels=labels).sample
            x = scheduler.step(eps, t, x).prev_sample
        outputs.append(x.clamp(-1, 1))
    return torch.cat(outputs)


def _summary(rows: list[dict]) -> list[dict]:
    """Per sampler configuration: the mean and the across-seed std (ddof 1) of its FD to real."""
    configs = sorted({(r["sampler"], r["spacing"], r["steps"]) for r in rows})
    summary = []
    for sampler, spacing, steps in configs:
        values = [r["fd"] for r in rows if (r["sampler"], r["spacing"], r["steps"]) == (sampler, spacing, steps)]
        summary.append({"sampler": sampler, "spacing": spacing, "steps": steps, "seeds": len(values),
                        "fd_mean": float(np.mean(values)),
                        "fd_std": float(np.std(values, ddof=1)) if len(values) > 1 else None})
    return summary


def seed_noise(summary: list[dict]) -> float | None:
    """The FD's seed-to-seed noise: the across-seed std of one FD value, pooled over configurations."""
    variances = [row["fd_std"] ** 2 for row in summary if row["fd_std"] is not None]
    return float(np.sqrt(np.mean(variances))) if variances else None


def regime(summary: list[dict], noise: float | None, factor: float = 5.0) -> dict:
    """Does quality keep improving with steps? (issue 18's test of a model worth sampling in parallel)

    ``"dpm"``: its ``gap``, the mean FD of DPM++ 2M at its fewest steps minus at its most (the best
    spacing, the one with the lower FD at its most steps), which should exceed ``factor`` x the seed noise.
    ``"ddim"``: ``fewest_within_noise``, the fewest DDIM steps whose mean FD is within the noise of the
    most steps', which should be >= 50. Each with ``holds``.
    """
    verdict: dict = {"noise": noise, "factor": factor}
    dpm = [r for r in summary if r["sampler"] == "dpm"]
    if dpm and noise:
        spacings = {r["spacing"] for r in dpm}
        best = min(spacings, key=lambda s: max((r for r in dpm if r["spacing"] == s), key=lambda r: r["steps"])["fd_mean"])
        rows = sorted((r for r in dpm if r["spacing"] == best), key=lambda r: r["steps"])
        gap = rows[0]["fd_mean"] - rows[-1]["fd_mean"]
        verdict["dpm"] = {"spacing": best, "fewest": rows[0]["steps"], "most": rows[-1]["steps"], "gap": gap,
                          "gap_over_noise": gap / noise, "holds": gap > factor * noise}
    ddim = sorted((r for r in summary if r["sampler"] == "ddim"), key=lambda r: r["steps"])
    if ddim and noise:
        target = ddim[-1]["fd_mean"]
        within = next(r["steps"] for r in ddim if r["fd_mean"] - target <= noise)
        verdict["ddim"] = {"reference_steps": ddim[-1]["steps"], "fewest_within_noise": within,
                           "gaps": {r["steps"]: r["fd_mean"] - target for r in ddim}, "holds": within >= 50}
    return verdict


def analysis(rows: list[dict]) -> dict:
    """What the rows say: the per-configuration ``summary``, the ``seed_noise`` and the ``regime`` verdict."""
    summary = _summary(rows)
    noise = seed_noise(summary)
    return {"summary": summary, "seed_noise": noise, "regime": regime(summary, noise)}


def run(model_dir: Path, dpm_steps: list[int], dpm_spacings: list[str], ddim_steps: list[int], ddim_spacing: str,
        count: int, seeds: list[int], components: int, floor_repeats: int,
        features_cache: Path | None = None, log: Callable[[str], None] = print,
        keep_features: dict | None = None) -> dict:
    """FD to real of every sampler configuration for every noise seed, the real-vs-real floor, the
    across-seed noise of the FD and the regime verdict (``regime``)."""
    from training.train_patches import real_crops

    start = time.perf_counter()
    features = PatchFeatures.cached(features_cache, components)
    real = features(real_crops(count, REAL_SEED))
    floor = noise_floor(features, count, floor_repeats)
    log(f"real-vs-real floor ({count} vs {count}, {floor_repeats} pairs): {floor['mean']:.3f} +- {floor['std']:.3f}")
    transformer = load_transformer(model_dir)
    rows = []
    configs = [("dpm", s, n) for s in dpm_spacings for n in dpm_steps] + [("ddim", ddim_spacing, n) for n in ddim_steps]
    last_config_sets: dict[int, np.ndarray] = {}  # per seed, the features of the last configuration (the FD between seeds)
    for seed in seeds:
        for sampler, spacing, steps in configs:
            t0 = time.perf_counter()
            images = sample(transformer, make_scheduler(sampler, spacing, model_dir), steps, count, seed)
            feats = features(images)
            if (sampler, spacing, steps) == configs[-1]:
                last_config_sets[seed] = feats
            if keep_features is not None:
                keep_features[f"{sampler}_{spacing}_{steps}_seed{seed}"] = feats
            rows.append({"sampler": sampler, "spacing": spacing, "steps": steps, "seed": seed,
                         "fd": fd_between(feats, real), "seconds": round(time.perf_counter() - t0, 1)})
            log(f"seed {seed}  {sampler:5s} {spacing:9s} {steps:4d} steps  FD {rows[-1]['fd']:8.3f}  "
                f"({rows[-1]['seconds']} s)")
    if keep_features is not None:
        keep_features["real"] = real
    found = analysis(rows)
    noise = found["seed_noise"]
    between = ([fd_between(last_config_sets[seeds[0]], last_config_sets[seeds[1]])] if len(seeds) > 1 else [])
    if noise is not None:
        log(f"seed-to-seed noise of one FD (std over {len(seeds)} seeds, pooled): {noise:.3f}; FD between the "
            f"sample sets of seeds {seeds[0]} and {seeds[1]} ({' '.join(map(str, configs[-1]))}): {between[0]:.3f}")
    return {"model": str(model_dir), "count": count, "features": describe_features(components),
            "real_seed": REAL_SEED, "seeds": seeds, "real_floor": floor, "fd_between_seed_sets": between,
            **found, "rows": rows,
            "seconds": round(time.perf_counter() - start, 1), "torch_threads": torch.get_num_threads()}


def merge(parts: list[dict]) -> dict:
    """One result from runs of the same configurations with disjoint seeds (run in parallel processes):
    rows joined, summary, seed noise and verdict recomputed; the first part's floor and FD between seed sets."""
    first = parts[0]
    for part in parts[1:]:
        if (part["model"], part["count"], part["features"]) != (first["model"], first["count"], first["features"]):
            raise SystemExit("--merge: the runs differ in model, count or feature space")
    seeds = [seed for part in parts for seed in part["seeds"]]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--merge: the runs share noise seeds ({seeds})")
    rows = [row for part in parts for row in part["rows"]]
    return {**first, "seeds": seeds, "rows": rows, **analysis(rows), "seconds": sum(part["seconds"] for part in parts),
            "merged_from": [part.get("command") for part in parts]}


def table(result: dict) -> str:
    """A markdown table of mean FD (+- across-seed std) vs steps, one column per sampler configuration."""
    summary = result.get("summary") or _summary(result["rows"])
    columns = sorted({(r["sampler"], r["spacing"]) for r in summary})
    steps = sorted({r["steps"] for r in summary})
    lookup = {(r["sampler"], r["spacing"], r["steps"]): r for r in summary}

    def cell(row: dict | None) -> str:
        if row is None:
            return ""
        return f"{row['fd_mean']:.2f}" + (f" +- {row['fd_std']:.2f}" if row["fd_std"] is not None else "")

    lines = ["| steps | " + " | ".join(f"{s} {p}" for s, p in columns) + " |",
             "|---:|" + "---:|" * len(columns)]
    for n in steps:
        lines.append(f"| {n} | " + " | ".join(cell(lookup.get((s, p, n))) for s, p in columns) + " |")
    return "\n".join(lines)


def describe_regime(verdict: dict) -> list[str]:
    """One line per test of ``regime``'s verdict."""
    lines = []
    if "dpm" in verdict:
        d = verdict["dpm"]
        lines.append(f"DPM++ 2M ({d['spacing']}): FD{d['fewest']} - FD{d['most']} = {d['gap']:.3f} = "
                     f"{d['gap_over_noise']:.1f}x the seed noise ({'holds' if d['holds'] else 'fails'}: "
                     f"> {verdict['factor']:g}x)")
    if "ddim" in verdict:
        d = verdict["ddim"]
        lines.append(f"DDIM: fewest steps within the noise of DDIM-{d['reference_steps']}: {d['fewest_within_noise']} "
                     f"({'holds' if d['holds'] else 'fails'}: >= 50)")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "patches",
                        help="a DiTPipeline directory (pixel space, one class)")
    parser.add_argument("--count", type=int, default=400, help="images per set")
    parser.add_argument("--dpm_steps", type=int, nargs="*", default=[10, 20, 50])
    parser.add_argument("--dpm_spacings", nargs="+", default=["trailing"])
    parser.add_argument("--ddim_steps", type=int, nargs="*", default=[25, 50, 100, 250])
    parser.add_argument("--ddim_spacing", default="trailing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3],
                        help="noise seeds; each configuration is sampled with each (the FD's seed noise)")
    parser.add_argument("--components", type=int, default=16, help="PCA components per feature block")
    parser.add_argument("--floor_repeats", type=int, default=5)
    parser.add_argument("--features_cache", type=Path, default=None,
                        help="an .npz file keeping the fitted feature space between runs (created if missing)")
    parser.add_argument("--save_features", action="store_true",
                        help="also write every set's features to an .npz next to --out (for paired comparisons)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "quality_patches.json")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, metavar="JSON",
                        help="do not sample: merge these results of disjoint --seeds into --out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kept: dict | None = {} if args.save_features else None
    if args.merge:
        result = merge([json.loads(path.read_text()) for path in args.merge])
    else:
        result = run(args.model, args.dpm_steps, args.dpm_spacings, args.ddim_steps, args.ddim_spacing, args.count,
                     args.seeds, args.components, args.floor_repeats, args.features_cache, keep_features=kept)
    result["command"] = "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:])
    print(table(result))
    print("\n".join(describe_regime(result["regime"])))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    if kept:
        np.savez(args.out.with_suffix(".features.npz"), **kept)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
