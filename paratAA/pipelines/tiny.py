"""Tiny random-weight DiT, SD, SDXL, SD3 and Flux pipelines of the real architectures, built offline in milliseconds.

For tests and examples without the hub (``--model_path tiny``, ``tiny-sdxl``, ...): the real
pipeline, network, VAE, text encoder and scheduler classes with each pipeline's shipped scheduler
configuration (SD: SD 1.5's ``PNDMScheduler``; DiT: DDIM over DiT's training schedule), but a few
thousand weights and 8x8 latents (16x16 images). The DiT has learned sigma and 1000 classes, like
DiT-XL/2. Text encoders: tiny CLIP (SD: one; SDXL: two; SD3: two with projections, no T5, which SD3
allows; Flux: CLIP and T5) with real tokenizers over a small vocabulary, built from files this
module writes; ``text_encoders=False`` leaves them out, and the pipelines are then called with
prompt embeddings (``tiny_embeddings`` makes random ones of the right shapes). Weights come from a
fixed seed (the global RNG is left untouched); float32, CPU, eval mode. ``save_tiny_pipeline``
writes one as an ordinary pipeline directory, so the code that loads hub checkpoints is exercised
on local directories.
"""

from __future__ import annotations

import json
import os
import string
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from .defaults import DIT_SCHEDULER_CONFIG, TINY_KINDS

__all__ = ["SD_SCHEDULER_CONFIG", "TINY_KINDS", "save_tiny_pipeline", "tiny_clip_tokenizer", "tiny_embeddings",
           "tiny_pipeline", "tiny_t5_tokenizer"]

SEED = 0
IMAGE_SIZE = 16  # pixels; the tiny VAE has two blocks, so latents are 8x8
# The scheduler configurations the real checkpoints ship (SDXL base 1.0, SD3 medium, FLUX.1-dev).
# SD 1.5 ships a PNDM scheduler config with these fields; DDIM built from it uses leading spacing.
SD_SCHEDULER_CONFIG = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                           beta_schedule="scaled_linear", set_alpha_to_one=False, skip_prk_steps=True,
                           steps_offset=1, prediction_type="epsilon")
SDXL_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                      timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear")
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
_TEXT_TOKENS = 6
_TOKENIZER_MAX_LENGTH = 16
_TOKENIZER_MERGES = ("t h", "th e</w>", "a n", "an d</w>", "o f</w>", "c a", "ca t</w>", "d o", "do g</w>")
_LETTERS = string.ascii_lowercase + string.digits + ".,!?'-"


