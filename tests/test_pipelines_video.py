"""paratAA.pipelines.sample against the video pipelines' own calls on tiny random pipelines
(Wan 2.1, Wan 2.2 with two experts, LTX-Video, HunyuanVideo, CogVideoX)."""

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import CogVideoXDPMScheduler, FlowMatchEulerDiscreteScheduler

from paratAA.pipelines import UnsupportedPipelineError, prepare, sample, supported
from paratAA.pipelines.tiny import tiny_pipeline
from paratAA.pipelines.tiny_video import TINY_VIDEO_CALL, WAN22_BOUNDARY_RATIO, tiny_video_embeddings

STEPS = 6
# Converged: what remains is the pipeline's float32 loop. A fixed window (the whole trajectory): the parallel
# solve itself, not the planner's choice, which on a CPU is usually the pipeline's own loop.
TIGHT = dict(tol1=1e-7, tol2=0.0, window_size=STEPS)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _switch(pipe, error: UnsupportedPipelineError) -> None:
    """Run the one line of diffusers code the error names (the user's fix)."""
    message = str(error)
    assert "\n" not in message and "Switch with: " in message
    exec(message.split("Switch with: ", 1)[1], {"pipe": pipe})  # noqa: S102


def _wan(kind: str = "wan"):
    """The tiny Wan pipeline on its shipped UniPC scheduler."""
    return tiny_pipeline(kind)


def _kwargs(kind: str, **extra):
    return dict(**tiny_video_embeddings(kind, 2), **TINY_VIDEO_CALL[kind], num_inference_steps=STEPS, **extra)


def _both(pipe, **kwargs):
    """(pipe(...).frames, sample(...)) with equal arguments and equal generators."""
    reference = pipe(**kwargs, generator=_generator()).frames
    parallel = sample(pipe, **kwargs, generator=_generator(), **TIGHT)
    return reference, parallel


def _assert_same(reference, parallel, output_type: str, num_samples: int = 2) -> None:
    got = parallel.frames
    assert parallel.result.converged and parallel.result.iterations <= STEPS
    assert parallel.result.trajectory.shape[:2] == (num_samples, STEPS + 1)
    if output_type == "latent":
        assert got.shape == reference.shape and got.dtype == reference.dtype
        scale = float(reference.abs().max())
        assert float((got - reference).abs().max()) <= 1e-5 * max(1.0, scale)
    elif output_type == "np":
        assert got.shape == reference.shape
        np.testing.assert_allclose(got, reference, atol=1e-4)
    elif output_type == "pt":
        torch.testing.assert_close(got, reference, atol=1e-4, rtol=0)
    else:  # pil: a list of videos, each a list of frames
        assert len(got) == len(reference) and all(isinstance(f, PIL.Image.Image) for f in got[0])
        for video, ref in zip(got, reference):
            assert len(video) == len(ref)
            for frame, ref_frame in zip(video, ref):
                assert np.abs(np.asarray(frame, dtype=int) - np.asarray(ref_frame, dtype=int)).max() <= 1


# --------------------------------------------------------------------------------------------- Wan
def test_wan_two_prompts_with_guidance_frames():
    """Decoded frames (flow-matching Euler: test_wan_refused_scheduler_names_a_switch_that_works)."""
    pipe = _wan()
    reference, parallel = _both(pipe, **_kwargs("wan", guidance_scale=5.0, output_type="np"))
    _assert_same(reference, parallel, "np")


def test_wan22_experts_switch_per_row_at_the_boundary():
    """Wan 2.2: rows of steps with t >= boundary go to transformer with guidance_scale, the others to
    transformer_2 with guidance_scale_2; the pipeline's loop never runs an expert after the solve."""
    pipe = _wan("wan22")
    seen = {"transformer": [], "transformer_2": []}
    for name in seen:
        module = getattr(pipe, name)
        original = module.forward

        def recording(*args, _name=name, _original=original, **kwargs):
            seen[_name].append(kwargs["timestep"].clone())
            return _original(*args, **kwargs)

        module.forward = recording
    kwargs = _kwargs("wan22", guidance_scale=5.0, guidance_scale_2=2.0, output_type="latent")
    parallel = sample(pipe, **kwargs, generator=_generator(), **TIGHT)
    boundary = WAN22_BOUNDARY_RATIO * 1000
    high, low = (torch.cat(seen[name]) for name in ("transformer", "transformer_2"))
    assert low.numel() and bool((low < boundary).all()) and bool((high >= boundary).all())
    # Every network row is the solve's (plus the two recorded calls of the first step): none of the pipeline's loop.
    assert high.numel() + low.numel() == 2 * (parallel.result.evaluations + 2)
    for name in seen:
        getattr(pipe, name).__dict__.pop("forward")
    reference = pipe(**kwargs, generator=_generator()).frames
    _assert_same(reference, parallel, "latent")
    assert "forward" not in pipe.transformer_2.__dict__ and "step" not in pipe.scheduler.__dict__


