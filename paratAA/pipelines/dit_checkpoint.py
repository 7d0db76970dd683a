"""Load an original DiT checkpoint (facebookresearch/DiT ``.pt``) as a diffusers ``DiTTransformer2DModel``.

The original state dict and diffusers' model hold the same weights under other names:

=======================================  ==========================================================
original (``models.py`` of DiT)          diffusers ``DiTTransformer2DModel``
=======================================  ==========================================================
``x_embedder.proj``                      ``pos_embed.proj``
``t_embedder.mlp.0`` / ``.mlp.2``        ``transformer_blocks.N.norm1.emb.timestep_embedder.linear_1/2``
``y_embedder.embedding_table``           ``transformer_blocks.N.norm1.emb.class_embedder.embedding_table``
``blocks.N.attn.qkv`` (q, k, v stacked)  ``transformer_blocks.N.attn1.to_q/to_k/to_v``
``blocks.N.attn.proj``                   ``transformer_blocks.N.attn1.to_out.0``
``blocks.N.mlp.fc1`` / ``.fc2``          ``transformer_blocks.N.ff.net.0.proj`` / ``.ff.net.2``
``blocks.N.adaLN_modulation.1``          ``transformer_blocks.N.norm1.linear``
``final_layer.adaLN_modulation.1``       ``proj_out_1``
``final_layer.linear``                   ``proj_out_2``
``pos_embed`` (fixed 2-D sin-cos)        recomputed by diffusers from the config (checked equal)
=======================================  ==========================================================

diffusers keeps one copy of the timestep/class embedders per block, so the shared original
embedders are copied into every block. Two numerical details of diffusers' DiT differ from the
original network, and the converted model is set to the original's: LayerNorm eps 1e-6 (diffusers'
default is 1e-5) and the sinusoidal timestep frequencies ``exp(-ln(10000) k / 128)`` (diffusers'
``CombinedTimestepLabelEmbeddings`` divides by 127, ``downscale_freq_shift=1``). With both, the
converted model computes the original ``DiT.forward``. The second setting is module state, not
config: ``save_pretrained`` of a converted model would not keep it.

Architecture sizes are read from the tensor shapes; the head count is not stored in the weights
and comes from DiT's published configurations (S: 6, B: 12, L/XL: 16), else 64 channels per head.
"""

from __future__ import annotations

import math
import re

import torch
from accelerate import init_empty_weights
from diffusers import DiTTransformer2DModel
from safetensors import SafetensorError

from .locations import LOAD_ERRORS, ModelLoadError, first_line

__all__ = ["is_original_dit_state_dict", "convert_dit_state_dict", "load_dit_checkpoint"]

# hidden size -> attention heads of DiT-S / B / L / XL (models.py of the original repository).
_PUBLISHED_HEADS = {384: 6, 768: 12, 1024: 16, 1152: 16}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.")


def is_original_dit_state_dict(state_dict: dict) -> bool:
    """True if ``state_dict`` has the original DiT key layout (``x_embedder``, ``blocks.N``, ``final_layer``)."""
    return "x_embedder.proj.weight" in state_dict and "final_layer.linear.weight" in state_dict


