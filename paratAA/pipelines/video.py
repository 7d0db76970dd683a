"""The adapters of the video pipeline families: Wan 2.1 / 2.2, LTX-Video, HunyuanVideo, CogVideoX.

Each class mirrors one diffusers pipeline's denoising-loop body (its ``__call__``), as
``paratAA.pipelines.families`` does for the image pipelines: which network arguments are per-row
conditioning, how the step's timestep reaches the network, how the outputs combine (guidance).
Everything else (prompt encoding, latent packing, rotary embeddings, ``set_timesteps`` with its
shift, decoding the video once at the end) is the pipeline's own call (``paratAA.pipelines.base``):
the recorded network call's other arguments (LTX's frame/height/width and RoPE scale, CogVideoX's
rotary embeddings, Wan's attention kwargs) are replayed as the pipeline made them.

Family specifics:

- Wan 2.2 (``transformer_2`` and ``boundary_ratio``): the high-noise expert ``transformer`` runs the
  steps with ``t >= boundary_ratio * num_train_timesteps`` with ``guidance_scale``, the low-noise
  ``transformer_2`` the others with ``guidance_scale_2``; each solver row goes to the expert (and
  guidance) of its own step.
- CogVideoX ships ``CogVideoXDDIMScheduler``: DDIM (eta 0) on its SNR-shifted ``alphas_cumprod``,
  read as a ``DDIMScheduler`` carrying those values (checked against its own ``step``).
  ``CogVideoXDPMScheduler`` (a stochastic multistep sampler with its own ``step`` signature) is
  refused with the line that switches to the DDIM one.
- Schedulers the project's ``Schedule`` does not read are refused by name with the switching line.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch

from paratAA.schedule import Schedule, ScheduleError

from .base import NetworkCall, PipelineAdapter, UnsupportedPipelineError
from .guidance import batched_cfg, true_cfg

__all__ = ["CogVideoXAdapter", "HunyuanVideoAdapter", "LTXAdapter", "VIDEO_ADAPTERS", "VideoAdapter",
           "WanAdapter"]

_FLOW_MATCH = "FlowMatchEulerDiscreteScheduler"
# The FlowMatchEulerDiscreteScheduler line for pipelines shipping flow-sigma multistep schedulers (shift kept).
_FLOW_SHIFT = ", shift=pipe.scheduler.config.get('flow_shift', 1.0)"


class VideoAdapter(PipelineAdapter):
    """Shared by the video families: frames decoded by the pipeline's ``video_processor``."""

    def decode(self, latents: torch.Tensor, arguments: dict[str, Any], output_type: str) -> Any:
        """Final latents to the pipeline's frames, as its call ends (``output_type`` as it handles it)."""
        if output_type == "latent":
            return latents
        with torch.no_grad():
            video = self.decode_pixels(latents, arguments)
        return self.pipe.video_processor.postprocess_video(video, output_type=output_type)


