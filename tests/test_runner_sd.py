"""``PipelineRunner`` on the tiny offline Stable Diffusion pipeline (``parallel_sd.py``'s model): prompts
per sample, guidance, DDIM schedule, loading, the oracles (``StableDiffusionPipeline`` itself, diffusers' step loop)."""

import numpy as np
import pytest
import torch

from paratAA import sample_noise, sequential
from paratAA.cli.models import load_text_to_image
from paratAA.pipelines.locations import ModelLoadError
from paratAA.pipelines.runner import text_conditioning

pytestmark = pytest.mark.usefixtures("single_thread")

T = 5
PROMPTS = ["the cat", "a dog", "the cat"]
NEGATIVES = ["", "blurry", ""]


def _runner(**kwargs):
    runner = load_text_to_image("tiny", "cpu", "float32", **kwargs)
    runner.make_schedule(T, 0.0)
    return runner


@pytest.fixture(scope="module")
def sd():
    return _runner()


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


def _eps(sd, prompts, negatives, scale):
    return sd.eps_fn(text_conditioning(prompts, negatives, scale))(*_rows())


def test_eps_fn_shape_dtype_and_per_sample_prompts(sd):
    x, steps, samples = _rows()
    out = _eps(sd, PROMPTS, NEGATIVES, 1.0)
    assert out.shape == x.shape and out.dtype == torch.float64 and out.device == x.device
    cond = _embeddings(sd, [PROMPTS[s] for s in samples])
    torch.testing.assert_close(out, _direct(sd, x, steps, cond), rtol=1e-5, atol=1e-6)
    other = _eps(sd, ["a dog", "the cat", "a dog"], NEGATIVES, 1.0)
    assert (other - out).abs().max() > 1e-4  # the prompt reaches the UNet


def test_cfg_formula_with_negative_prompts(sd):
    x, steps, samples = _rows()
    cond = _direct(sd, x, steps, _embeddings(sd, [PROMPTS[s] for s in samples]))
    uncond = _direct(sd, x, steps, _embeddings(sd, [NEGATIVES[s] for s in samples]))
    out = _eps(sd, PROMPTS, NEGATIVES, 7.5)
    torch.testing.assert_close(out, uncond + 7.5 * (cond - uncond), rtol=1e-5, atol=1e-5)
    # None / [] / all-empty mean empty negative prompts; cfg <= 1 ignores them (conditional pass only).
    blank = _eps(sd, PROMPTS, None, 7.5)
    torch.testing.assert_close(blank, _eps(sd, PROMPTS, [], 7.5), rtol=0, atol=0)
    torch.testing.assert_close(blank, _eps(sd, PROMPTS, ["", "", ""], 7.5), rtol=0, atol=0)
    assert (blank - out).abs().max() > 1e-4
    torch.testing.assert_close(_eps(sd, PROMPTS, None, 1.0), cond, rtol=1e-5, atol=1e-6)


def test_prompts_are_encoded_once_per_eps_fn_not_per_iteration(sd, monkeypatch):
    seen = []
    original = sd.pipe.encode_prompt

    def counting(prompt, *args, **kwargs):
        seen.append(list(prompt))
        return original(prompt, *args, **kwargs)

    monkeypatch.setattr(sd.pipe, "encode_prompt", counting)
    eps = sd.eps_fn(text_conditioning(PROMPTS, NEGATIVES, 3.0))
    eps(*_rows())
    eps(*_rows())
    assert seen == [PROMPTS]


def test_micro_batches_do_not_change_the_result(sd):
    full = _eps(sd, PROMPTS, NEGATIVES, 3.0)
    small = _runner(max_batch_size=2)
    torch.testing.assert_close(_eps(small, PROMPTS, NEGATIVES, 3.0), full, rtol=1e-5, atol=1e-5)


