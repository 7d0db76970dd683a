"""The trained digits model: loads offline like any model directory, samples exactly, draws digits."""

import numpy as np
import pytest
import torch

from paratAA import sample_noise, sequential, solve
from paratAA.cli.models import load_dit
from paratAA.pipelines.defaults import trained_model_dir
from paratAA.pipelines.runner import class_conditioning

pytestmark = pytest.mark.usefixtures("single_thread")
CLASSES = list(range(10))


@pytest.fixture(scope="module")
def digits():
    runner = load_dit("digits", device="cpu")
    runner.make_schedule(25)
    return runner


def test_loads_offline_as_a_pixel_space_pipeline_directory(digits):
    folder = trained_model_dir("digits")
    assert (folder / "model_index.json").is_file() and (folder / "README.md").is_file()
    assert digits.pipe.vae is None and digits.latent_shape == (1, 16, 16) and digits.adapter.num_classes == 10
    same = load_dit(str(folder), device="cpu")  # the same directory by path: the same weights
    for p, q in zip(digits.pipe.transformer.parameters(), same.pipe.transformer.parameters()):
        assert torch.equal(p, q)
    images = digits.decode(torch.full((2, 1, 16, 16), -1.0))
    assert images[0].mode == "L" and images[0].size == (16, 16) and np.asarray(images[0]).max() == 0


def test_guidance_uses_the_models_own_null_class(digits):
    """DiTPipeline writes the null class as label 1000; this model's null class is 10 (its label dropout)."""
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps, samples = torch.tensor([0, 10, 20]), torch.tensor([0, 1, 0])
    out = digits.eps_fn(class_conditioning([3, 7], 2.5))(x, steps, samples)
    t = digits.schedule.timesteps[steps]

    def direct(labels):
        with torch.no_grad():
            return digits.pipe.transformer(x.float(), timestep=t, class_labels=torch.tensor(labels)).sample.double()

    cond, uncond = direct([3, 7, 3]), direct([10, 10, 10])
    torch.testing.assert_close(out, uncond + 2.5 * (cond - uncond), rtol=1e-5, atol=1e-5)


def test_converged_solve_equals_sequential_and_diffusers_step_loop(digits):
    schedule = digits.make_schedule(25, 0.0)
    conditioning = class_conditioning([3, 7], 3.0)  # guided: DiTPipeline's null label 1000 becomes class 10
    eps_fn = digits.eps_fn(conditioning)
    noise = sample_noise(0, 2, 25, digits.latent_shape)
    result = solve(eps_fn, schedule, noise, tol1=1e-6, tol2=0.0)  # near the float32 network's rounding
    reference = sequential(eps_fn, schedule, noise)[:, 0]
    oracle = digits.sequential_reference(noise, conditioning, 0.0, seed=0)  # diffusers' step loop (no VAE)
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
    samples = solve(digits.eps_fn(class_conditioning(labels, 3.0)), schedule, noise).samples
    pixels = torch.nn.functional.avg_pool2d(samples.float().clamp(-1, 1), 2)  # 16x16 -> 8x8
    features = ((pixels + 1) * 8).flatten(1).numpy()  # [-1, 1] -> the data's 0..16 scale
    predicted = _digit_classifier().predict(features)
    agreement = float(np.mean(predicted == np.array(labels)))
    assert agreement >= 0.8, f"only {agreement:.0%} of the samples were classified as requested: {predicted}"


def test_without_the_checkout_the_short_name_says_where_the_model_lives(monkeypatch, tmp_path):
    from paratAA.pipelines import loading
    from paratAA.pipelines.locations import ModelLoadError

    monkeypatch.setattr(loading, "trained_model_dir", lambda name: tmp_path / "models" / name)
    with pytest.raises(ModelLoadError, match="models/digits.*run from a checkout or pass that directory's path"):
        loading.pipeline_class("digits")


def test_dpm_solver_sampler_on_the_trained_model_matches_diffusers_step_loop():
    """DPM++ 2M, 20 steps: converged parallel solve against diffusers' own DPMSolverMultistepScheduler loop."""
    runner = load_dit("digits", device="cpu", sampler="dpm++2m")
    assert type(runner.pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    schedule = runner.make_schedule(20)
    assert schedule.is_multistep
    conditioning = class_conditioning([3, 7], 3.0)
    noise = runner.sample_noise(0, 2, 20)
    result = solve(runner.eps_fn(conditioning), schedule, noise)  # the recommended tolerances
    oracle = runner.sequential_reference(noise, conditioning, 0.0, seed=0)  # no VAE: diffusers' step loop
    assert result.converged and result.iterations <= 10
    assert float((result.samples - oracle).abs().max()) < 2e-3
