"""The adapters of the newer image pipelines: Qwen-Image, Sana, PixArt-Sigma, Chroma, FLUX.1 Kontext.

As ``paratAA.pipelines.families``: each class mirrors its pipeline's denoising-loop body
(``__call__``): per-row conditioning, the timestep as the network gets it, guidance. Schedulers
the project's ``Schedule`` does not read (Sana's flow-sigma ``DPMSolverMultistepScheduler``)
are refused by name with the line that switches to one it reads.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import PipelineAdapter
from .families import FluxAdapter
from .guidance import batched_cfg, true_cfg

__all__ = ["ChromaAdapter", "FluxKontextAdapter", "IMAGE_ADAPTERS", "PixArtSigmaAdapter", "QwenImageAdapter",
           "SanaAdapter"]

_FLOW_MATCH = "FlowMatchEulerDiscreteScheduler"
_DPM = "DPMSolverMultistepScheduler"
_UNIPC = "UniPCMultistepScheduler"
# Sana's shipped scheduler: DPM-Solver++ on shifted flow sigmas (flow_prediction).


def _without_learned_sigma(prediction: torch.Tensor, module: Any, latent_channels: int) -> torch.Tensor:
    """The prediction's first half of channels when the network also predicts the variance (as the pipelines do)."""
    return prediction.chunk(2, dim=1)[0] if module.config.out_channels // 2 == latent_channels else prediction


class QwenImageAdapter(PipelineAdapter):
    """``QwenImagePipeline``: flow matching on packed latents; the transformer gets ``timestep / 1000``.

    True CFG (``true_cfg_scale > 1`` with a negative prompt): a second call with the negative
    embeddings, ``neg + s (cond - neg)`` rescaled to the conditional prediction's norm over the
    channels (as the pipeline does). Guidance-distilled models get ``guidance`` per row.
    """

    pipeline_classes = ("QwenImagePipeline",)
    schedulers = (_FLOW_MATCH,)
    suggested_scheduler = {"QwenImagePipeline": _FLOW_MATCH}
    denoiser = "transformer"
    latent_argument = "hidden_states"
    batched_arguments = ("encoder_hidden_states", "encoder_hidden_states_mask", "guidance")

    def network_timestep(self, t: torch.Tensor, latent_dtype: torch.dtype) -> torch.Tensor:
        return t.to(latent_dtype) / 1000

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        return true_cfg(outputs, arguments["true_cfg_scale"], renormalise=True)

    def decode(self, latents: torch.Tensor, arguments: dict[str, Any], output_type: str) -> Any:
        """As the pipeline ends: unpacked, de-normalised, decoded as a one-frame video, post-processed."""
        if output_type == "latent":
            return latents
        pipe, vae = self.pipe, self.pipe.vae
        default = pipe.default_sample_size * pipe.vae_scale_factor
        height, width = arguments.get("height") or default, arguments.get("width") or default
        with torch.no_grad():
            latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor).to(vae.dtype)
            shape = (1, vae.config.z_dim, 1, 1, 1)
            mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
            inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
            image = vae.decode(latents / inverse_std + mean, return_dict=False)[0][:, :, 0]
        return pipe.image_processor.postprocess(image, output_type=output_type)