def test_wan22_guidance_scale_2_defaults_to_guidance_scale():
    pipe = _wan("wan22")
    reference, parallel = _both(pipe, **_kwargs("wan22", guidance_scale=4.0, output_type="latent"))
    _assert_same(reference, parallel, "latent")


def test_wan_expand_timesteps_feeds_every_token_its_rows_timestep():
    """Wan 2.2 TI2V's ``expand_timesteps``: the network gets (rows, tokens) timesteps, in the solve too."""
    pipe = _wan()
    pipe.register_to_config(expand_timesteps=True)
    shapes = []
    original = pipe.transformer.forward

    def recording(*args, **kwargs):
        shapes.append(tuple(kwargs["timestep"].shape))
        return original(*args, **kwargs)

    pipe.transformer.forward = recording
    kwargs = _kwargs("wan", guidance_scale=5.0, output_type="latent")
    parallel = sample(pipe, **kwargs, generator=_generator(), **TIGHT)
    assert len(shapes) > 2 and all(len(shape) == 2 and shape[1] == 2 * 2 * 2 for shape in shapes)  # 2 frames, 2x2
    del pipe.transformer.forward
    _assert_same(pipe(**kwargs, generator=_generator()).frames, parallel, "latent")


def test_wan_with_its_shipped_unipc_scheduler():
    pipe = tiny_pipeline("wan")
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    reference, parallel = _both(pipe, **_kwargs("wan", guidance_scale=5.0, output_type="latent"))
    _assert_same(reference, parallel, "latent")


def test_wan_refused_scheduler_names_a_switch_that_works():
    """A scheduler Wan's adapter does not run: one line naming flow-matching Euler with Wan's shift; running
    that line gives the pipeline's own samples."""
    from diffusers import DPMSolverMultistepScheduler

    pipe = tiny_pipeline("wan")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(UnsupportedPipelineError, match=r"^scheduler: DPMSolverMultistepScheduler is not supported for "
                       r"WanPipeline.*pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config\("
                       r"pipe.scheduler.config, shift=pipe.scheduler.config.get\('flow_shift', 1.0\)\)$") as error:
        sample(pipe, **_kwargs("wan"))
    assert "forward" not in pipe.transformer.__dict__ and "step" not in pipe.scheduler.__dict__
    _switch(pipe, error.value)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3.0
    _assert_same(*_both(pipe, **_kwargs("wan", guidance_scale=5.0, output_type="latent")), "latent")


# --------------------------------------------------------------------------------------------- LTX
@pytest.mark.parametrize("output_type", ["latent", "np", "pt", "pil"])
def test_ltx_guidance_with_rescale(output_type):
    pipe = tiny_pipeline("ltx")
    kwargs = _kwargs("ltx", guidance_scale=3.0, guidance_rescale=0.5, output_type=output_type)
    _assert_same(*_both(pipe, **kwargs), output_type)


def test_ltx_prepare_gives_the_solve_inputs_and_the_pipelines_decoder():
    import paratAA

    pipe = tiny_pipeline("ltx")
    kwargs = _kwargs("ltx", guidance_scale=3.0, output_type="np")
    prepared = prepare(pipe, **kwargs, generator=_generator())
    result = paratAA.solve(prepared.eps_fn, prepared.schedule, prepared.noise, **TIGHT)
    reference = pipe(**kwargs, generator=_generator()).frames
    np.testing.assert_allclose(prepared.decode(result.samples), reference, atol=1e-4)


# ------------------------------------------------------------------------------------ HunyuanVideo
def test_hunyuan_video_true_cfg_and_embedded_guidance():
    pipe = tiny_pipeline("hunyuan")
    kwargs = _kwargs("hunyuan", guidance_scale=6.0, true_cfg_scale=3.0, output_type="latent")
    _assert_same(*_both(pipe, **kwargs), "latent")


