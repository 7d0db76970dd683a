"""paratAA.pipelines.sample against the newer image pipelines' own calls on tiny random pipelines
(Qwen-Image with true CFG, Sana, PixArt-Sigma, Chroma, FLUX.1 Kontext with a reference image)."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from paratAA.pipelines import UnsupportedPipelineError, prepare, sample, supported
from paratAA.pipelines.tiny import tiny_embeddings, tiny_pipeline
from paratAA.pipelines.tiny_image2 import TINY_IMAGE2_CALL, tiny_image2_embeddings

STEPS = 6
# Converged, with a fixed window (the whole trajectory): the parallel solve itself, not the planner's choice,
# which on a CPU is usually the pipeline's own loop.
TIGHT = dict(tol1=1e-7, tol2=0.0, window_size=STEPS)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _kwargs(kind: str, **extra):
    return dict(**tiny_image2_embeddings(kind, 2), **TINY_IMAGE2_CALL[kind], num_inference_steps=STEPS, **extra)


def _both(pipe, **kwargs):
    reference = pipe(**kwargs, generator=_generator()).images
    parallel = sample(pipe, **kwargs, generator=_generator(), **TIGHT)
    return reference, parallel


def _assert_same(reference, parallel, output_type: str) -> None:
    assert parallel.result.converged and parallel.result.iterations <= STEPS
    assert parallel.result.trajectory.shape[:2] == (2, STEPS + 1)
    if output_type == "latent":
        assert parallel.images.shape == reference.shape and parallel.images.dtype == reference.dtype
        scale = float(reference.abs().max())
        assert float((parallel.images - reference).abs().max()) <= 1e-5 * max(1.0, scale)
    else:
        np.testing.assert_allclose(parallel.images, reference, atol=1e-4)


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_qwenimage_true_cfg(output_type):
    pipe = tiny_pipeline("qwenimage")
    _assert_same(*_both(pipe, **_kwargs("qwenimage", true_cfg_scale=4.0, output_type=output_type)), output_type)


def test_qwenimage_prepare_decodes_as_the_pipeline():
    import paratAA

    pipe = tiny_pipeline("qwenimage")
    kwargs = _kwargs("qwenimage", true_cfg_scale=4.0, output_type="np")
    prepared = prepare(pipe, **kwargs, generator=_generator())
    result = paratAA.solve(prepared.eps_fn, prepared.schedule, prepared.noise, **TIGHT)
    np.testing.assert_allclose(prepared.decode(result.samples), pipe(**kwargs, generator=_generator()).images,
                               atol=1e-4)


def test_sana_default_scheduler_is_refused_with_a_switch_that_works():
    pipe = tiny_pipeline("sana")
    kwargs = _kwargs("sana", guidance_scale=4.5)
    if "DPMSolverMultistepScheduler" not in supported()["SanaPipeline"]:
        with pytest.raises(UnsupportedPipelineError,
                           match=r"^scheduler: DPMSolverMultistepScheduler is not supported for SanaPipeline.*"
                                 r"FlowMatchEulerDiscreteScheduler.from_config\(pipe.scheduler.config, "
                                 r"shift=pipe.scheduler.config.get\('flow_shift', 1.0\)\)$") as error:
            sample(pipe, **kwargs)
        exec(str(error.value).split("Switch with: ", 1)[1], {"pipe": pipe})  # noqa: S102
        assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3.0
    _assert_same(*_both(pipe, **kwargs, output_type="latent"), "latent")


def test_sana_flow_matching_images():
    pipe = tiny_pipeline("sana")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=3.0)
    _assert_same(*_both(pipe, **_kwargs("sana", guidance_scale=4.5, output_type="np")), "np")


@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_pixart_sigma_dpm_solver_with_guidance(output_type):
    pipe = tiny_pipeline("pixart")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    _assert_same(*_both(pipe, **_kwargs("pixart", guidance_scale=4.5, output_type=output_type)), output_type)


def test_pixart_sigma_prompts_through_the_tiny_t5_with_ddim():
    from diffusers import DDIMScheduler

    pipe = tiny_pipeline("pixart")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    kwargs = dict(prompt=["a red cube", "the dog"], **TINY_IMAGE2_CALL["pixart"], num_inference_steps=STEPS,
                  guidance_scale=4.5, output_type="latent")
    reference, parallel = _both(pipe, **kwargs)
    _assert_same(reference, parallel, "latent")
    assert float((reference[0] - reference[1]).abs().max()) > 1e-2  # the prompts matter


def test_chroma_prompts_through_the_tiny_t5_with_guidance_and_attention_masks():
    pipe = tiny_pipeline("chroma")
    kwargs = dict(prompt=["a red cube", "the dog"], negative_prompt=["", "blurry"], **TINY_IMAGE2_CALL["chroma"],
                  num_inference_steps=STEPS, guidance_scale=4.0, output_type="latent")
    reference, parallel = _both(pipe, **kwargs)
    _assert_same(reference, parallel, "latent")
    assert float((reference[0] - reference[1]).abs().max()) > 1e-2


def _reference_image():
    import PIL.Image

    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return PIL.Image.fromarray(pixels)


def test_flux_kontext_reference_image_tokens_are_replayed_per_row():
    pipe = tiny_pipeline("flux-kontext")
    kwargs = dict(**tiny_embeddings("flux", 2), **TINY_IMAGE2_CALL["flux-kontext"], num_inference_steps=STEPS,
                  guidance_scale=2.0, true_cfg_scale=3.0, output_type="latent")
    reference, parallel = _both(pipe, **kwargs, image=_reference_image())
    _assert_same(reference, parallel, "latent")
    without = pipe(**kwargs, generator=_generator()).images  # the reference image reaches the network
    assert float((without - reference).abs().max()) > 1e-3


@pytest.mark.parametrize("kind", ["pixart", "sana"])
def test_unipc_on_pixart_and_on_sanas_flow_sigmas(kind):
    from diffusers import UniPCMultistepScheduler

    pipe = tiny_pipeline(kind)
    pipe.scheduler = UniPCMultistepScheduler.from_config(pipe.scheduler.config)  # Sana: keeps its flow sigmas
    assert pipe.scheduler.config.use_flow_sigmas == (kind == "sana")
    _assert_same(*_both(pipe, **_kwargs(kind, guidance_scale=4.5, output_type="latent")), "latent")


def test_the_image_families_are_listed():
    listed = supported()
    for name in ("QwenImagePipeline", "SanaPipeline", "PixArtSigmaPipeline", "ChromaPipeline", "FluxKontextPipeline"):
        assert name in listed