class _BinnedImageAdapter(PipelineAdapter):
    """Sana and PixArt: one call on the [negative, positive] batch, learned-sigma channels dropped,
    ``use_resolution_binning`` resizing the decoded image back to the asked size."""

    denoiser = "transformer"
    latent_argument = "hidden_states"
    batched_arguments = ("encoder_hidden_states", "encoder_attention_mask")
    output_to_float = False

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        (parts,) = outputs
        if self.output_to_float:
            parts = [part.float() for part in parts]
        return _without_learned_sigma(batched_cfg(parts, arguments["guidance_scale"]), self.module,
                                      self.module.config.in_channels)

    def decode_pixels(self, latents: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        vae = self.pipe.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        if arguments.get("use_resolution_binning"):
            default = self.module.config.sample_size * self.pipe.vae_scale_factor
            height, width = arguments.get("height") or default, arguments.get("width") or default
            image = self.pipe.image_processor.resize_and_crop_tensor(image, width, height)
        return image


class SanaAdapter(_BinnedImageAdapter):
    """``SanaPipeline``: flow matching; the transformer gets ``timestep * timestep_scale``, its output is
    cast to float32 before guidance."""

    pipeline_classes = ("SanaPipeline",)
    schedulers = (_FLOW_MATCH, _UNIPC)  # its shipped flow-sigma DPM-Solver++ is not read by paratAA.schedule
    suggested_scheduler = {"SanaPipeline": _FLOW_MATCH}
    suggested_arguments = {"SanaPipeline": ", shift=pipe.scheduler.config.get('flow_shift', 1.0)"}
    output_to_float = True

    def network_timestep(self, t: torch.Tensor, latent_dtype: torch.dtype) -> torch.Tensor:
        return t * self.module.config.timestep_scale


class PixArtSigmaAdapter(_BinnedImageAdapter):
    """``PixArtSigmaPipeline``: DPM-Solver++ 2M (as shipped), DDIM, DDPM, Euler or UniPC on epsilon-predicting,
    learned-sigma latents; the timestep as the scheduler's (int64)."""

    pipeline_classes = ("PixArtSigmaPipeline",)
    schedulers = (_DPM, "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", _UNIPC)
    suggested_scheduler = {"PixArtSigmaPipeline": _DPM}


class ChromaAdapter(FluxAdapter):
    """``ChromaPipeline``: Flux's packed latents, timestep and decoding, without pooled text or embedded
    guidance. Guidance (``guidance_scale > 1``) is a second call with the negative prompt and its
    attention mask (text and image tokens, per row): ``neg + guidance_scale * (cond - neg)``.
    """

    pipeline_classes = ("ChromaPipeline",)
    suggested_scheduler = {"ChromaPipeline": _FLOW_MATCH}
    batched_arguments = ("encoder_hidden_states", "attention_mask")

    def combine(self, outputs: list[list[torch.Tensor]], arguments: dict[str, Any]) -> torch.Tensor:
        return true_cfg(outputs, arguments["guidance_scale"])


class FluxKontextAdapter(FluxAdapter):
    """``FluxKontextPipeline``: Flux, with the reference image's packed latents appended to every step's
    tokens (``cat([latents, image_latents], dim=1)``) and the prediction cut back to the latents'
    tokens. The image tokens of each row are taken from the recorded call; the output size follows
    ``max_area`` as the pipeline computes it.
    """

    pipeline_classes = ("FluxKontextPipeline",)
    suggested_scheduler = {"FluxKontextPipeline": _FLOW_MATCH}

    def _call(self, call: Any, copies: int, x: torch.Tensor, t: torch.Tensor, samples: torch.Tensor,
              num_samples: int) -> list[torch.Tensor]:
        recorded = call.arguments[self.latent_argument]
        tokens = x.shape[1]
        if recorded.shape[1] == tokens:  # no reference image
            return super()._call(call, copies, x, t, samples, num_samples)
        image = recorded[samples.to(recorded.device), tokens:]  # Flux's calls carry one copy per sample
        parts = super()._call(call, copies, torch.cat([x, image.to(x.dtype)], dim=1), t, samples, num_samples)
        return [part[:, :tokens] for part in parts]

    def decode_pixels(self, latents: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        pipe, vae = self.pipe, self.pipe.vae
        default = pipe.default_sample_size * pipe.vae_scale_factor
        height, width = arguments.get("height") or default, arguments.get("width") or default
        aspect_ratio, max_area = width / height, arguments["max_area"]
        multiple_of = pipe.vae_scale_factor * 2
        width = round((max_area * aspect_ratio) ** 0.5) // multiple_of * multiple_of
        height = round((max_area / aspect_ratio) ** 0.5) // multiple_of * multiple_of
        latents = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        return vae.decode(latents / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]


IMAGE_ADAPTERS: tuple[type[PipelineAdapter], ...] = (QwenImageAdapter, SanaAdapter, PixArtSigmaAdapter, ChromaAdapter,
                                                     FluxKontextAdapter)
