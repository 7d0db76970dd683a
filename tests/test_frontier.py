"""The feature space and real-data floors of benchmarks/frontier.py (seconds; no sampling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.frontier import NUM_CLASSES, stratified_subsets
from benchmarks.quality import PatchFeatures, fd_between

pytest.importorskip("sklearn")


def test_digit_features_fd_is_zero_for_a_set_with_itself_and_grows_with_a_shift():
    from training.train_digits import load_digit_images

    real, labels = load_digit_images()
    features = PatchFeatures.fit(real.double(), components=16)
    f = features(real)
    assert f.shape == (len(real), 32)
    np.testing.assert_allclose(f.std(axis=0, ddof=1), 1.0, atol=1e-6)  # whitened on the real digits
    assert fd_between(f, f) == pytest.approx(0.0, abs=1e-8)
    # brighter digits, then brighter still: the distance grows
    shifted = [fd_between(features((real + d).clamp(-1, 1)), f) for d in (0.1, 0.3)]
    assert 0.1 < shifted[0] < shifted[1]
    # the floors' subsets: disjoint, each with the same number of every class
    a, b = stratified_subsets(labels.numpy(), 20, 2, np.random.default_rng(0))
    assert not set(a) & set(b)
    for part in (a, b):
        assert np.bincount(labels.numpy()[part], minlength=NUM_CLASSES).tolist() == [20] * NUM_CLASSES
    assert torch.is_tensor(real) and real.min() >= -1 and real.max() <= 1