def test_schedule_follows_sd_config_leading_spacing_offset_one():
    runner = load_text_to_image("tiny", "cpu", "float32")
    schedule = runner.make_schedule(10, 0.0)
    assert schedule.timesteps.tolist() == list(range(1, 1000, 100))
    scheduler = runner.pipe.scheduler  # SD 1.5 ships PNDM: the runner samples with DDIM from its config
    assert scheduler.config.clip_sample is False and type(scheduler).__name__ == "DDIMScheduler"
    # set_alpha_to_one=False: the last step goes to alphas_cumprod[0], not 1.
    final = scheduler.alphas_cumprod[0].double()
    torch.testing.assert_close(schedule.a[0], (final / schedule.alphas_cumprod[0]).sqrt())


def test_argument_errors_name_the_argument(sd):
    with pytest.raises(ValueError, match="prompts"):
        text_conditioning("the cat", None, 3.0)
    with pytest.raises(ValueError, match="negative_prompts"):
        text_conditioning(PROMPTS, ["x"], 3.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        text_conditioning(PROMPTS, None, float("nan"))
    with pytest.raises(ValueError, match="noise"):
        sd.sequential_reference(torch.zeros(3, T, 4, 8, 8), text_conditioning(PROMPTS, None, 3.0), 0.0)


def test_local_pipeline_directory_equals_the_in_memory_model(sd, tiny_sd_dir):
    loaded = load_text_to_image(tiny_sd_dir, "cpu", "float32")
    loaded.make_schedule(T, 0.0)
    assert loaded.latent_shape == sd.latent_shape == (4, 8, 8)
    assert loaded.pipe.safety_checker is None  # not loaded: the runner decodes without it
    torch.testing.assert_close(_eps(loaded, PROMPTS, NEGATIVES, 3.0), _eps(sd, PROMPTS, NEGATIVES, 3.0), rtol=0, atol=0)
    assert loaded.schedule.timesteps.tolist() == sd.schedule.timesteps.tolist()
    latents = torch.randn(2, 4, 8, 8)
    images = loaded.decode(latents)
    assert len(images) == 2 and images[0].size == (16, 16)
    assert np.array_equal(np.asarray(images[1]), np.asarray(sd.decode(latents)[1]))


def test_load_errors_name_the_path(tmp_path, tiny_dit_dir):
    missing = str(tmp_path / "nothing-here")
    with pytest.raises(ModelLoadError, match=f"model_path: local path '{missing}' does not exist"):
        load_text_to_image(missing, "cpu", "float32")
    with pytest.raises(ModelLoadError, match="neither a diffusers pipeline directory"):
        load_text_to_image(str(tmp_path), "cpu", "float32")
    with pytest.raises(ModelLoadError, match="could not load a pipeline's model_index.json from 'nobody/no-sd'"):
        load_text_to_image("nobody/no-sd", "cpu", "float32")
    from paratAA.errors import UsageError

    with pytest.raises(UsageError, match="DiTPipeline is not supported by this script .use parallel_dit.py"):
        load_text_to_image(tiny_dit_dir, "cpu", "float32")


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_sequential_reference_equals_paratAA_sequential(sd, eta, monkeypatch):
    conditioning = text_conditioning(PROMPTS, NEGATIVES, 5.0)
    noise = sample_noise(3, len(PROMPTS), T, sd.latent_shape)
    schedule = sd.make_schedule(T, eta)
    trajectory = sequential(sd.eps_fn(conditioning), schedule, noise)
    if eta == 0:  # eta 0 must run StableDiffusionPipeline itself, not the step loop
        monkeypatch.setattr(sd, "_scheduler_loop", lambda *a, **k: pytest.fail("pipeline path expected"))
    reference = sd.sequential_reference(noise, conditioning, eta)
    assert reference.dtype == torch.float64 and reference.shape == (3, 4, 8, 8)
    scale = reference.abs().max()
    assert (trajectory[:, 0] - reference).abs().max() <= 1e-5 * scale
    monkeypatch.undo()
    if eta > 0:
        deterministic = sd.sequential_reference(noise, conditioning, 0.0)
        assert (deterministic - reference).abs().max() > 1e-2 * scale
