"""The adapters of the supported pipeline families: how each pipeline calls its network and guides it.

Each class mirrors one diffusers pipeline's denoising-loop body (read its ``__call__``): which
network arguments are per-row conditioning, how the step's timestep reaches the network, and how
classifier-free guidance combines the outputs. Everything else comes from the pipeline itself
(``paratAA.pipelines.base``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import torch

from .base import PipelineAdapter
from .defaults import GUIDANCE_RULES
from .guidance import batched_cfg, guided, true_cfg

__all__ = ["ADAPTERS", "DiTAdapter", "FluxAdapter", "SD3Adapter", "StableDiffusionAdapter"]


class StableDiffusionAdapter(PipelineAdapter):
    """``StableDiffusionPipeline`` (SD 1.x, 2.x; epsilon or v prediction) and ``StableDiffusionXLPipeline``.

    UNet call: ``unet(latents, t, encoder_hidden_states, timestep_cond, cross_attention_kwargs,
    added_cond_kwargs)`` (SDXL: ``text_embeds``, ``time_ids``); guidance on the [negative,
    positive] halves of the batch, as the pipeline concatenates them, then ``guidance_rescale``
    when set.
    """

    pipeline_classes = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
    schedulers = ("DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                  "UniPCMultistepScheduler")
    suggested_scheduler = {"StableDiffusionPipeline": "DDIMScheduler", "StableDiffusionXLPipeline": "EulerDiscreteScheduler"}
    # DDIM's own default clips the predicted sample (not affine); SD 1.x/2.x configurations may not say.
    suggested_arguments = {"StableDiffusionPipeline": ", clip_sample=False"}
    denoiser = "unet"
    latent_argument = "sample"
    batched_arguments = ("encoder_hidden_states", "timestep_cond", "class_labels", "added_cond_kwargs.text_embeds",
                         "added_cond_kwargs.time_ids")
    unsupported_arguments = {
        **PipelineAdapter.unsupported_arguments,
        "denoising_end": "it stops the loop part-way (SDXL base + refiner); run the full loop",
    }

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        (parts,) = outputs
        # The call's own arguments, not the pipeline's attributes: those are the latest call's, and a
        # prepared eps_fn may run after the pipeline has been called again.
        return batched_cfg(parts, arguments["guidance_scale"], arguments.get("guidance_rescale") or 0.0)

    def decode_pixels(self, latents: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        vae = self.pipe.vae
        if type(self.pipe).__name__ == "StableDiffusionPipeline":
            return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
        # SDXL: float32 VAE when it overflows in float16, latents de-normalised with its mean and std if set.
        upcast = vae.dtype == torch.float16 and vae.config.force_upcast
        if upcast:
            self.pipe.upcast_vae()
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
        if mean is not None and std is not None:
            mean = torch.tensor(mean).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            std = torch.tensor(std).view(1, -1, 1, 1).to(latents.device, latents.dtype)
            latents = latents * std / vae.config.scaling_factor + mean
        else:
            latents = latents / vae.config.scaling_factor
        image = vae.decode(latents, return_dict=False)[0]
        if upcast:
            vae.to(dtype=torch.float16)
        if getattr(self.pipe, "watermark", None) is not None:
            image = self.pipe.watermark.apply_watermark(image)
        return image


class SD3Adapter(PipelineAdapter):
    """``StableDiffusion3Pipeline``: flow matching; transformer with joint text attention and pooled projections.

    Guidance on the [negative, positive] halves of the batch. Skip-layer guidance is refused.
    """

    pipeline_classes = ("StableDiffusion3Pipeline",)
    schedulers = ("FlowMatchEulerDiscreteScheduler",)
    suggested_scheduler = {"StableDiffusion3Pipeline": "FlowMatchEulerDiscreteScheduler"}
    denoiser = "transformer"
    latent_argument = "hidden_states"
    batched_arguments = ("encoder_hidden_states", "pooled_projections")
    unsupported_arguments = {
        **PipelineAdapter.unsupported_arguments,
        "skip_guidance_layers": "skip-layer guidance adds a network pass on some steps only",
    }

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        (parts,) = outputs
        return batched_cfg(parts, arguments["guidance_scale"])

    def decode_pixels(self, latents: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        vae = self.pipe.vae
        return vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]


class FluxAdapter(PipelineAdapter):
    """``FluxPipeline``: flow matching on packed latents ``(B, tokens, channels)``.

    The transformer gets ``timestep / 1000`` in the latents' dtype and, for guidance-distilled
    models (``guidance_embeds``), the embedded ``guidance`` per row. True CFG
    (``true_cfg_scale > 1`` with a negative prompt) is a second call with the negative embeddings:
    ``neg + true_cfg_scale * (cond - neg)``.
    """

    pipeline_classes = ("FluxPipeline",)
    schedulers = ("FlowMatchEulerDiscreteScheduler",)
    suggested_scheduler = {"FluxPipeline": "FlowMatchEulerDiscreteScheduler"}
    denoiser = "transformer"
    latent_argument = "hidden_states"
    batched_arguments = ("encoder_hidden_states", "pooled_projections", "guidance")
    unsupported_arguments = {
        **PipelineAdapter.unsupported_arguments,
        "negative_ip_adapter_image": "IP-Adapter inputs are not supported",
        "negative_ip_adapter_image_embeds": "IP-Adapter inputs are not supported",
    }

    def network_timestep(self, t: torch.Tensor, latent_dtype: torch.dtype) -> torch.Tensor:
        return t.to(latent_dtype) / 1000

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        return true_cfg(outputs, arguments["true_cfg_scale"])

    def decode_pixels(self, latents: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        pipe, vae = self.pipe, self.pipe.vae
        default = pipe.default_sample_size * pipe.vae_scale_factor
        height, width = arguments.get("height") or default, arguments.get("width") or default
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)  # the pipeline's own unpacking
        return vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]


class _PixelSpaceDecoder:
    """Stands in for the VAE of a pixel-space ``DiTPipeline`` during its own call: decoding is the identity."""

    config = SimpleNamespace(scaling_factor=1.0)

    @staticmethod
    def decode(latents: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(sample=latents)


class DiTAdapter(PipelineAdapter):
    """``DiTPipeline``: class-conditional; with guidance the batch is [classes, null class];
    learned-sigma channels are dropped. The pipeline steps the doubled batch, so ``step`` carries
    two copies of each sample.

    Options beyond the pipeline's own behaviour:

    - ``guidance="original"``: the original DiT code's rule (its ``forward_with_cfg``, which the
      authors' ParaTAA script uses): only the first 3 latent channels are guided, the 4th takes the
      conditional prediction. The default ``"all"`` guides every channel, as ``DiTPipeline`` does.
    - A DiT with other than ImageNet's 1000 classes (``models/digits``): ``DiTPipeline`` writes the
      null class as label 1000; it becomes the model's own null class, ``num_classes``.
    - Pixel space: a pipeline without a VAE (``vae=None``) decodes to the sample itself, mapped
      from [-1, 1] as the pipeline maps a decoded image. ``sample`` lends the pipeline's own call an
      identity decoder for its ``vae.decode`` (``full_call``).
    """

    pipeline_classes = ("DiTPipeline",)
    schedulers = ("DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "UniPCMultistepScheduler")
    suggested_scheduler = {"DiTPipeline": "DDIMScheduler"}
    suggested_arguments = {"DiTPipeline": ", clip_sample=False"}
    denoiser = "transformer"
    latent_argument = "hidden_states"
    batched_arguments = ("class_labels",)
    initial_latents_argument = None
    placeholder_arguments = {"class_labels": [0]}
    PIPELINE_NULL_CLASS = 1000  # DiTPipeline.__call__'s null label
    ORIGINAL_GUIDED_CHANNELS = 3  # the original DiT forward_with_cfg guides this many channels

    def __init__(self, pipe: Any, max_batch_size: int | None = None, guidance: str = "all"):
        if guidance not in GUIDANCE_RULES:
            raise ValueError(f"guidance must be one of {GUIDANCE_RULES}, got {guidance!r}")
        super().__init__(pipe, max_batch_size)
        self.guidance = guidance

    @property
    def num_classes(self) -> int:
        """The model's class count; label ``num_classes`` is its null (unconditional) class."""
        return int(self.module.config.num_embeds_ada_norm)

    def check_arguments(self, arguments: dict[str, Any]) -> None:
        super().check_arguments(arguments)
        labels = arguments.get("class_labels")
        labels = torch.as_tensor([] if labels is None else labels).reshape(-1)
        if labels.is_floating_point() or (labels.numel() and not 0 <= int(labels.min()) <= int(labels.max())
                                          < self.num_classes):
            raise ValueError(f"class_labels: expected integer labels in [0, {self.num_classes}) for this model, "
                             f"got {labels.tolist()}")

    @contextlib.contextmanager
    def full_call(self) -> Iterator[None]:
        """A pixel-space pipeline (``vae=None``) gets, for the call, a decoder that returns the sample
        itself: ``DiTPipeline`` then maps it from [-1, 1] as it maps a decoded image (``decode``)."""
        if self.pipe.vae is not None:
            yield
            return
        # Set in the instance dict: DiffusionPipeline.__setattr__ would register it as a component.
        self.pipe.__dict__["vae"] = _PixelSpaceDecoder()
        try:
            yield
        finally:
            self.pipe.__dict__["vae"] = None

    def runs_as_adapted(self) -> bool:
        return self.guidance == "all" and self.pipe.vae is not None and self.num_classes == self.PIPELINE_NULL_CLASS

    def rewrite_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        labels = arguments.get("class_labels")
        if self.num_classes == self.PIPELINE_NULL_CLASS or not isinstance(labels, torch.Tensor):
            return arguments
        null = labels == self.PIPELINE_NULL_CLASS
        return {**arguments, "class_labels": torch.where(null, torch.full_like(labels, self.num_classes), labels)}

    def step_copies(self, arguments: dict[str, Any]) -> int:
        return 2 if arguments["guidance_scale"] > 1 else 1

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        (parts,) = outputs
        channels = self.module.config.in_channels
        if len(parts) == 1:
            out = parts[0]
            return out[:, :channels] if self.module.config.out_channels // 2 == channels else out
        cond, uncond = (part[:, :channels] for part in parts)
        output = guided(uncond, cond, arguments["guidance_scale"])
        if self.guidance == "original":
            output[:, self.ORIGINAL_GUIDED_CHANNELS:] = cond[:, self.ORIGINAL_GUIDED_CHANNELS:]
        return output

    def decode(self, latents: torch.Tensor, arguments: dict[str, Any], output_type: str) -> Any:
        """As ``DiTPipeline`` ends: images in [0, 1]; ``pt`` tensors, else numpy (``pil``: PIL images,
        grey for one-channel pixel-space models)."""
        vae = self.pipe.vae
        with torch.no_grad():
            samples = latents if vae is None else vae.decode(latents / vae.config.scaling_factor).sample
        samples = (samples / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return samples
        samples = samples.cpu().permute(0, 2, 3, 1).float().numpy()
        return self.pipe.numpy_to_pil(samples) if output_type == "pil" else samples


ADAPTERS: tuple[type[PipelineAdapter], ...] = (StableDiffusionAdapter, SD3Adapter, FluxAdapter, DiTAdapter)
