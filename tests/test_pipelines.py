"""paratAA.pipelines.sample against the pipeline's own call on tiny random pipelines (SD, SDXL, SD3, Flux, DiT)."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, PNDMScheduler

from paratAA import ScheduleError
from paratAA.pipelines import UnsupportedPipelineError, sample, supported
from paratAA.pipelines.tiny import tiny_embeddings, tiny_pipeline

STEPS = 10
# Tight: converged, the parallel trajectory is the sequential one; what remains is the pipeline's float32 loop.
# A fixed window (the whole trajectory): the parallel solve itself, not the planner's choice, which on a CPU
# is usually the pipeline's own loop.
TIGHT = dict(tol1=1e-7, tol2=0.0, window_size=STEPS)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _both(pipe, **kwargs):
    """(pipe(...) output, sample(...) output) with equal arguments and equal generators."""
    reference = pipe(**kwargs, generator=_generator())
    parallel = sample(pipe, **kwargs, generator=_generator(), **TIGHT)
    return reference, parallel


def _assert_same_latents(reference, parallel, num_samples):
    ref, got = reference.images, parallel.images
    assert got.shape == ref.shape and got.dtype == ref.dtype
    scale = float(ref.abs().max())
    assert float((got - ref).abs().max()) <= 1e-5 * max(1.0, scale)
    assert parallel.result.converged and parallel.result.iterations <= STEPS
    assert parallel.result.trajectory.shape[:2] == (num_samples, STEPS + 1)


def _sd():
    pipe = tiny_pipeline("sd")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)  # as SD 1.5 ships it
    return pipe


# ---------------------------------------------------------------------------------- the five families
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_stable_diffusion_two_prompts(prediction):
    pipe = _sd()
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction)
    assert not pipe.scheduler.config.clip_sample
    kwargs = dict(prompt=["a red cube", "the dog"], num_inference_steps=STEPS, guidance_scale=4.0)
    _assert_same_latents(*_both(pipe, **kwargs, output_type="latent"), num_samples=2)
    reference, parallel = _both(pipe, **kwargs, output_type="np")
    np.testing.assert_allclose(parallel.images, reference.images, atol=1e-4)


def test_stable_diffusion_guidance_rescale_and_images_per_prompt():
    pipe = _sd()
    kwargs = dict(prompt="a cat", num_images_per_prompt=2, num_inference_steps=STEPS, guidance_scale=5.0,
                  guidance_rescale=0.7, output_type="latent")
    _assert_same_latents(*_both(pipe, **kwargs), num_samples=2)


def test_sdxl_euler_embeddings_batch_of_two():
    pipe = tiny_pipeline("sdxl")
    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    kwargs = dict(**tiny_embeddings("sdxl", 2), num_inference_steps=STEPS, guidance_scale=5.0)
    _assert_same_latents(*_both(pipe, **kwargs, output_type="latent"), num_samples=2)
    reference, parallel = _both(pipe, **kwargs, output_type="pil")
    assert len(parallel.images) == 2
    for got, ref in zip(parallel.images, reference.images):
        assert np.abs(np.asarray(got, dtype=int) - np.asarray(ref, dtype=int)).max() <= 1


def test_sd3_flow_matching_batch_of_two():
    pipe = tiny_pipeline("sd3")
    kwargs = dict(**tiny_embeddings("sd3", 2), num_inference_steps=STEPS, guidance_scale=5.0)
    _assert_same_latents(*_both(pipe, **kwargs, output_type="latent"), num_samples=2)
    reference, parallel = _both(pipe, **kwargs, output_type="pt")
    torch.testing.assert_close(parallel.images, reference.images, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cfg", [dict(guidance_scale=3.5), dict(guidance_scale=2.0, true_cfg_scale=3.0)],
                         ids=["embedded-guidance", "true-cfg"])
def test_flux_flow_matching(cfg):
    pipe = tiny_pipeline("flux")
    kwargs = dict(**tiny_embeddings("flux", 2), height=16, width=16, num_inference_steps=STEPS, **cfg)
    _assert_same_latents(*_both(pipe, **kwargs, output_type="latent"), num_samples=2)
    reference, parallel = _both(pipe, **kwargs, output_type="np")
    np.testing.assert_allclose(parallel.images, reference.images, atol=1e-4)


def test_flux_embedded_guidance_reaches_the_network():
    """Two guidance values give different samples: the guidance embedding is passed per row."""
    pipe = tiny_pipeline("flux")
    kwargs = dict(**tiny_embeddings("flux", 1, negative=False), height=16, width=16, num_inference_steps=STEPS,
                  output_type="latent", **TIGHT)
    low = sample(pipe, **kwargs, guidance_scale=1.0, generator=_generator()).images
    high = sample(pipe, **kwargs, guidance_scale=8.0, generator=_generator()).images
    assert float((low - high).abs().max()) > 1e-3


def test_dit_class_labels_with_guidance():
    pipe = tiny_pipeline("dit")
    kwargs = dict(class_labels=[1, 7], num_inference_steps=STEPS, guidance_scale=4.0, output_type="np")
    reference, parallel = _both(pipe, **kwargs)
    np.testing.assert_allclose(parallel.images, reference.images, atol=1e-4)
    assert parallel.result.samples.shape == (2, 4, 8, 8)


# ------------------------------------------------------------------ DPM-Solver++ 2M (multistep)
@pytest.mark.parametrize("kind, extra", [
    ("sd", dict(prompt=["a red cube", "the dog"], guidance_scale=4.0)),
    ("sd-v", dict(prompt=["a red cube"], guidance_scale=4.0)),
    ("sdxl", dict(**tiny_embeddings("sdxl", 2), guidance_scale=5.0)),
    ("dit", dict(class_labels=[1, 7], guidance_scale=4.0)),
])
def test_dpm_solver_multistep_equals_the_pipeline(kind, extra):
    """DPM++ 2M (SD front ends' default sampler): step i also reads step i+1's data prediction."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = tiny_pipeline(kind.removesuffix("-v"))
    prediction = dict(prediction_type="v_prediction") if kind == "sd-v" else {}
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, **prediction)
    kwargs = dict(**extra, num_inference_steps=STEPS)
    output = "np" if kind == "dit" else "latent"  # DiTPipeline returns images only
    reference, parallel = _both(pipe, **kwargs, output_type=output)
    if kind == "dit":
        np.testing.assert_allclose(parallel.images, reference.images, atol=1e-4)
    else:
        _assert_same_latents(reference, parallel, num_samples=len(reference.images))
    assert parallel.result.converged and parallel.result.iterations <= STEPS