# --------------------------------------------------------------------------------------------- Wan
class WanAdapter(VideoAdapter):
    """``WanPipeline`` (Wan 2.1; Wan 2.2 with two experts): flow matching on ``(B, C, F, H, W)`` latents.

    Two transformer calls per step with guidance (``guidance_scale > 1``): the prompt's, then the
    negative prompt's; ``uncond + scale * (cond - uncond)``. The timestep is the scheduler's, per
    row (per token with ``expand_timesteps``, Wan 2.2 TI2V: every token gets the row's timestep,
    as the text-to-video mask of ones gives). Wan 2.2: see the module docstring.
    """

    pipeline_classes = ("WanPipeline",)
    schedulers = (_FLOW_MATCH, "UniPCMultistepScheduler")
    suggested_scheduler = {"WanPipeline": _FLOW_MATCH}
    suggested_arguments = {"WanPipeline": _FLOW_SHIFT}
    denoiser = "transformer"
    latent_argument = "hidden_states"
    batched_arguments = ("encoder_hidden_states",)

    def __init__(self, pipe: Any, max_batch_size: int | None = None):
        if getattr(pipe, "transformer", None) is None:  # Wan 2.2 may ship only its low-noise expert
            self.denoiser = "transformer_2"
        super().__init__(pipe, max_batch_size)
        self.guidance_argument = "guidance_scale"

    def boundary_timestep(self) -> float | None:
        """Timesteps at or above this run ``transformer`` (None: one network for every step)."""
        ratio = self.pipe.config.boundary_ratio
        return None if ratio is None else ratio * self.pipe.scheduler.config.num_train_timesteps

    def extra_denoisers(self) -> list[Any]:
        second = getattr(self.pipe, "transformer_2", None)
        return [second] if second is not None and second is not self.module else []

    def _expert(self, module: Any, guidance_argument: str) -> "WanAdapter":
        expert = copy.copy(self)
        expert.module, expert.guidance_argument = module, guidance_argument
        return expert

    def eps_fn(self, calls: list[NetworkCall], schedule: Schedule, num_samples: int, arguments: dict[str, Any]) -> Any:
        boundary = self.boundary_timestep()
        if boundary is None:
            return super().eps_fn(calls, schedule, num_samples, arguments)
        pipe = self.pipe
        experts = [(pipe.transformer, "guidance_scale"), (pipe.transformer_2, "guidance_scale_2")]
        if any(module is None for module, _ in experts):
            raise UnsupportedPipelineError("WanPipeline: boundary_ratio is set but transformer or transformer_2 "
                                           "is None; the pipeline's loop would fail too")
        high, low = (PipelineAdapter.eps_fn(self._expert(module, name), calls, schedule, num_samples, arguments)
                     for module, name in experts)
        low_step = schedule.timesteps.cpu() < boundary  # the pipeline: t >= boundary runs transformer

        def eps(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
            rows_low = low_step[steps.cpu()].to(steps.device)
            if bool(rows_low.all()):
                return low(x, steps, samples)
            if not bool(rows_low.any()):
                return high(x, steps, samples)
            out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
            out[~rows_low] = high(x[~rows_low], steps[~rows_low], samples[~rows_low])
            out[rows_low] = low(x[rows_low], steps[rows_low], samples[rows_low])
            return out

        return eps

    def _call(self, call: NetworkCall, copies: int, x: torch.Tensor, t: torch.Tensor, samples: torch.Tensor,
              num_samples: int) -> list[torch.Tensor]:
        recorded = call.arguments[self.timestep_argument]
        if isinstance(recorded, torch.Tensor) and recorded.dim() == 2:  # expand_timesteps: one per token
            t = t[:, None].expand(-1, recorded.shape[1])
        return super()._call(call, copies, x, t, samples, num_samples)

    def guidance_scale(self, arguments: dict[str, Any]) -> float:
        """This expert's guidance: ``guidance_scale``; the low-noise one's ``guidance_scale_2`` (default: the first)."""
        scale = arguments.get(self.guidance_argument)
        return arguments["guidance_scale"] if scale is None else scale

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        return true_cfg(outputs, self.guidance_scale(arguments))

    def decode_pixels(self, latents: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        vae = self.pipe.vae
        latents = latents.to(vae.device, vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        return vae.decode(latents / inverse_std + mean, return_dict=False)[0]


# --------------------------------------------------------------------------------------------- LTX
class LTXAdapter(VideoAdapter):
    """``LTXPipeline``: flow matching on packed latents ``(B, tokens, channels)``.

    One transformer call on the [negative, positive] batch; the output is cast to float32, guided,
    then ``guidance_rescale`` when set (as the pipeline does).
    """

    pipeline_classes = ("LTXPipeline",)
    schedulers = (_FLOW_MATCH,)
    suggested_scheduler = {"LTXPipeline": _FLOW_MATCH}
    denoiser = "transformer"
    latent_argument = "hidden_states"
    batched_arguments = ("encoder_hidden_states", "encoder_attention_mask")

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        (parts,) = outputs
        return batched_cfg([part.float() for part in parts], arguments["guidance_scale"],
                           arguments.get("guidance_rescale") or 0.0)

    def decode_pixels(self, latents: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        """The pipeline's post-loop code. With a timestep-conditioned VAE its decode noise is drawn
        from the call's ``generator`` in its current state (``sample`` uses the pipeline's own draw)."""
        from diffusers.utils.torch_utils import randn_tensor

        pipe, vae = self.pipe, self.pipe.vae
        frames = (arguments["num_frames"] - 1) // pipe.vae_temporal_compression_ratio + 1
        height = arguments["height"] // pipe.vae_spatial_compression_ratio
        width = arguments["width"] // pipe.vae_spatial_compression_ratio
        latents = pipe._unpack_latents(latents, frames, height, width, pipe.transformer_spatial_patch_size,
                                       pipe.transformer_temporal_patch_size)
        latents = pipe._denormalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        timestep = None
        if vae.config.timestep_conditioning:
            batch = latents.shape[0]
            noise = randn_tensor(latents.shape, generator=arguments.get("generator"), device=latents.device,
                                 dtype=latents.dtype)
            decode_timestep = arguments.get("decode_timestep", 0.0)
            decode_timestep = decode_timestep if isinstance(decode_timestep, list) else [decode_timestep] * batch
            scale = arguments.get("decode_noise_scale")
            scale = decode_timestep if scale is None else (scale if isinstance(scale, list) else [scale] * batch)
            timestep = torch.tensor(decode_timestep, device=latents.device, dtype=latents.dtype)
            scale = torch.tensor(scale, device=latents.device, dtype=latents.dtype)[:, None, None, None, None]
            latents = (1 - scale) * latents + scale * noise
        return vae.decode(latents.to(vae.dtype), timestep, return_dict=False)[0]


# ------------------------------------------------------------------------------------ HunyuanVideo
class HunyuanVideoAdapter(VideoAdapter):
    """``HunyuanVideoPipeline``: flow matching; guidance-distilled (``guidance * 1000`` embedded per row).

    The timestep is fed in float32 (the latents' dtype). True CFG (``true_cfg_scale > 1`` with a
    negative prompt) is a second call with the negative embeddings: ``neg + true_cfg_scale * (cond - neg)``.
    """

    pipeline_classes = ("HunyuanVideoPipeline",)
    schedulers = (_FLOW_MATCH,)
    suggested_scheduler = {"HunyuanVideoPipeline": _FLOW_MATCH}
    denoiser = "transformer"
    latent_argument = "hidden_states"
    batched_arguments = ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections", "guidance")

    def network_timestep(self, t: torch.Tensor, latent_dtype: torch.dtype) -> torch.Tensor:
        return t.to(torch.float32)  # the pipeline: t.expand(B).to(latents.dtype), its latents are float32

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        return true_cfg(outputs, arguments["true_cfg_scale"])

    def decode_pixels(self, latents: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        vae = self.pipe.vae
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]


# --------------------------------------------------------------------------------------- CogVideoX
class CogVideoXAdapter(VideoAdapter):
    """``CogVideoXPipeline``: latents ``(B, F, C, H, W)``; one call on the [negative, positive] batch, its
    output cast to float32 and guided. Rotary embeddings are replayed as the pipeline computed them.
    ``use_dynamic_cfg=True`` (a guidance scale changing with the step) is refused.
    """

    pipeline_classes = ("CogVideoXPipeline",)
    schedulers = ("CogVideoXDDIMScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
    suggested_scheduler = {"CogVideoXPipeline": "CogVideoXDDIMScheduler"}
    denoiser = "transformer"
    latent_argument = "hidden_states"
    batched_arguments = ("encoder_hidden_states",)

    def check_arguments(self, arguments: dict[str, Any]) -> None:
        super().check_arguments(arguments)
        if arguments.get("use_dynamic_cfg"):
            raise UnsupportedPipelineError(
                "use_dynamic_cfg: not supported by paratAA.pipelines.sample (the guidance scale changes with the "
                "step); use use_dynamic_cfg=False")

    def schedule(self, scheduler: Any, eta: float = 0.0) -> Schedule:
        """``CogVideoXDDIMScheduler``: its ``step`` is DDIM with eta 0 on its own (SNR-shifted, zero-terminal)
        ``alphas_cumprod``; read as a ``DDIMScheduler`` carrying those, then checked against its ``step``."""
        if type(scheduler).__name__ != "CogVideoXDDIMScheduler":
            return super().schedule(scheduler, eta)
        from diffusers import DDIMScheduler

        accepted = inspect.signature(DDIMScheduler.__init__).parameters
        ddim = DDIMScheduler(**{k: v for k, v in scheduler.config.items() if k in accepted})
        ddim.alphas_cumprod = scheduler.alphas_cumprod.detach().cpu().clone()
        ddim.final_alpha_cumprod = torch.as_tensor(scheduler.final_alpha_cumprod).detach().cpu().clone()
        ddim.num_inference_steps = scheduler.num_inference_steps
        ddim.timesteps = scheduler.timesteps.detach().cpu().clone()
        schedule = Schedule.from_scheduler(ddim, eta=0.0)
        _check_against_step(schedule, scheduler)
        return schedule

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        (parts,) = outputs
        return batched_cfg([part.float() for part in parts], arguments["guidance_scale"])

    def decode_pixels(self, latents: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        pipe = self.pipe
        config = pipe.transformer.config
        num_frames = arguments.get("num_frames") or config.sample_frames
        latent_frames = (num_frames - 1) // pipe.vae_scale_factor_temporal + 1
        patch_t = config.patch_size_t
        padding = patch_t - latent_frames % patch_t if patch_t is not None and latent_frames % patch_t else 0
        return pipe.decode_latents(latents[:, padding:])  # CogVideoX 1.5 pads latent frames to patch_size_t


def _check_against_step(schedule: Schedule, scheduler: Any) -> None:
    """ScheduleError unless ``scheduler.step`` (deterministic, stateless) gives the schedule's steps."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for k, t in enumerate(scheduler.timesteps):
        i = schedule.num_steps - 1 - k
        x, out = (torch.randn((2, 3), generator=generator, dtype=torch.float64) for _ in range(2))
        got = scheduler.step(out.float(), t.cpu(), x.float(), return_dict=False)[0].to(torch.float64)
        expected = schedule.step(i, x, out, torch.zeros_like(x))
        worst = max(worst, float(((got - expected).abs() / (1 + expected.abs())).max()))
    if not worst <= 1e-4:
        raise ScheduleError(f"scheduler: {type(scheduler).__name__}.step differs from DDIM by {worst:.2e}; "
                            "this configuration is not supported")


VIDEO_ADAPTERS: tuple[type[PipelineAdapter], ...] = (WanAdapter, LTXAdapter, HunyuanVideoAdapter, CogVideoXAdapter)
