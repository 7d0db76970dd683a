"""The trained digits model: loads offline like any model directory, samples exactly, draws digits."""

import numpy as np
import pytest
import torch

from models import load_dit
from models.dit import DIGITS_DIR
from paratAA import sample_noise, sequential, solve

pytestmark = pytest.mark.usefixtures("single_thread")
CLASSES = list(range(10))


@pytest.fixture(scope="module")
def digits():
    return load_dit("digits", device="cpu")


def test_loads_offline_as_a_pixel_space_pipeline_directory(digits):
    assert (DIGITS_DIR / "model_index.json").is_file() and (DIGITS_DIR / "README.md").is_file()
    assert digits.vae is None and digits.latent_shape == (1, 16, 16) and digits.num_classes == 10
    same = load_dit(str(DIGITS_DIR), device="cpu")  # the same directory by path: the same weights
    for p, q in zip(digits.transformer.parameters(), same.transformer.parameters()):
        assert torch.equal(p, q)
    images = digits.decode(torch.full((2, 1, 16, 16), -1.0))
    assert images[0].mode == "L" and images[0].size == (16, 16) and np.asarray(images[0]).max() == 0


def test_converged_solve_equals_sequential_and_diffusers_step_loop(digits):
    schedule = digits.make_schedule(25, 0.0)
    eps_fn = digits.eps_fn([3, 7], 3.0)
    noise = sample_noise(0, 2, 25, digits.latent_shape)
    result = solve(eps_fn, schedule, noise, tol1=1e-6, tol2=0.0)  # near the float32 network's rounding
    reference = sequential(eps_fn, schedule, noise)[:, 0]
    oracle = digits.sequential_reference(noise, [3, 7], 3.0, 25, 0.0)
    assert result.converged and result.iterations < 25
    # float32 network evaluated in batches of other sizes: agreement to float32 rounding, amplified.
    assert (result.samples - reference).abs().max() < 1e-4
    assert (result.samples - oracle).abs().max() < 1e-4


def _digit_classifier():
    """Logistic regression on scikit-learn's 8x8 digits (the training data), for 8x8 grey images in [0, 16]."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    data = load_digits()
    return LogisticRegression(max_iter=2000).fit(data.data, data.target)


def test_samples_are_recognisable_digits_of_the_requested_class(digits):
    labels = CLASSES * 2
    schedule = digits.make_schedule(50, 0.0)
    noise = sample_noise(0, len(labels), 50, digits.latent_shape)
    samples = solve(digits.eps_fn(labels, 3.0), schedule, noise).samples
    pixels = torch.nn.functional.avg_pool2d(samples.float().clamp(-1, 1), 2)  # 16x16 -> 8x8
    features = ((pixels + 1) * 8).flatten(1).numpy()  # [-1, 1] -> the data's 0..16 scale
    predicted = _digit_classifier().predict(features)
    agreement = float(np.mean(predicted == np.array(labels)))
    assert agreement >= 0.8, f"only {agreement:.0%} of the samples were classified as requested: {predicted}"