# ---------------------------------------------------------------------------- stochastic samplers
@pytest.mark.parametrize("scheduler, extra", [(DDPMScheduler, {}), (DDIMScheduler, dict(eta=0.7))], ids=["ddpm", "ddim-eta"])
def test_stochastic_noise_is_drawn_from_the_pipelines_generator(scheduler, extra):
    pipe = _sd()
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config, clip_sample=False)
    kwargs = dict(prompt=["a red cube", "a cat"], num_inference_steps=STEPS, guidance_scale=4.0, output_type="latent",
                  **extra)
    reference, parallel = _both(pipe, **kwargs)
    _assert_same_latents(reference, parallel, num_samples=2)
    deterministic = sample(pipe, **{**kwargs, "eta": 0.0} if extra else kwargs, generator=_generator(1), **TIGHT)
    assert float((deterministic.images - reference.images).abs().max()) > 1e-3  # the noise matters


# ------------------------------------------------------------------------------- options, errors
def test_solver_options_and_callback():
    pipe = tiny_pipeline("sd3")
    records = []
    kwargs = dict(**tiny_embeddings("sd3", 1), num_inference_steps=STEPS, output_type="latent")
    whole = sample(pipe, **kwargs, generator=_generator(), callback=records.append, window_size=STEPS)
    assert whole.result.converged and len(records) == whole.result.iterations
    capped = sample(pipe, **kwargs, generator=_generator(), max_iters=1, window_size=4, order=2, memory_size=1)
    reference = pipe(**kwargs, generator=_generator()).images
    assert not capped.result.converged and capped.result.iterations == 1
    assert float((capped.images - reference).abs().max()) > 1e-2  # one iteration is not the sample
    assert max(w[1] - w[0] for w in capped.result.records[0].windows) == 4


def test_unsupported_pipeline_and_scheduler_errors_say_what_is_supported():
    pipe = tiny_pipeline("sd")  # ships a PNDMScheduler, like SD 1.5
    assert isinstance(pipe.scheduler, PNDMScheduler)
    with pytest.raises(UnsupportedPipelineError,
                       match=r"PNDMScheduler.*DDIMScheduler.*pipe.scheduler = "
                             r"DDIMScheduler.from_config\(pipe.scheduler.config, clip_sample=False\)"):
        sample(pipe, prompt="a cat")

    class MyPipeline:
        scheduler = None

    with pytest.raises(UnsupportedPipelineError, match="MyPipeline.*StableDiffusionXLPipeline.*FluxPipeline"):
        sample(MyPipeline())
    assert set(supported()) >= {"StableDiffusionPipeline", "StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
                                "FluxPipeline", "DiTPipeline"}  # and the video / newer image families


def test_unsupported_arguments_and_configurations_are_named():
    pipe = tiny_pipeline("sd3")
    kwargs = dict(**tiny_embeddings("sd3", 1), num_inference_steps=4)
    with pytest.raises(UnsupportedPipelineError, match="skip_guidance_layers"):
        sample(pipe, **kwargs, skip_guidance_layers=[0])
    with pytest.raises(UnsupportedPipelineError, match="callback_on_step_end.*callback="):
        sample(pipe, **kwargs, callback_on_step_end=lambda *a: {})
    pipe.scheduler = pipe.scheduler.from_config(pipe.scheduler.config, stochastic_sampling=True)
    with pytest.raises(ScheduleError, match="stochastic_sampling"):
        sample(pipe, **kwargs)
    # The pipeline is left as it was: its own call runs its own loop again.
    assert "forward" not in pipe.transformer.__dict__ and "step" not in pipe.scheduler.__dict__


