"""Tiny random-weight video pipelines (Wan 2.1, Wan 2.2, LTX-Video, HunyuanVideo, CogVideoX), built offline.

As ``paratAA.pipelines.tiny`` does for the image families: the real pipeline, transformer, video
VAE, text encoder and scheduler classes with each pipeline's shipped scheduler configuration, but
a few thousand weights, a few latent frames of a few latent pixels. Weights come from a fixed seed
(the global RNG is left untouched); float32, CPU, eval mode.

Text encoders: Wan a tiny UMT5, LTX and CogVideoX a tiny T5, all with the tiny T5 tokenizer of
``paratAA.pipelines.tiny`` (call them with ``max_sequence_length=16``). HunyuanVideo's Llama and
CLIP encoders are not built (``text_encoder=None``): call it with prompt embeddings
(``tiny_video_embeddings("hunyuan", batch)``), which the pipeline accepts in place of prompts.
``tiny_video_embeddings`` makes random embeddings of the right shapes for every family.

Sizes a test calls with (``TINY_VIDEO_CALL[kind]``): 5 or 9 frames (2 latent frames), 16x16 or
32x32 pixels (2x2 to 4x4 latent pixels). Pass them: the video pipelines' default sizes are
``__call__`` defaults (Wan 480x832x81, LTX 512x704x161, HunyuanVideo 720x1280x129) that a
pipeline object cannot change; CogVideoX's come from its tiny transformer (32x32, 9 frames).
"""

from __future__ import annotations

from typing import Any

import torch

from .tiny import SEED, tiny_t5_tokenizer

__all__ = ["TINY_VIDEO_CALL", "WAN_SCHEDULER", "build_tiny_cogvideox_pipeline", "build_tiny_hunyuan_video_pipeline",
           "build_tiny_ltx_pipeline", "build_tiny_wan22_pipeline", "build_tiny_wan_pipeline", "tiny_video_embeddings"]

# Wan 2.1 T2V 1.3B's scheduler (UniPC on flow sigmas, shift 3); Wan 2.2 A14B's boundary between its experts.
WAN_SCHEDULER = dict(num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
WAN22_BOUNDARY_RATIO = 0.875
# LTX-Video 0.9's flow matching (dynamic shifting over the video's token count).
LTX_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                     base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1)
# HunyuanVideo's flow matching (static shift 7).
HUNYUAN_SCHEDULER = dict(num_train_timesteps=1000, shift=7.0)
# CogVideoX-2b's scheduler: DDIM on the SNR-shifted schedule, zero terminal SNR, v prediction, trailing spacing.
COGVIDEOX_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           clip_sample=False, set_alpha_to_one=True, steps_offset=0, prediction_type="v_prediction",
                           rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing")
TEXT_DIM = 32
TEXT_TOKENS = 16  # the tiny T5 tokenizer's length: pass max_sequence_length=16
# The call sizes the tiny pipelines are meant for (a few latent frames of 2x2 to 4x4 latent pixels).
TINY_VIDEO_CALL: dict[str, dict[str, int]] = {
    "wan": dict(height=32, width=32, num_frames=5, max_sequence_length=TEXT_TOKENS),
    "wan22": dict(height=32, width=32, num_frames=5, max_sequence_length=TEXT_TOKENS),
    "ltx": dict(height=32, width=32, num_frames=9, max_sequence_length=TEXT_TOKENS),
    "hunyuan": dict(height=16, width=16, num_frames=5),
    "cogvideox": dict(height=32, width=32, num_frames=5, max_sequence_length=TEXT_TOKENS),
}


def _t5_encoder(tokenizer: Any, hidden: int, umt5: bool = False) -> Any:
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_class(vocab_size=len(tokenizer.get_vocab()), d_model=hidden, d_kv=8, d_ff=2 * hidden,
                          num_layers=1, num_heads=2, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    return model_class(config).eval()


def _wan_transformer() -> Any:
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=16,
                                 out_channels=16, text_dim=TEXT_DIM, freq_dim=16, ffn_dim=32, num_layers=1,
                                 rope_max_seq_len=32).eval()


def _build_wan(seed: int, text_encoders: bool, two_experts: bool) -> Any:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline

    text: dict[str, Any] = {"text_encoder": None, "tokenizer": None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = _wan_transformer()
        transformer_2 = _wan_transformer() if two_experts else None
        vae = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True]).eval()
        if text_encoders:
            tokenizer = tiny_t5_tokenizer()
            text = {"text_encoder": _t5_encoder(tokenizer, TEXT_DIM, umt5=True), "tokenizer": tokenizer}
    experts = dict(transformer_2=transformer_2, boundary_ratio=WAN22_BOUNDARY_RATIO) if two_experts else {}
    pipe = WanPipeline(**text, transformer=transformer, vae=vae, scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER),
                       **experts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_wan_pipeline(seed: int = SEED, text_encoders: bool = True) -> Any:
    """Wan 2.1: a 1-layer Wan transformer (patch 1x2x2, text 32), a 4-channel-base Wan VAE (8x spatial,
    4x temporal, 16 latent channels), a tiny UMT5; Wan's UniPC scheduler configuration."""
    return _build_wan(seed, text_encoders, two_experts=False)


