"""Property tests of benchmarks/quality.py: the Fréchet distance and the fixed feature space (seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.quality import PatchFeatures, fd_between, frechet_distance, high_pass, statistics


def _gaussian(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) / np.sqrt(d)
    return rng.normal(size=(n, d)) @ mixing


def test_fd_of_a_set_with_itself_is_zero():
    x = _gaussian(500, 12, 0)
    assert fd_between(x, x) == pytest.approx(0.0, abs=1e-8)


def test_fd_of_a_mean_shift_is_the_squared_shift():
    # same covariance, so the trace term vanishes and FD = |delta|^2 exactly
    x = _gaussian(500, 12, 1)
    delta = np.linspace(-0.5, 0.5, 12)
    assert fd_between(x, x + delta) == pytest.approx(float(delta @ delta), rel=1e-6)
    # and it grows with the shift: 3x the shift, 9x the distance
    assert fd_between(x, x + 3 * delta) == pytest.approx(9 * float(delta @ delta), rel=1e-6)


def test_fd_matches_the_closed_form_for_diagonal_gaussians():
    a, b = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 2.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_fd_is_symmetric_and_nonnegative():
    x, y = _gaussian(300, 8, 2), _gaussian(300, 8, 3) * 1.3 + 0.2
    assert fd_between(x, y) == pytest.approx(fd_between(y, x), rel=1e-8)
    assert fd_between(x, y) > 0


def test_statistics_are_float64():
    mu, sigma = statistics(np.ones((4, 3), dtype=np.float32) + np.arange(4, dtype=np.float32)[:, None])
    assert mu.dtype == np.float64 and sigma.dtype == np.float64 and sigma.shape == (3, 3)


def test_high_pass_removes_constants():
    assert torch.allclose(high_pass(torch.full((2, 3, 8, 8), 0.7)), torch.zeros(2, 3, 8, 8), atol=1e-6)


def _images(seed: int, n: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(n, 3, 10, 10, generator=g), 3, stride=1)
    return smooth.clamp(-1, 1)


def test_feature_space_is_deterministic_and_whitened():
    real = _images(0)
    first, second = PatchFeatures.fit(real, components=6), PatchFeatures.fit(real, components=6)
    probe = _images(1, 50)
    assert np.array_equal(first(probe), second(probe))  # same fit, same features
    assert np.array_equal(first(probe), first(probe))
    features = first(real)
    assert features.shape == (300, 12) and features.dtype == np.float64
    # unit variance on the data it was fitted on
    assert np.allclose(features.var(axis=0, ddof=1), 1.0, atol=1e-6)


def test_fd_in_feature_space_sees_a_brightness_shift():
    space = PatchFeatures.fit(_images(0), components=6)
    a, b = space(_images(1)), space(_images(2))
    assert fd_between(space(_images(1) + 0.3), b) > 5 * fd_between(a, b)


def test_real_crops_are_offline_and_seeded():
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from training.train_patches import real_crops

    crops = real_crops(6, seed=5)
    assert crops.shape == (6, 3, 32, 32) and crops.min() >= -1 and crops.max() <= 1
    assert torch.equal(crops, real_crops(6, seed=5))
    assert not torch.equal(crops, real_crops(6, seed=6))


def test_the_paper_tables_feature_module_is_the_same_space_on_uint8_images():
    """benchmarks.metrics.PatchFeatureModule (the FID column of paper_tables on the patches model)."""
    from benchmarks.metrics import PatchFeatureModule

    crops = torch.nn.functional.interpolate(_images(0, 20), size=32, mode="bilinear")
    rng = np.random.default_rng(0)  # any fixed space will do (fitting one on 3,072 pixels takes seconds)
    space = PatchFeatures(rng.normal(size=3072) * 0.1, rng.normal(size=(3072, 6)), rng.normal(size=3072) * 0.1,
                          rng.normal(size=(3072, 6)))
    module = PatchFeatureModule(space)
    uint8 = ((crops[:20] + 1) * 127.5).round().to(torch.uint8)
    assert module.num_features == 12
    np.testing.assert_allclose(module(uint8).numpy(), space(uint8.double() / 127.5 - 1), atol=1e-10)
    assert module(torch.zeros(1, 3, 299, 299, dtype=torch.uint8)).shape == (1, 12)  # torchmetrics' probe size


def _rows(fds: dict[tuple[str, int], list[float]]) -> list[dict]:
    return [{"sampler": s, "spacing": "trailing", "steps": n, "seed": seed, "fd": fd}
            for (s, n), values in fds.items() for seed, fd in enumerate(values)]


def test_regime_verdict_compares_gaps_with_the_across_seed_noise():
    from benchmarks.quality import _summary, regime, seed_noise

    rows = _rows({("dpm", 10): [4.0, 4.2], ("dpm", 50): [2.8, 3.0],
                  ("ddim", 25): [3.6, 3.8], ("ddim", 50): [3.1, 3.3], ("ddim", 100): [2.95, 3.15],
                  ("ddim", 250): [2.9, 3.1]})
    summary = _summary(rows)
    noise = seed_noise(summary)
    assert noise == pytest.approx(np.sqrt(0.02))  # every configuration: std (ddof 1) of two values 0.2 apart
    verdict = regime(summary, noise)
    assert verdict["dpm"]["gap"] == pytest.approx(1.2) and verdict["dpm"]["holds"]  # 1.2 > 5 x 0.141
    # DDIM-50 is 0.2 above DDIM-250 (beyond the noise 0.141), DDIM-100 0.05 (within it)
    assert verdict["ddim"]["fewest_within_noise"] == 100 and verdict["ddim"]["holds"]
    flat = regime(_summary(_rows({("dpm", 10): [3.0, 3.2], ("dpm", 50): [2.9, 3.1],
                                  ("ddim", 25): [2.95, 3.15], ("ddim", 250): [2.9, 3.1]})), noise)
    assert not flat["dpm"]["holds"] and flat["ddim"]["fewest_within_noise"] == 25 and not flat["ddim"]["holds"]


def test_merge_joins_disjoint_seeds_and_refuses_shared_ones():
    from benchmarks.quality import merge

    part = {"model": "m", "count": 4, "features": "f", "seconds": 1.0, "command": "c"}
    a = {**part, "seeds": [0, 1], "rows": _rows({("dpm", 10): [4.0, 4.2]})}
    b_rows = [dict(row, seed=row["seed"] + 2) for row in _rows({("dpm", 10): [4.4, 4.6]})]
    merged = merge([a, {**part, "seeds": [2, 3], "rows": b_rows}])
    assert merged["seeds"] == [0, 1, 2, 3] and merged["summary"][0]["seeds"] == 4
    assert merged["summary"][0]["fd_mean"] == pytest.approx(4.3)
    with pytest.raises(SystemExit, match="share noise seeds"):
        merge([a, a])