def tiny_clip_tokenizer() -> Any:
    """A real CLIP BPE tokenizer over lowercase letters, digits and a few merges (max length 16).

    transformers 5.x ignores ``CLIPTokenizer(vocab_file=..., merges_file=...)``; loading the files
    with ``from_pretrained`` from a directory works.
    """
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {}
    for token in [*_LETTERS, *(s + "</w>" for s in _LETTERS), *(m.replace(" ", "") for m in _TOKENIZER_MERGES),
                  "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "vocab.json").write_text(json.dumps(vocab))
        Path(folder, "merges.txt").write_text("#version: 0.2\n" + "\n".join(_TOKENIZER_MERGES) + "\n")
        return CLIPTokenizer.from_pretrained(folder, model_max_length=_TOKENIZER_MAX_LENGTH)


def tiny_t5_tokenizer() -> Any:
    """A real T5 (Unigram) tokenizer over single letters and digits, with and without the word marker."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(c, -2.0) for c in _LETTERS] + [("\u2581" + c, -1.0) for c in _LETTERS] + [("\u2581", -3.0)]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=_TOKENIZER_MAX_LENGTH)


def _clip(tokenizer: Any, hidden: int, projection: int | None = None) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=hidden, intermediate_size=2 * hidden,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=_TOKENIZER_MAX_LENGTH,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, projection_dim=projection or hidden)
    return (CLIPTextModel(config) if projection is None else CLIPTextModelWithProjection(config)).eval()


def _t5(tokenizer: Any, hidden: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(vocab_size=len(tokenizer.get_vocab()), d_model=hidden, d_kv=8, d_ff=2 * hidden, num_layers=1,
                      num_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    return T5EncoderModel(config).eval()


def _vae(latent_channels: int = 4, **factors: float) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, sample_size=IMAGE_SIZE, **factors,
    ).eval()


def build_tiny_dit_pipeline(seed: int = SEED, text_encoders: bool = True) -> DiTPipeline:
    """DiT: 2 layers, 8x8x4 latents, patch 2, learned sigma, 1000 classes; a DDIM scheduler of DiT's
    training schedule (``text_encoders`` is ignored: DiT has none)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = DiTTransformer2DModel(
            num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
            sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
        ).eval()
        vae = _vae()
    pipe = DiTPipeline(transformer=transformer, vae=vae, scheduler=DDIMScheduler(**DIT_SCHEDULER_CONFIG))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd_pipeline(seed: int = SEED, text_encoders: bool = True) -> StableDiffusionPipeline:
    """SD 1.x: a 2-level UNet (cross-attention 16), a 2-layer CLIP text encoder, SD 1.5's scheduler
    configuration (a ``PNDMScheduler``, as SD 1.5 ships), no safety checker."""
    tokenizer, text_encoder = None, None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
        ).eval()
        vae = _vae()
        if text_encoders:
            tokenizer = tiny_clip_tokenizer()
            text_encoder = _clip(tokenizer, 16)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=PNDMScheduler(**SD_SCHEDULER_CONFIG), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sdxl_pipeline(seed: int = SEED, text_encoders: bool = True) -> StableDiffusionXLPipeline:
    """SDXL: a 2-level UNet with SDXL's text-time conditioning (pooled text 16 + 6 time ids x 8);
    text: CLIP (16) and CLIP with projection (16, pooled 16), hidden states concatenated (32)."""
    text = {"text_encoder": None, "text_encoder_2": None, "tokenizer": None, "tokenizer_2": None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=4, use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 16,
        ).eval()
        vae = _vae(scaling_factor=0.13025)
        if text_encoders:
            tokenizer = tiny_clip_tokenizer()
            text = {"text_encoder": _clip(tokenizer, 16), "text_encoder_2": _clip(tokenizer, 16, projection=16),
                    "tokenizer": tokenizer, "tokenizer_2": tokenizer}
    pipe = StableDiffusionXLPipeline(vae=vae, **text, unet=unet, scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd3_pipeline(seed: int = SEED, text_encoders: bool = True) -> StableDiffusion3Pipeline:
    """SD3: a 1-layer MMDiT (patch 1, joint attention over 16-dim text, pooled projection 16); text:
    two CLIP with projections (8 + 8, pooled 8 + 8), no T5 (SD3 then uses zeros in its place)."""
    text = {"text_encoder": None, "text_encoder_2": None, "tokenizer": None, "tokenizer_2": None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=1, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
        ).eval()
        vae = _vae(scaling_factor=1.5305, shift_factor=0.0609)
        if text_encoders:
            tokenizer = tiny_clip_tokenizer()
            text = {"text_encoder": _clip(tokenizer, 8, projection=8), "text_encoder_2": _clip(tokenizer, 8, projection=8),
                    "tokenizer": tokenizer, "tokenizer_2": tokenizer}
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
                                    vae=vae, **text, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_flux_pipeline(seed: int = SEED, text_encoders: bool = True) -> FluxPipeline:
    """Flux: a 1+1-layer Flux transformer with guidance embedding (FLUX.1-dev style), packed 2x2 latents;
    text: CLIP (pooled 32) and T5 (32)."""
    text = {"text_encoder": None, "text_encoder_2": None, "tokenizer": None, "tokenizer_2": None}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
            guidance_embeds=True,
        ).eval()
        vae = _vae(scaling_factor=0.3611, shift_factor=0.1159)
        if text_encoders:
            clip_tokenizer, t5_tokenizer = tiny_clip_tokenizer(), tiny_t5_tokenizer()
            text = {"text_encoder": _clip(clip_tokenizer, 32), "text_encoder_2": _t5(t5_tokenizer, 32),
                    "tokenizer": clip_tokenizer, "tokenizer_2": t5_tokenizer}
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), vae=vae, **text,
                        transformer=transformer)
    # FluxPipeline's default height and width are default_sample_size * vae_scale_factor (1024 pixels):
    # the tiny one's default is IMAGE_SIZE, so that pipe(prompt) is tiny as called.
    pipe.default_sample_size = IMAGE_SIZE // pipe.vae_scale_factor
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _builder_in(module: str, name: str) -> Any:
    """A builder of another module (``tiny_video``, ``tiny_image2``; they import this one), imported when called."""

    def build(seed: int = SEED, text_encoders: bool = True) -> Any:
        from importlib import import_module

        return getattr(import_module(module, __package__), name)(seed, text_encoders)

    return build