def test_return_dict_false_and_given_latents():
    pipe = tiny_pipeline("sd3")
    latents = torch.randn((1, 4, 8, 8), generator=_generator(5))
    kwargs = dict(**tiny_embeddings("sd3", 1), num_inference_steps=STEPS, output_type="latent", latents=latents,
                  return_dict=False)
    reference = pipe(**kwargs)[0]
    parallel = sample(pipe, **kwargs, **TIGHT)
    assert isinstance(parallel.output, tuple)
    torch.testing.assert_close(parallel.images, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(parallel.result.trajectory[:, -1].float(), latents)


# ------------------------------------------------------------------------------- several processes
def _sharded_worker(out_dir: str) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    pipe = tiny_pipeline("flux")
    out = sample(pipe, **tiny_embeddings("flux", 2), height=16, width=16, num_inference_steps=STEPS,
                 output_type="latent", generator=_generator(), accelerator=accelerator, **(TIGHT | dict(window_size=6)))
    torch.save({"latents": out.images, "iterations": out.result.per_sample_iterations},
               f"{out_dir}/rank{accelerator.process_index}.pt")


def test_flow_matching_pipeline_on_two_processes_equals_one(tmp_path):
    from test_distributed import _launch

    _launch(_sharded_worker, (str(tmp_path),), 2, tmp_path)
    pipe = tiny_pipeline("flux")
    single = sample(pipe, **tiny_embeddings("flux", 2), height=16, width=16, num_inference_steps=STEPS,
                    output_type="latent", generator=_generator(), **(TIGHT | dict(window_size=6)))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["iterations"] == single.result.per_sample_iterations
        # float32 network: a row's result may differ in the last bits with the batch's composition.
        assert float((got["latents"] - single.images).abs().max()) < 1e-5


@pytest.mark.parametrize("kind, extra", [("sdxl", {}), ("sd3", {}), ("flux", dict(max_sequence_length=16))])
def test_tiny_pipelines_with_prompts(kind, extra):
    """The tiny pipelines' own text encoders (CLIP; Flux: CLIP and T5): prompts as a user passes them."""
    pipe = tiny_pipeline(kind)
    kwargs = dict(prompt=["a red cube", "the dog"], height=16, width=16, num_inference_steps=STEPS,
                  output_type="latent", **extra)
    reference, parallel = _both(pipe, **kwargs)
    _assert_same_latents(reference, parallel, num_samples=2)
    assert float((reference.images[0] - reference.images[1]).abs().max()) > 1e-2  # the prompts matter


# -------------------------------------------------------------------- prepare: the solve's inputs, decode
def _prepared_case(kind):
    if kind == "sd":
        return _sd(), dict(prompt=["a red cube", "the dog"], guidance_scale=4.0)
    if kind == "dit":
        return tiny_pipeline("dit"), dict(class_labels=[1, 7], guidance_scale=4.0)
    extra = dict(height=16, width=16) if kind == "flux" else {}
    return tiny_pipeline(kind), dict(**tiny_embeddings(kind, 2), **extra)


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3", "flux", "dit"])
def test_prepare_gives_the_solve_inputs_and_the_pipelines_decoder(kind):
    import paratAA
    from paratAA.pipelines import prepare

    pipe, kwargs = _prepared_case(kind)
    kwargs.update(num_inference_steps=STEPS, output_type="np")
    prepared = prepare(pipe, **kwargs, generator=_generator())
    assert prepared.noise.shape[:2] == (2, STEPS + 1)
    result = paratAA.solve(prepared.eps_fn, prepared.schedule, prepared.noise, **TIGHT)
    images = prepared.decode(result.samples)
    reference = pipe(**kwargs, generator=_generator()).images  # the pipeline is intact afterwards
    np.testing.assert_allclose(images, reference, atol=1e-4)
    assert isinstance(prepared.decode(result.samples, output_type="pil")[0], PIL.Image.Image)


@pytest.mark.parametrize("kind", ["sd", "sdxl", "sd3", "dit"])
def test_a_prepared_eps_fn_keeps_its_own_guidance_scale(kind):
    """Guidance comes from each prepared call's arguments, not from the pipeline's latest call."""
    from paratAA.pipelines import prepare

    pipe, kwargs = _prepared_case(kind)
    kwargs.update(num_inference_steps=STEPS, guidance_scale=2.0)
    first = prepare(pipe, **kwargs, generator=_generator())
    rows = (first.noise[:, -1], torch.tensor([STEPS - 1, 0]), torch.tensor([0, 1]))
    before = first.eps_fn(*rows)
    prepare(pipe, **{**kwargs, "guidance_scale": 7.0}, generator=_generator())  # the pipeline runs again
    torch.testing.assert_close(first.eps_fn(*rows), before, rtol=0, atol=0)
