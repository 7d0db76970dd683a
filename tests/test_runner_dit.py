"""``PipelineRunner`` on the tiny offline DiT (``parallel_dit.py``'s model): conditioning, guidance rules,
schedule, loading, the sequential oracles (``DiTPipeline`` itself and diffusers' step loop)."""

import os

import numpy as np
import pytest
import torch

from paratAA import sample_noise, sequential
from paratAA.cli.models import load_dit
from paratAA.pipelines.locations import ModelLoadError
from paratAA.pipelines.runner import class_conditioning

pytestmark = pytest.mark.usefixtures("single_thread")

T = 6


def _runner(**kwargs):
    runner = load_dit("tiny", None, "cpu", "float32", **kwargs)
    runner.make_schedule(T, 0.0)
    return runner


@pytest.fixture(scope="module")
def dit():
    return _runner()


def _direct(dit, x, steps, labels):
    """The network's epsilon channels, called directly (no adapter)."""
    t = dit.schedule.timesteps[steps]
    with torch.no_grad():
        return dit.pipe.transformer(x.float(), timestep=t, class_labels=labels).sample[:, :4].double()


def _rows(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, 8, 8, generator=g, dtype=torch.float64)
    steps = torch.tensor([0, 5, 2, 5, 3])[:n]
    samples = torch.tensor([2, 0, 1, 2, 0])[:n]
    return x, steps, samples


def _eps(runner, labels, scale, rows=None):
    return runner.eps_fn(class_conditioning(labels, scale))(*(rows or _rows()))


def test_eps_fn_shape_dtype_and_per_sample_labels(dit):
    labels = torch.tensor([11, 222, 999])
    x, steps, samples = _rows()
    out = _eps(dit, labels, 1.0)
    assert out.shape == x.shape and out.dtype == torch.float64 and out.device == x.device
    # Every row gets its own sample's label and its own step's timestep.
    torch.testing.assert_close(out, _direct(dit, x, steps, labels[samples]), rtol=1e-6, atol=1e-6)
    # ...and the label matters (a test that could not tell rows apart would pass the line above trivially).
    assert (_eps(dit, labels.flip(0), 1.0) - out).abs().max() > 1e-3


def test_cfg_is_uncond_plus_scale_times_difference_on_all_channels(dit):
    labels = torch.tensor([1, 2, 3])
    x, steps, samples = _rows()
    cond = _direct(dit, x, steps, labels[samples])
    uncond = _direct(dit, x, steps, torch.full_like(samples, dit.adapter.num_classes))
    torch.testing.assert_close(_eps(dit, labels, 4.0), uncond + 4.0 * (cond - uncond), rtol=1e-5, atol=1e-5)
    # No guidance at scale <= 1: a single conditional pass.
    torch.testing.assert_close(_eps(dit, labels, 1.0), cond, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(_eps(dit, labels, 0.5), cond, rtol=1e-6, atol=1e-6)


def test_original_guidance_differs_only_on_the_fourth_channel(dit):
    labels = torch.tensor([5, 6, 7])
    original = _runner(guidance="original")
    guided_all, guided_orig = _eps(dit, labels, 4.0), _eps(original, labels, 4.0)
    cond = _eps(dit, labels, 1.0)
    torch.testing.assert_close(guided_orig[:, :3], guided_all[:, :3], rtol=0, atol=0)
    torch.testing.assert_close(guided_orig[:, 3], cond[:, 3], rtol=1e-6, atol=1e-6)
    assert (guided_orig[:, 3] - guided_all[:, 3]).abs().max() > 1e-3


def test_micro_batches_do_not_change_the_result(dit):
    labels = torch.tensor([1, 2, 3])
    full = _eps(dit, labels, 3.0)
    small = _runner(max_batch_size=2)
    eps_fn = small.eps_fn(class_conditioning(labels, 3.0))
    calls = []
    handle = small.pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, output: calls.append(kwargs["hidden_states"].shape[0]), with_kwargs=True)
    try:
        chunked = eps_fn(*_rows())
    finally:
        handle.remove()
    assert max(calls) <= 2 and sum(calls) == 2 * 5  # doubled rows, never more than 2 per pass
    torch.testing.assert_close(chunked, full, rtol=1e-5, atol=1e-5)


def test_schedule_is_dit_respacing_linspace_with_final_alpha_one():
    dit = load_dit("tiny", None, "cpu", "float32")
    schedule = dit.make_schedule(10, 0.0)
    assert dit.schedule is schedule  # remembered for eps_fn
    expected = np.linspace(0, 999, 10).round().astype(np.int64)
    assert schedule.timesteps.tolist() == expected.tolist()
    # Step 0 goes to alpha_bar = 1: x[0] = x0-prediction, a_0 = 1 / sqrt(alpha_bar_0).
    torch.testing.assert_close(schedule.a[0], 1 / schedule.alphas_cumprod[0].sqrt())
    assert type(dit.pipe.scheduler).__name__ == "DDIMScheduler" and dit.pipe.scheduler.config.clip_sample is False
    # eta reaches the schedule (DiTPipeline's call has no eta: the runner builds it).
    assert float(dit.make_schedule(10, 1.0).c[1:].min()) > 0 and float(schedule.c.abs().max()) == 0


def test_eps_fn_needs_a_schedule_and_validates_arguments():
    fresh = load_dit("tiny", None, "cpu", "float32")
    with pytest.raises(ValueError, match="schedule"):
        fresh.eps_fn(class_conditioning([1], 4.0))
    fresh.make_schedule(T, 0.0)
    with pytest.raises(ValueError, match="class_labels"):
        fresh.eps_fn(class_conditioning([1000], 4.0))
    with pytest.raises(ValueError, match="guidance"):
        load_dit("tiny", None, "cpu", "float32", guidance="three")
    with pytest.raises(ValueError, match="steps"):
        fresh.eps_fn(class_conditioning([1], 4.0))(torch.zeros(1, 4, 8, 8), torch.tensor([T]), torch.tensor([0]))