# --------------------------------------------------------------------------------------- CogVideoX
@pytest.mark.parametrize("output_type", ["latent", "np"])
def test_cogvideox_ddim_scheduler_with_guidance(output_type):
    pipe = tiny_pipeline("cogvideox")
    assert type(pipe.scheduler).__name__ == "CogVideoXDDIMScheduler"
    _assert_same(*_both(pipe, **_kwargs("cogvideox", guidance_scale=6.0, output_type=output_type)), output_type)


def test_cogvideox_prompts_through_the_tiny_t5():
    pipe = tiny_pipeline("cogvideox")
    kwargs = dict(prompt=["a red cube", "the dog"], negative_prompt=["", "blurry"], **TINY_VIDEO_CALL["cogvideox"],
                  num_inference_steps=STEPS, guidance_scale=6.0, output_type="latent")
    reference, parallel = _both(pipe, **kwargs)
    _assert_same(reference, parallel, "latent")
    assert float((reference[0] - reference[1]).abs().max()) > 1e-2  # the prompts matter


def test_cogvideox_dpm_scheduler_and_dynamic_cfg_are_refused_by_name():
    pipe = tiny_pipeline("cogvideox")
    pipe.scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(UnsupportedPipelineError, match=r"^scheduler: CogVideoXDPMScheduler is not supported for "
                       r"CogVideoXPipeline.*CogVideoXDDIMScheduler.from_config\(pipe.scheduler.config\)$") as error:
        sample(pipe, **_kwargs("cogvideox"))
    _switch(pipe, error.value)  # the line works: back to CogVideoX's DDIM, the samples are the pipeline's
    assert type(pipe.scheduler).__name__ == "CogVideoXDDIMScheduler"
    _assert_same(*_both(pipe, **_kwargs("cogvideox", output_type="latent", guidance_scale=6.0)), "latent")
    with pytest.raises(UnsupportedPipelineError, match="^use_dynamic_cfg: .*use_dynamic_cfg=False$"):
        sample(pipe, **_kwargs("cogvideox", use_dynamic_cfg=True))


def test_cogvideox_ddim_schedule_is_read_from_its_own_alphas_and_checked_against_its_step():
    from diffusers import DDIMScheduler

    from paratAA import ScheduleError
    from paratAA.pipelines.video import CogVideoXAdapter, _check_against_step
    from paratAA.schedule import Schedule

    pipe = tiny_pipeline("cogvideox")
    pipe.scheduler.set_timesteps(STEPS)
    schedule = CogVideoXAdapter(pipe).schedule(pipe.scheduler)
    assert schedule.prediction_type == "v_prediction" and schedule.num_steps == STEPS
    # DDIM with the same configuration but without the SNR shift is another sampler: the check says so.
    plain = DDIMScheduler.from_config(pipe.scheduler.config)
    plain.set_timesteps(STEPS)
    with pytest.raises(ScheduleError, match="CogVideoXDDIMScheduler.step differs from DDIM"):
        _check_against_step(Schedule.from_scheduler(plain), pipe.scheduler)


def test_the_video_families_are_listed():
    listed = supported()
    for name in ("WanPipeline", "LTXPipeline", "HunyuanVideoPipeline", "CogVideoXPipeline"):
        assert name in listed
    assert "CogVideoXDDIMScheduler" in listed["CogVideoXPipeline"]


# ------------------------------------------------------------------------------------ two processes
def _sharded_worker(out_dir: str) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    pipe = _wan("wan22")
    out = sample(pipe, **_kwargs("wan22", guidance_scale=5.0, guidance_scale_2=2.0, output_type="latent"),
                 generator=_generator(), accelerator=accelerator, **(TIGHT | dict(window_size=5)))
    torch.save({"latents": out.frames, "iterations": out.result.per_sample_iterations},
               f"{out_dir}/rank{accelerator.process_index}.pt")


def test_wan22_on_two_processes_equals_one(tmp_path):
    from test_distributed import _launch

    _launch(_sharded_worker, (str(tmp_path),), 2, tmp_path)
    pipe = _wan("wan22")
    single = sample(pipe, **_kwargs("wan22", guidance_scale=5.0, guidance_scale_2=2.0, output_type="latent"),
                    generator=_generator(), **(TIGHT | dict(window_size=5)))
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["iterations"] == single.result.per_sample_iterations
        # float32 network: a row's result may differ in the last bits with the batch's composition.
        assert float((got["latents"] - single.frames).abs().max()) < 1e-5 * max(1.0, float(single.frames.abs().max()))