_BUILDERS = {"dit": build_tiny_dit_pipeline, "sd": build_tiny_sd_pipeline, "sdxl": build_tiny_sdxl_pipeline,
             "sd3": build_tiny_sd3_pipeline, "flux": build_tiny_flux_pipeline,
             "wan": _builder_in(".tiny_video", "build_tiny_wan_pipeline"),
             "wan22": _builder_in(".tiny_video", "build_tiny_wan22_pipeline"),
             "ltx": _builder_in(".tiny_video", "build_tiny_ltx_pipeline"),
             "hunyuan": _builder_in(".tiny_video", "build_tiny_hunyuan_video_pipeline"),
             "cogvideox": _builder_in(".tiny_video", "build_tiny_cogvideox_pipeline"),
             "qwenimage": _builder_in(".tiny_image2", "build_tiny_qwenimage_pipeline"),
             "sana": _builder_in(".tiny_image2", "build_tiny_sana_pipeline"),
             "pixart": _builder_in(".tiny_image2", "build_tiny_pixart_sigma_pipeline"),
             "chroma": _builder_in(".tiny_image2", "build_tiny_chroma_pipeline"),
             "flux-kontext": _builder_in(".tiny_image2", "build_tiny_flux_kontext_pipeline")}


def tiny_pipeline(kind: str, seed: int = SEED, text_encoders: bool = True) -> Any:
    """A new tiny ``"dit"``, ``"sd"``, ``"sdxl"``, ``"sd3"`` or ``"flux"`` pipeline (``--model_path tiny``,
    ``tiny-<kind>``), or of a video or newer image family (``TINY_KINDS``: ``"wan"``, ``"wan22"``,
    ``"ltx"``, ``"hunyuan"``, ``"cogvideox"``, ``"qwenimage"``, ``"sana"``, ``"pixart"``, ``"chroma"``,
    ``"flux-kontext"``; see ``paratAA.pipelines.tiny_video`` and ``tiny_image2`` for their text encoders
    and call sizes).

    Every tiny pipeline is tiny as called with its defaults (Flux: 16x16 pixels; its T5 pads prompts to
    the pipeline's ``max_sequence_length``, 512 tokens, which the tiny T5 runs in milliseconds).
    """
    if kind not in _BUILDERS:
        raise ValueError(f"kind must be one of {TINY_KINDS}, got {kind!r}")
    return _BUILDERS[kind](seed, text_encoders)


def save_tiny_pipeline(kind: str, path: str | os.PathLike) -> str:
    """Write the tiny pipeline ``kind`` as a diffusers pipeline directory (``save_pretrained``); returns the path."""
    tiny_pipeline(kind).save_pretrained(path)
    return str(path)


def tiny_embeddings(kind: str, batch: int, seed: int = 0, negative: bool = True) -> dict[str, torch.Tensor]:
    """Random prompt embeddings for a tiny pipeline's call: ``pipe(**tiny_embeddings(kind, 2), ...)``.

    Args:
        kind: ``"sdxl"``, ``"sd3"`` or ``"flux"``.
        batch: number of prompts.
        seed: seed of the embeddings.
        negative: also the ``negative_*`` embeddings (classifier-free guidance; Flux's true CFG).

    Returns:
        The keyword arguments ``prompt_embeds``, ``pooled_prompt_embeds`` (and ``negative_prompt_embeds``,
        ``negative_pooled_prompt_embeds``).
    """
    text_dim, pooled_dim = {"sdxl": (32, 16), "sd3": (16, 16), "flux": (32, 32)}[kind]
    generator = torch.Generator().manual_seed(seed)
    draw = lambda *shape: torch.randn(shape, generator=generator)  # noqa: E731
    embeddings = {"prompt_embeds": draw(batch, _TEXT_TOKENS, text_dim), "pooled_prompt_embeds": draw(batch, pooled_dim)}
    if negative:
        embeddings.update(negative_prompt_embeds=draw(batch, _TEXT_TOKENS, text_dim),
                          negative_pooled_prompt_embeds=draw(batch, pooled_dim))
    return embeddings