def test_decode_returns_rgb_images(dit):
    images = dit.decode(torch.randn(3, 4, 8, 8, dtype=torch.float64))
    assert len(images) == 3 and images[0].size == (16, 16) and images[0].mode == "RGB"


def test_local_pipeline_and_transformer_directories_equal_the_in_memory_model(dit, tiny_dit_dir):
    labels = torch.tensor([3, 4, 5])
    expected = _eps(dit, labels, 2.0)
    from_pipeline = load_dit(tiny_dit_dir, None, "cpu", "float32")
    from_transformer = load_dit(os.path.join(tiny_dit_dir, "transformer"), tiny_dit_dir, "cpu", "float32")
    for runner in (from_pipeline, from_transformer):
        schedule = runner.make_schedule(T, 0.0)
        assert runner.latent_shape == (4, 8, 8) and runner.model_id != "tiny-dit"
        torch.testing.assert_close(_eps(runner, labels, 2.0), expected, rtol=0, atol=0)
        assert schedule.timesteps.tolist() == dit.schedule.timesteps.tolist()
    latents = torch.randn(1, 4, 8, 8)
    assert np.array_equal(np.asarray(from_pipeline.decode(latents)[0]), np.asarray(dit.decode(latents)[0]))


def test_load_errors_name_the_path(tmp_path, tiny_sd_dir):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ModelLoadError, match=f"model_path: local path '{missing}' does not exist"):
        load_dit(missing, None, "cpu", "float32")
    with pytest.raises(ModelLoadError, match="neither a diffusers pipeline directory"):
        load_dit(str(tmp_path), None, "cpu", "float32")
    with pytest.raises(ModelLoadError, match="model_path: could not load a pipeline's model_index.json from "
                                             "'nobody/no-dit'"):
        load_dit("nobody/no-dit", None, "cpu", "float32")
    with pytest.raises(ModelLoadError, match="vae_path: local path"):
        load_dit("tiny", str(tmp_path / "no-vae"), "cpu", "float32")
    from paratAA.errors import UsageError

    with pytest.raises(UsageError, match="StableDiffusionPipeline is not supported by this script"):
        load_dit(tiny_sd_dir, None, "cpu", "float32")


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("guidance", ["all", "original"])
def test_sequential_reference_equals_paratAA_sequential(eta, guidance):
    dit = _runner(guidance=guidance)
    conditioning, seed = class_conditioning([7, 300], 4.0), 11
    schedule = dit.make_schedule(T, eta)
    noise = dit.sample_noise(seed, 2, T)
    trajectory = sequential(dit.eps_fn(conditioning), schedule, noise)
    reference = dit.sequential_reference(noise, conditioning, eta, seed=seed)
    assert reference.dtype == torch.float64 and reference.shape == (2, 4, 8, 8)
    scale = reference.abs().max()
    assert (trajectory[:, 0] - reference).abs().max() <= 1e-5 * scale
    # The stochastic and deterministic samplers really differ (eta reaches the oracle).
    if eta > 0:
        deterministic = dit.sequential_reference(noise, conditioning, 0.0)
        assert (deterministic - reference).abs().max() > 1e-2 * scale


def test_sequential_reference_uses_dit_pipeline_for_eta_zero(dit, monkeypatch):
    conditioning, seed = class_conditioning([1, 2], 4.0), 5
    noise = sample_noise(seed, 2, T, dit.latent_shape)
    loop = dit.sequential_reference(noise, conditioning, 0.0)  # no seed: the scheduler loop
    monkeypatch.setattr(dit, "_scheduler_loop", lambda *a, **k: pytest.fail("pipeline path expected"))
    via_pipeline = dit.sequential_reference(noise, conditioning, 0.0, seed=seed)
    assert (via_pipeline - loop).abs().max() <= 1e-5 * loop.abs().max()
    with pytest.raises(ValueError, match="seed"):
        dit.sequential_reference(noise, conditioning, 0.0, seed=seed + 1)
    monkeypatch.undo()
    # The original guidance rule is not DiTPipeline's: the oracle is the step loop then.
    original = _runner(guidance="original")
    monkeypatch.setattr(original, "_pipeline_call", lambda *a, **k: pytest.fail("loop path expected"))
    assert (original.sequential_reference(noise, conditioning, 0.0, seed=seed) - loop).abs().max() > 1e-3


def test_fp16_model_returns_float64_close_to_float32(dit, monkeypatch):
    half = load_dit("tiny", None, "cpu", "float16")
    half.make_schedule(T, 0.0)
    assert half.pipe.transformer.dtype == torch.float16 and half.pipe.vae.dtype == torch.float16
    labels = torch.tensor([1, 2, 3])
    out, expected = _eps(half, labels, 4.0), _eps(dit, labels, 4.0)
    assert out.dtype == torch.float64
    assert (out - expected).abs().max() <= 1e-2 * expected.abs().max()
    # float16 cannot reproduce the pipeline's float32 x_T: the scheduler loop runs instead.
    monkeypatch.setattr(half, "_pipeline_call", lambda *a, **k: pytest.fail("loop path expected"))
    noise = sample_noise(0, 2, T, half.latent_shape)
    assert half.sequential_reference(noise, class_conditioning(labels[:2], 4.0), 0.0, seed=0).dtype == torch.float64
