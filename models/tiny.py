"""Tiny random-weight DiT and Stable Diffusion pipelines of the real architectures, built offline.

They have the real component classes (``DiTTransformer2DModel`` with learned sigma and 1000
classes, ``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel`` with a real
``CLIPTokenizer``) and the real noise schedules, but a few thousand weights, so tests and examples
run on a CPU in milliseconds without the hub. Weights come from a fixed seed (the global torch RNG
is left untouched), modules are in ``eval()`` mode (class-label dropout off), float32, on the CPU.

``save_tiny_pipeline`` writes them as ordinary diffusers pipeline
directories, so the loading code that serves hub checkpoints is exercised on local directories.
"""

from __future__ import annotations

import copy
import functools
import os

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    DiTPipeline,
    DiTTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from paratAA.pipelines.tiny import tiny_clip_tokenizer

__all__ = [
    "DIT_SCHEDULER_CONFIG",
    "SD_SCHEDULER_CONFIG",
    "build_tiny_dit_pipeline",
    "build_tiny_sd_pipeline",
    "save_tiny_pipeline",
    "tiny_pipeline",
]

SEED = 0
# DiT's training schedule (the original repo's and diffusers' conversion script's): linear betas.
DIT_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                            prediction_type="epsilon", clip_sample=False)
# SD 1.5 ships a PNDM scheduler config with these fields; DDIM built from it uses leading spacing.
SD_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                           beta_schedule="scaled_linear", set_alpha_to_one=False, skip_prk_steps=True,
                           steps_offset=1, prediction_type="epsilon")
_TOKENIZER_MAX_LENGTH = 16  # tiny_clip_tokenizer's


def _tiny_vae() -> AutoencoderKL:
    # Two blocks: latents are 2x smaller than images (SD/DiT use 4 blocks, 8x).
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=16,
    )


def build_tiny_dit_pipeline(seed: int = SEED) -> DiTPipeline:
    """A tiny DiT pipeline: 2-layer DiT (8x8x4 latents, patch 2, learned sigma, 1000 classes), tiny VAE.

    Args:
        seed: weight initialisation seed.

    Returns:
        A float32 CPU ``DiTPipeline`` in eval mode with a DDIM scheduler of DiT's training schedule.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
            sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
        )
        vae = _tiny_vae()
    pipe = DiTPipeline(transformer=transformer.eval(), vae=vae.eval(),
                       scheduler=DDIMScheduler(**DIT_SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiny_tokenizer() -> CLIPTokenizer:
    """A real CLIP BPE tokenizer over lowercase letters, digits and a few merges (``paratAA.pipelines.tiny``)."""
    return tiny_clip_tokenizer()


def build_tiny_sd_pipeline(seed: int = SEED) -> StableDiffusionPipeline:
    """A tiny Stable Diffusion pipeline: 8x8x4 latents, 2-level UNet, 2-layer CLIP text encoder.

    Args:
        seed: weight initialisation seed.

    Returns:
        A float32 CPU ``StableDiffusionPipeline`` in eval mode, no safety checker, with SD 1.5's
        scheduler configuration (a ``PNDMScheduler``, as SD 1.5 ships).
    """
    tokenizer = _tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
        )
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer.get_vocab()), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=_TOKENIZER_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
        scheduler=PNDMScheduler(**SD_SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


_BUILDERS = {"dit": build_tiny_dit_pipeline, "sd": build_tiny_sd_pipeline}


@functools.lru_cache(maxsize=None)
def _cached(kind: str) -> DiffusionPipeline:
    if kind not in _BUILDERS:
        raise ValueError(f"kind must be one of {sorted(_BUILDERS)}, got {kind!r}")
    return _BUILDERS[kind]()


def tiny_pipeline(kind: str) -> DiffusionPipeline:
    """The tiny ``"dit"`` or ``"sd"`` pipeline, built once per process; each call returns an independent copy."""
    return copy.deepcopy(_cached(kind))


def save_tiny_pipeline(kind: str, path: str | os.PathLike) -> str:
    """Write the tiny ``"dit"`` or ``"sd"`` pipeline as a diffusers pipeline directory (``save_pretrained``).

    Args:
        kind: ``"dit"`` (``DiTPipeline``) or ``"sd"`` (``StableDiffusionPipeline``).
        path: target directory (created).

    Returns:
        The directory, as a string.
    """
    _cached(kind).save_pretrained(path)
    return str(path)