def build_tiny_wan22_pipeline(seed: int = SEED, text_encoders: bool = True) -> Any:
    """Wan 2.2 (A14B style): two experts, ``transformer`` for timesteps >= 875, ``transformer_2`` below."""
    return _build_wan(seed, text_encoders, two_experts=True)


def build_tiny_ltx_pipeline(seed: int = SEED, text_encoders: bool = True) -> Any:
    """LTX-Video: a 1-layer LTX transformer over packed latents (8 channels), an LTX VAE with 8x spatial
    and 8x temporal compression, a tiny T5; LTX's flow-matching scheduler configuration."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    text: dict[str, Any] = {"text_encoder": None, "tokenizer": None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                                 num_attention_heads=2, attention_head_dim=8,
                                                 cross_attention_dim=16, num_layers=1, caption_channels=TEXT_DIM).eval()
        vae = AutoencoderKLLTXVideo(
            in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
            decoder_spatio_temporal_scaling=(True, True, True, False),
            decoder_inject_noise=(False, False, False, False, False), upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1), timestep_conditioning=False, patch_size=1, patch_size_t=1,
            encoder_causal=True, decoder_causal=False,
        ).eval()
        vae.use_framewise_encoding = False
        vae.use_framewise_decoding = False
        if text_encoders:
            tokenizer = tiny_t5_tokenizer()
            text = {"text_encoder": _t5_encoder(tokenizer, TEXT_DIM), "tokenizer": tokenizer}
    pipe = LTXPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER), vae=vae, **text,
                       transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_hunyuan_video_pipeline(seed: int = SEED, text_encoders: bool = True) -> Any:
    """HunyuanVideo: a 1+1-layer transformer (patch 1, guidance embedding, text 16, pooled 8), a HunyuanVideo
    VAE (8x spatial, 4x temporal, 4 latent channels); no text encoders (``text_encoders`` is ignored):
    call it with ``tiny_video_embeddings("hunyuan", batch)``."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = HunyuanVideoTransformer3DModel(
            in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
            num_single_layers=1, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
            text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4),
        ).eval()
        vae = AutoencoderKLHunyuanVideo(
            in_channels=3, out_channels=3, latent_channels=4, down_block_types=("HunyuanVideoDownBlock3D",) * 4,
            up_block_types=("HunyuanVideoUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
            norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4,
            mid_block_add_attention=True,
        ).eval()
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=vae,
                                scheduler=FlowMatchEulerDiscreteScheduler(**HUNYUAN_SCHEDULER), text_encoder_2=None,
                                tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_cogvideox_pipeline(seed: int = SEED, text_encoders: bool = True) -> Any:
    """CogVideoX (5b style, rotary positions): a 1-layer transformer (patch 2, text 32 x 16 tokens), a
    CogVideoX VAE (8x spatial, 4x temporal, 4 latent channels), a tiny T5; CogVideoX-2b's
    ``CogVideoXDDIMScheduler`` configuration."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    text: dict[str, Any] = {"text_encoder": None, "tokenizer": None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, time_embed_dim=4,
            text_embed_dim=TEXT_DIM, num_layers=1, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
            temporal_compression_ratio=4, max_text_seq_length=TEXT_TOKENS, use_rotary_positional_embeddings=True,
        ).eval()
        vae = AutoencoderKLCogVideoX(
            in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
            up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
            layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
        ).eval()
        if text_encoders:
            tokenizer = tiny_t5_tokenizer()
            text = {"text_encoder": _t5_encoder(tokenizer, TEXT_DIM), "tokenizer": tokenizer}
    pipe = CogVideoXPipeline(**text, vae=vae, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler(**COGVIDEOX_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_video_embeddings(kind: str, batch: int, seed: int = 0, negative: bool = True) -> dict[str, torch.Tensor]:
    """Random prompt embeddings for a tiny video pipeline's call: ``pipe(**tiny_video_embeddings(kind, 2), ...)``.

    Args:
        kind: ``"wan"``, ``"wan22"``, ``"ltx"``, ``"hunyuan"`` or ``"cogvideox"``.
        batch: number of prompts.
        seed: seed of the embeddings.
        negative: also the negative embeddings (classifier-free guidance; HunyuanVideo's true CFG).

    Returns:
        The keyword arguments ``prompt_embeds`` (and ``negative_prompt_embeds``), with the attention
        masks (LTX, HunyuanVideo; a shorter last prompt) and pooled embeddings (HunyuanVideo) the
        pipeline requires alongside.
    """
    generator = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(shape, generator=generator)  # noqa: E731
    text_dim = 16 if kind == "hunyuan" else TEXT_DIM
    tokens = 6 if kind == "hunyuan" else TEXT_TOKENS  # CogVideoX: the transformer's max_text_seq_length
    prefixes = ["", "negative_"] if negative else [""]
    embeddings: dict[str, torch.Tensor] = {}
    for prefix in prefixes:
        embeddings[f"{prefix}prompt_embeds"] = draw(batch, tokens, text_dim)
        if kind in ("ltx", "hunyuan"):
            mask = torch.ones(batch, tokens, dtype=torch.long)
            mask[-1, tokens // 2:] = 0  # a shorter last prompt: the mask reaches the network per row
            embeddings[f"{prefix}prompt_attention_mask"] = mask
        if kind == "hunyuan":
            embeddings[f"{prefix}pooled_prompt_embeds"] = draw(batch, 8)
    return embeddings
