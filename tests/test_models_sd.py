"""Stable Diffusion adapter on the tiny offline pipeline: prompts per sample, guidance, schedule, loading, oracle."""

import numpy as np
import pytest
import torch

from models import ModelLoadError, load_sd
from paratAA import sample_noise, sequential

pytestmark = pytest.mark.usefixtures("single_thread")

T = 5
PROMPTS = ["the cat", "a dog", "the cat"]
NEGATIVES = ["", "blurry", ""]


@pytest.fixture(scope="module")
def sd():
    adapter = load_sd("tiny", "cpu", False)
    adapter.make_schedule(T, 0.0)
    return adapter


def _embeddings(sd, texts):
    with torch.no_grad():
        embeds, _ = sd.pipe.encode_prompt(texts, "cpu", 1, False)
    return embeds


def _direct(sd, x, steps, embeds):
    with torch.no_grad():
        out = sd.pipe.unet(x.float(), sd.schedule.timesteps[steps], encoder_hidden_states=embeds).sample
    return out.double()


def _rows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    return x, torch.tensor([4, 0, 2, 4]), torch.tensor([1, 2, 0, 0])


def test_eps_fn_shape_dtype_and_per_sample_prompts(sd):
    x, steps, samples = _rows()
    out = sd.eps_fn(PROMPTS, NEGATIVES, 1.0)(x, steps, samples)
    assert out.shape == x.shape and out.dtype == torch.float64 and out.device == x.device
    cond = _embeddings(sd, [PROMPTS[s] for s in samples])
    torch.testing.assert_close(out, _direct(sd, x, steps, cond), rtol=1e-5, atol=1e-6)
    other = sd.eps_fn(["a dog", "the cat", "a dog"], NEGATIVES, 1.0)(x, steps, samples)
    assert (other - out).abs().max() > 1e-4  # the prompt reaches the UNet


def test_cfg_formula_with_negative_prompts(sd):
    x, steps, samples = _rows()
    cond = _direct(sd, x, steps, _embeddings(sd, [PROMPTS[s] for s in samples]))
    uncond = _direct(sd, x, steps, _embeddings(sd, [NEGATIVES[s] for s in samples]))
    out = sd.eps_fn(PROMPTS, NEGATIVES, 7.5)(x, steps, samples)
    torch.testing.assert_close(out, uncond + 7.5 * (cond - uncond), rtol=1e-5, atol=1e-5)
    # None / [] mean empty negative prompts; cfg <= 1 ignores them (conditional pass only).
    blank = sd.eps_fn(PROMPTS, None, 7.5)(x, steps, samples)
    torch.testing.assert_close(blank, sd.eps_fn(PROMPTS, [], 7.5)(x, steps, samples), rtol=0, atol=0)
    assert (blank - out).abs().max() > 1e-4
    torch.testing.assert_close(sd.eps_fn(PROMPTS, None, 1.0)(x, steps, samples), cond, rtol=1e-5, atol=1e-6)


def test_prompts_are_encoded_once_per_distinct_pair(sd, monkeypatch):
    seen = []
    original = sd.pipe.encode_prompt

    def counting(prompt, *args, **kwargs):
        seen.append((list(prompt), kwargs.get("negative_prompt")))
        return original(prompt, *args, **kwargs)

    monkeypatch.setattr(sd.pipe, "encode_prompt", counting)
    eps = sd.eps_fn(PROMPTS, NEGATIVES, 3.0)
    eps(*_rows())
    eps(*_rows())
    assert seen == [(["the cat", "a dog"], ["", "blurry"])]


def test_micro_batches_do_not_change_the_result(sd):
    x, steps, samples = _rows()
    full = sd.eps_fn(PROMPTS, NEGATIVES, 3.0)(x, steps, samples)
    small = load_sd("tiny", "cpu", False, max_batch_size=2)
    small.make_schedule(T, 0.0)
    torch.testing.assert_close(small.eps_fn(PROMPTS, NEGATIVES, 3.0)(x, steps, samples), full, rtol=1e-5, atol=1e-5)