def _infer_config(sd: dict[str, torch.Tensor], num_heads: int | None) -> dict:
    hidden, in_channels, patch, _ = sd["x_embedder.proj.weight"].shape
    depth = 1 + max((int(m.group(1)) for k in sd if (m := _BLOCK_KEY.match(k))), default=-1)
    if depth == 0:
        raise ValueError("no 'blocks.N.*' weights")
    out_channels = sd["final_layer.linear.weight"].shape[0] // (patch * patch)
    # The label table has one extra row: the null class used for classifier-free guidance.
    num_classes = sd["y_embedder.embedding_table.weight"].shape[0] - 1
    grid = math.isqrt(sd["pos_embed"].shape[1]) if "pos_embed" in sd else None
    if grid is None or grid * grid != sd["pos_embed"].shape[1]:
        raise ValueError("missing or non-square 'pos_embed' (needed for the input size)")
    if sd["blocks.0.mlp.fc1.weight"].shape[0] != 4 * hidden:
        raise ValueError("MLP ratio is not 4, which diffusers' DiT block assumes")
    heads = num_heads or _PUBLISHED_HEADS.get(hidden) or (hidden // 64 if hidden % 64 == 0 else None)
    if heads is None or hidden % heads:
        raise ValueError(f"cannot infer the attention head count for hidden size {hidden}; pass num_heads")
    return dict(num_attention_heads=heads, attention_head_dim=hidden // heads, in_channels=in_channels,
                out_channels=out_channels, num_layers=depth, sample_size=grid * patch, patch_size=patch,
                num_embeds_ada_norm=num_classes, norm_eps=1e-6)


def _rename(sd: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    """Map every original weight to its diffusers name; raise if any original weight is left unused."""
    left = dict(sd)
    out: dict[str, torch.Tensor] = {}

    def move(src: str, dst: str) -> None:  # every original layer has a bias
        out[dst + ".weight"], out[dst + ".bias"] = left.pop(src + ".weight"), left.pop(src + ".bias")

    move("x_embedder.proj", "pos_embed.proj")
    move("final_layer.adaLN_modulation.1", "proj_out_1")
    move("final_layer.linear", "proj_out_2")
    time_1, time_2 = left.pop("t_embedder.mlp.0.weight"), left.pop("t_embedder.mlp.2.weight")
    time_1_bias, time_2_bias = left.pop("t_embedder.mlp.0.bias"), left.pop("t_embedder.mlp.2.bias")
    labels = left.pop("y_embedder.embedding_table.weight")
    for n in range(depth):
        src, dst = f"blocks.{n}", f"transformer_blocks.{n}"
        emb = f"{dst}.norm1.emb"
        out[f"{emb}.timestep_embedder.linear_1.weight"], out[f"{emb}.timestep_embedder.linear_1.bias"] = time_1, time_1_bias
        out[f"{emb}.timestep_embedder.linear_2.weight"], out[f"{emb}.timestep_embedder.linear_2.bias"] = time_2, time_2_bias
        out[f"{emb}.class_embedder.embedding_table.weight"] = labels
        for kind in ("weight", "bias"):
            for name, part in zip(("to_q", "to_k", "to_v"), left.pop(f"{src}.attn.qkv.{kind}").chunk(3, dim=0)):
                out[f"{dst}.attn1.{name}.{kind}"] = part
        move(f"{src}.attn.proj", f"{dst}.attn1.to_out.0")
        move(f"{src}.mlp.fc1", f"{dst}.ff.net.0.proj")
        move(f"{src}.mlp.fc2", f"{dst}.ff.net.2")
        move(f"{src}.adaLN_modulation.1", f"{dst}.norm1.linear")
    left.pop("pos_embed")  # compared with diffusers' own sin-cos table by the caller
    if left:
        raise ValueError(f"unrecognised weights: {sorted(left)[:5]}")
    return out


def convert_dit_state_dict(state_dict: dict[str, torch.Tensor], num_heads: int | None = None) -> DiTTransformer2DModel:
    """Build a diffusers ``DiTTransformer2DModel`` that computes the original DiT network of ``state_dict``.

    Args:
        state_dict: an original DiT state dict (keys as in facebookresearch/DiT ``models.py``).
        num_heads: attention heads; inferred from the hidden size when None (see the module docstring).

    Returns:
        The model, float32 (or the checkpoint's dtype), on the CPU, in eval mode.

    Raises:
        ValueError: the state dict is not a complete original DiT state dict (missing, extra or
            mis-shaped weights, or a positional embedding that is not DiT's sin-cos table).
    """
    if not is_original_dit_state_dict(state_dict):
        raise ValueError("not an original DiT state dict (no 'x_embedder.proj.weight' / 'final_layer.linear.weight')")
    config = _infer_config(state_dict, num_heads)
    try:
        renamed = _rename(state_dict, config["num_layers"])
    except KeyError as exc:
        raise ValueError(f"incomplete original DiT state dict: missing {exc}") from exc
    # Empty (meta) parameters, then adopt the checkpoint's tensors: no random init of a 675M model.
    with init_empty_weights():
        model = DiTTransformer2DModel(**config)
    try:
        model.load_state_dict(renamed, strict=True, assign=True)
    except RuntimeError as exc:  # shapes that do not fit the inferred architecture
        raise ValueError(f"weights do not fit a DiT of {config}: {str(exc).splitlines()[-1].strip()}") from exc
    for block in model.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0  # original DiT's frequencies (module docstring)
    table = model.pos_embed.pos_embed.to(torch.float32)
    if not torch.allclose(table, state_dict["pos_embed"].to(table), atol=1e-5):
        raise ValueError("the checkpoint's 'pos_embed' is not DiT's 2-D sin-cos table")
    return model.eval()


def load_dit_checkpoint(path: str, argument: str = "model_path") -> DiTTransformer2DModel:
    """Load an original DiT ``.pt``/``.pth`` checkpoint file as a diffusers ``DiTTransformer2DModel``.

    Accepts a bare state dict (the released DiT-XL-2-256x256.pt) or a training checkpoint dict with
    an ``"ema"`` (preferred, as DiT's ``sample.py`` does) or ``"model"`` entry. Loaded with
    ``torch.load(weights_only=True)``: no arbitrary code runs.

    Args:
        path: the checkpoint file.
        argument: the argument's name for error messages.

    Returns:
        The converted model (see ``convert_dit_state_dict``).

    Raises:
        ModelLoadError: unreadable file or not a complete original DiT checkpoint.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (*LOAD_ERRORS, SafetensorError) as exc:  # torch.load also reads .safetensors files
        raise ModelLoadError(f"{argument}: could not read '{path}' as a PyTorch checkpoint "
                             f"(torch.load, weights_only=True): {first_line(exc)}") from exc
    if isinstance(checkpoint, dict):
        checkpoint = checkpoint.get("ema", checkpoint.get("model", checkpoint))
    if not isinstance(checkpoint, dict):
        raise ModelLoadError(f"{argument}: '{path}' does not hold a state dict")
    try:
        return convert_dit_state_dict(checkpoint)
    except ValueError as exc:
        raise ModelLoadError(f"{argument}: '{path}' is not an original DiT checkpoint: {exc}") from exc
