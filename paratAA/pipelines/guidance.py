"""Classifier-free guidance as the pipelines compute it, in one place for every adapter.

Two shapes of guided call exist in diffusers' pipelines:

- *batched* CFG: one network call on ``[negative, positive]`` rows, split into two halves
  (SD, SDXL, SD3, DiT, LTX, CogVideoX, Sana, PixArt): ``uncond + scale (cond - uncond)``, with SD's
  and LTX's optional ``guidance_rescale`` (the guided output's std pulled toward the conditional's);
- *true* CFG: a second call with the negative conditioning (Flux, HunyuanVideo, Qwen-Image, Wan,
  Chroma, Kontext): ``negative + scale (cond - negative)``, Qwen-Image's also renormalised.

All of them compute in the network's dtype, as the pipelines do.
"""

from __future__ import annotations

import torch

__all__ = ["batched_cfg", "guided", "true_cfg"]


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``."""
    return uncond + scale * (cond - uncond)


def batched_cfg(parts: list[torch.Tensor], scale: float, rescale: float = 0.0) -> torch.Tensor:
    """The guided output of a batched call's halves ``[uncond, cond]`` (one part: no guidance).

    Args:
        parts: the call's output, split into its guidance copies.
        scale: ``guidance_scale``.
        rescale: ``guidance_rescale`` (0: none), as SD's and LTX's pipelines apply it.
    """
    if len(parts) == 1:
        return parts[0]
    uncond, cond = parts
    output = guided(uncond, cond, scale)
    if rescale > 0:
        from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

        output = rescale_noise_cfg(output, cond, guidance_rescale=rescale)
    return output


def true_cfg(outputs: list[list[torch.Tensor]], scale: float, renormalise: bool = False) -> torch.Tensor:
    """The guided output of a pipeline with true CFG: ``outputs`` holds the positive call's output and,
    when guided, the negative call's (each unsplit). ``renormalise``: Qwen-Image's rescaling of the
    combined prediction to the conditional's norm along the last dimension."""
    if len(outputs) == 1:
        return outputs[0][0]
    (cond,), (negative,) = outputs
    combined = guided(negative, cond, scale)
    if renormalise:
        combined = combined * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))
    return combined
