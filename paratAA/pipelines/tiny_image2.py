"""Tiny random-weight Qwen-Image, Sana, PixArt-Sigma, Chroma and FLUX.1 Kontext pipelines, built offline.

As ``paratAA.pipelines.tiny``: the real pipeline, transformer, VAE and scheduler classes with each
pipeline's shipped scheduler configuration, a few thousand weights from a fixed seed (the global
RNG is left untouched); float32, CPU, eval mode.

Text encoders: PixArt-Sigma and Chroma a tiny T5 with the tiny T5 tokenizer (call them with
``max_sequence_length=16``); FLUX.1 Kontext the tiny Flux pipeline's components (CLIP and T5).
Qwen-Image's Qwen2.5-VL and Sana's Gemma 2 are not built (``text_encoder=None``): call those
pipelines with prompt embeddings (``tiny_image2_embeddings(kind, batch)``), which they accept in
place of prompts.
Sizes a test calls with: ``TINY_IMAGE2_CALL[kind]`` (Sana and PixArt without resolution binning,
whose bins are 512 pixels and more). Qwen-Image and Chroma are tiny with their default size too;
Sana (1024 pixels), PixArt (binning) and Kontext (``max_area``) need those arguments.
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny import SEED, _t5, _vae, tiny_t5_tokenizer

__all__ = ["TINY_IMAGE2_CALL", "build_tiny_chroma_pipeline", "build_tiny_flux_kontext_pipeline",
           "build_tiny_pixart_sigma_pipeline",
           "build_tiny_qwenimage_pipeline", "build_tiny_sana_pipeline", "tiny_image2_embeddings"]

# Qwen-Image's flow matching (exponential dynamic shifting, terminal shift).
QWENIMAGE_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5,
                           max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                           time_shift_type="exponential")
# Sana's DPM-Solver++ on flow sigmas (flow_shift 3).
SANA_SCHEDULER = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True,
                      flow_shift=3.0, algorithm_type="dpmsolver++", solver_order=2)
# PixArt-Sigma's DPM-Solver++ 2M over the linear DDPM betas.
PIXART_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                        prediction_type="epsilon", algorithm_type="dpmsolver++", solver_order=2,
                        timestep_spacing="linspace", lower_order_final=True)
_TOKENS = 16
# Chroma's flow matching (FLUX.1-schnell's, dynamic shifting).
CHROMA_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                        base_image_seq_len=256, max_image_seq_len=4096)
_DIMS = {"qwenimage": 16, "sana": 8, "pixart": 32, "chroma": 32}
TINY_IMAGE2_CALL: dict[str, dict[str, Any]] = {
    "qwenimage": dict(height=32, width=32),
    "sana": dict(height=32, width=32, use_resolution_binning=False),
    "pixart": dict(height=16, width=16, use_resolution_binning=False, max_sequence_length=_TOKENS),
    "chroma": dict(height=16, width=16, max_sequence_length=_TOKENS),
    "flux-kontext": dict(height=16, width=16, max_area=16 * 16, _auto_resize=False, max_sequence_length=_TOKENS),
}


def build_tiny_qwenimage_pipeline(seed: int = SEED, text_encoders: bool = True) -> Any:
    """Qwen-Image: a 1-layer MMDiT (patch 2, text 16), a 3-level Qwen-Image VAE (4x spatial, 4 latent
    channels); no text encoder (``text_encoders`` is ignored): call it with prompt embeddings."""
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = QwenImageTransformer2DModel(patch_size=2, in_channels=16, out_channels=4, num_layers=1,
                                                  attention_head_dim=16, num_attention_heads=2,
                                                  joint_attention_dim=_DIMS["qwenimage"],
                                                  axes_dims_rope=(8, 4, 4)).eval()
        vae = AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=1,
                                     temperal_downsample=[False, True], latents_mean=[0.1, -0.2, 0.0, 0.3],
                                     latents_std=[1.5, 0.8, 1.0, 2.0]).eval()
    pipe = QwenImagePipeline(scheduler=FlowMatchEulerDiscreteScheduler(**QWENIMAGE_SCHEDULER), vae=vae,
                             text_encoder=None, tokenizer=None, transformer=transformer)
    pipe.default_sample_size = TINY_IMAGE2_CALL["qwenimage"]["height"] // pipe.vae_scale_factor  # tiny by default
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sana_pipeline(seed: int = SEED, text_encoders: bool = True) -> Any:
    """Sana: a 1-layer linear-attention transformer (text 8), a 3-level DC-AE (4x spatial, 4 latent
    channels); no text encoder (``text_encoders`` is ignored); Sana's flow DPM-Solver++ scheduler."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=1,
                                             num_attention_heads=2, attention_head_dim=4, num_cross_attention_heads=2,
                                             cross_attention_head_dim=4, cross_attention_dim=8,
                                             caption_channels=_DIMS["sana"], sample_size=32).eval()
        vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                            encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                            decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                            encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                            encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
                            encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
                            downsample_block_type="conv",
                            upsample_block_type="interpolate", decoder_norm_types="rms_norm", decoder_act_fns="silu",
                            scaling_factor=0.41407).eval()
    pipe = SanaPipeline(tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
                        scheduler=DPMSolverMultistepScheduler(**SANA_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pixart_sigma_pipeline(seed: int = SEED, text_encoders: bool = True) -> Any:
    """PixArt-Sigma: a 2-layer PixArt transformer (patch 2, learned sigma, text 32), the tiny SD VAE
    (8x8 latents), a tiny T5; PixArt-Sigma's DPM-Solver++ 2M scheduler."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tokenizer, text_encoder = None, None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
                                               num_attention_heads=2, caption_channels=_DIMS["pixart"], in_channels=4,
                                               cross_attention_dim=16, out_channels=8, attention_bias=True,
                                               activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                               norm_type="ada_norm_single", norm_elementwise_affine=False,
                                               norm_eps=1e-6).eval()
        vae = _vae()
        if text_encoders:
            tokenizer = tiny_t5_tokenizer()
            text_encoder = _t5(tokenizer, _DIMS["pixart"])
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                               scheduler=DPMSolverMultistepScheduler(**PIXART_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_chroma_pipeline(seed: int = SEED, text_encoders: bool = True) -> Any:
    """Chroma: a 1+1-layer Chroma transformer over Flux-packed 2x2 latents (16 channels), the tiny SD VAE
    (8x8 latents, Flux's scaling and shift), a tiny T5 (32); Chroma's flow-matching scheduler."""
    from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

    tokenizer, text_encoder = None, None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = ChromaTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                               attention_head_dim=16, num_attention_heads=2,
                                               joint_attention_dim=_DIMS["chroma"], axes_dims_rope=(4, 4, 8),
                                               approximator_num_channels=8, approximator_hidden_dim=16,
                                               approximator_layers=1).eval()
        vae = _vae(scaling_factor=0.3611, shift_factor=0.1159)
        if text_encoders:
            tokenizer = tiny_t5_tokenizer()
            text_encoder = _t5(tokenizer, _DIMS["chroma"])
    pipe = ChromaPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**CHROMA_SCHEDULER), vae=vae,
                          text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer)
    pipe.default_sample_size = TINY_IMAGE2_CALL["chroma"]["height"] // pipe.vae_scale_factor  # tiny by default
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_flux_kontext_pipeline(seed: int = SEED, text_encoders: bool = True) -> Any:
    """FLUX.1 Kontext: the tiny Flux pipeline's transformer, VAE, text encoders and scheduler
    (``paratAA.pipelines.tiny``) in a ``FluxKontextPipeline``; call it with ``TINY_IMAGE2_CALL["flux-kontext"]``
    (a 16x16 ``max_area``, no auto-resize to Kontext's preferred resolutions)."""
    from diffusers import FluxKontextPipeline

    from .tiny import build_tiny_flux_pipeline

    components = build_tiny_flux_pipeline(seed, text_encoders).components
    pipe = FluxKontextPipeline(**{k: v for k, v in components.items()
                                  if k not in ("image_encoder", "feature_extractor")})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_image2_embeddings(kind: str, batch: int, seed: int = 0, negative: bool = True) -> dict[str, Any]:
    """Random prompt embeddings for a tiny ``"qwenimage"``, ``"sana"``, ``"pixart"`` or ``"chroma"`` pipeline's call.

    Returns ``prompt_embeds`` and its attention mask (``prompt_embeds_mask`` for Qwen-Image,
    ``prompt_attention_mask`` otherwise; the last prompt shorter), and with ``negative`` the
    negative ones (guidance; Qwen-Image's true CFG) and, for Sana and PixArt, ``negative_prompt=None``
    (their default ``""`` may not be given with negative embeddings).
    """
    generator = torch.Generator().manual_seed(seed)
    mask_name = "prompt_embeds_mask" if kind == "qwenimage" else "prompt_attention_mask"
    embeddings: dict[str, Any] = {"negative_prompt": None} if negative and kind in ("sana", "pixart") else {}
    for prefix in (["", "negative_"] if negative else [""]):
        embeddings[f"{prefix}prompt_embeds"] = torch.randn((batch, _TOKENS, _DIMS[kind]), generator=generator)
        mask = torch.ones(batch, _TOKENS, dtype=torch.long)
        mask[-1, _TOKENS // 2:] = 0
        embeddings[f"{prefix}{mask_name}"] = mask.bool() if kind == "chroma" else mask  # Chroma's is boolean
    return embeddings