def test_schedule_follows_sd_config_leading_spacing_offset_one():
    adapter = load_sd("tiny", "cpu", False)
    schedule = adapter.make_schedule(10, 0.0)
    assert schedule.timesteps.tolist() == list(range(1, 1000, 100))
    scheduler = adapter.make_scheduler(10)
    assert scheduler.config.clip_sample is False and type(scheduler).__name__ == "DDIMScheduler"
    # set_alpha_to_one=False: the last step goes to alphas_cumprod[0], not 1.
    final = scheduler.alphas_cumprod[0].double()
    torch.testing.assert_close(schedule.a[0], (final / schedule.alphas_cumprod[0]).sqrt())


def test_argument_errors_name_the_argument(sd):
    with pytest.raises(ValueError, match="prompts"):
        sd.eps_fn("the cat", None, 3.0)
    with pytest.raises(ValueError, match="negative_prompts"):
        sd.eps_fn(PROMPTS, ["x"], 3.0)
    with pytest.raises(ValueError, match="cfg_scale"):
        sd.eps_fn(PROMPTS, None, float("nan"))
    with pytest.raises(ValueError, match="noise"):
        sd.sequential_reference(torch.zeros(3, T, 4, 8, 8), PROMPTS, None, 3.0, T, 0.0)


def test_local_pipeline_directory_equals_the_in_memory_model(sd, tiny_sd_dir):
    x, steps, samples = _rows()
    loaded = load_sd(tiny_sd_dir, "cpu", False)
    loaded.make_schedule(T, 0.0)
    assert loaded.latent_shape == sd.latent_shape == (4, 8, 8)
    torch.testing.assert_close(loaded.eps_fn(PROMPTS, NEGATIVES, 3.0)(x, steps, samples),
                               sd.eps_fn(PROMPTS, NEGATIVES, 3.0)(x, steps, samples), rtol=0, atol=0)
    assert loaded.schedule.timesteps.tolist() == sd.schedule.timesteps.tolist()
    latents = torch.randn(2, 4, 8, 8)
    images = loaded.decode(latents)
    assert len(images) == 2 and images[0].size == (16, 16)
    assert np.array_equal(np.asarray(images[1]), np.asarray(sd.decode(latents)[1]))


def test_load_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nothing-here")
    with pytest.raises(ModelLoadError, match=f"model_path: local path '{missing}' does not exist"):
        load_sd(missing, "cpu", False)
    with pytest.raises(ModelLoadError, match="not a diffusers pipeline directory"):
        load_sd(str(tmp_path), "cpu", False)
    with pytest.raises(ModelLoadError, match="could not load a Stable Diffusion pipeline from 'nobody/no-sd'"):
        load_sd("nobody/no-sd", "cpu", False)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sequential_reference_equals_paratAA_sequential(sd, eta, monkeypatch):
    noise = sample_noise(3, len(PROMPTS), T, sd.latent_shape)
    schedule = sd.make_schedule(T, eta)
    trajectory = sequential(sd.eps_fn(PROMPTS, NEGATIVES, 5.0), schedule, noise)
    if eta == 0:  # eta 0 must run StableDiffusionPipeline itself, not the step loop
        monkeypatch.setattr(sd, "_scheduler_loop", lambda *a, **k: pytest.fail("pipeline path expected"))
    reference = sd.sequential_reference(noise, PROMPTS, NEGATIVES, 5.0, T, eta)
    assert reference.dtype == torch.float64 and reference.shape == (3, 4, 8, 8)
    scale = reference.abs().max()
    assert (trajectory[:, 0] - reference).abs().max() <= 1e-5 * scale
    monkeypatch.undo()
    if eta > 0:
        deterministic = sd.sequential_reference(noise, PROMPTS, NEGATIVES, 5.0, T, 0.0)
        assert (deterministic - reference).abs().max() > 1e-2 * scale
