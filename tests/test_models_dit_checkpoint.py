"""Original DiT checkpoints: every weight converted, same network outputs, clear errors.

``OriginalDiT`` below is an independent re-implementation of the original DiT network (Peebles &
Xie 2023, facebookresearch/DiT ``models.py``) with the original parameter names, written from
the paper's description: patch embedding + fixed 2-D sin-cos positions, sinusoidal timestep MLP,
label table with a null row, adaLN-Zero blocks, adaLN final layer, unpatchify.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from paratAA.cli.models import load_dit
from paratAA.pipelines.dit_checkpoint import convert_dit_state_dict, is_original_dit_state_dict, load_dit_checkpoint
from paratAA.pipelines.locations import ModelLoadError
from paratAA.pipelines.runner import class_conditioning

pytestmark = pytest.mark.usefixtures("single_thread")


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2))
    angles = np.outer(positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def _sincos_2d(dim: int, grid: int) -> torch.Tensor:
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))
    # First half encodes the column (x) coordinate, second half the row: DiT/MAE's layout.
    table = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)
    return torch.from_numpy(table).float()[None]


def _modulate(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        n, length, dim = x.shape
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        h = _modulate(F.layer_norm(x, (dim,), eps=1e-6), shift1, scale1)
        q, k, v = self.attn.qkv(h).reshape(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, length, dim)
        x = x + gate1[:, None] * self.attn.proj(attended)
        h = _modulate(F.layer_norm(x, (dim,), eps=1e-6), shift2, scale2)
        return x + gate2[:, None] * self.mlp.fc2(F.gelu(self.mlp.fc1(h), approximate="tanh"))


class OriginalDiT(nn.Module):
    """The original DiT network and parameter names, with learned sigma (2x output channels)."""

    def __init__(self, input_size=8, patch=2, channels=4, dim=128, depth=2, heads=2, num_classes=10):
        super().__init__()
        self.patch, self.out_channels = patch, 2 * channels
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(channels, dim, patch, stride=patch)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.y_embedder = nn.Module()
        self.y_embedder.embedding_table = nn.Embedding(num_classes + 1, dim)
        self.pos_embed = nn.Parameter(_sincos_2d(dim, input_size // patch), requires_grad=False)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.final_layer = nn.Module()
        self.final_layer.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.final_layer.linear = nn.Linear(dim, patch * patch * self.out_channels)

    def forward(self, x, t, y):
        tokens = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self.pos_embed
        freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
        angles = t[:, None].float() * freqs[None]
        c = self.t_embedder.mlp(torch.cat([torch.cos(angles), torch.sin(angles)], dim=1))
        c = c + self.y_embedder.embedding_table(y)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_layer.adaLN_modulation(c).chunk(2, dim=1)
        tokens = self.final_layer.linear(_modulate(F.layer_norm(tokens, (tokens.shape[-1],), eps=1e-6), shift, scale))
        n, grid, p, ch = x.shape[0], x.shape[-1] // self.patch, self.patch, self.out_channels
        patches = tokens.reshape(n, grid, grid, p, p, ch)
        return torch.einsum("nhwpqc->nchpwq", patches).reshape(n, ch, grid * p, grid * p)


@pytest.fixture(scope="module")
def original():
    torch.manual_seed(0)
    return OriginalDiT().eval()


def _inputs(num_classes=10):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 999])
    y = torch.tensor([0, 3, 9, num_classes, 7])  # includes the null class
    return x, t, y


def test_conversion_maps_every_weight_and_reproduces_the_original_network(original):
    state = original.state_dict()
    assert is_original_dit_state_dict(state)
    model = convert_dit_state_dict(state)
    config = model.config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim) == (2, 2, 64)
    assert (config.sample_size, config.patch_size, config.in_channels, config.out_channels) == (8, 2, 4, 8)
    assert config.num_embeds_ada_norm == 10
    # Every diffusers parameter was filled from the checkpoint (none left on the meta device).
    assert all(p.device.type == "cpu" for p in model.parameters())
    x, t, y = _inputs()
    with torch.no_grad():
        expected = original(x, t, y)
        got = model(x, timestep=t, class_labels=y).sample
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_conversion_rejects_extra_missing_and_foreign_weights(original):
    state = original.state_dict()
    with pytest.raises(ValueError, match="unrecognised weights"):
        convert_dit_state_dict({**state, "blocks.0.extra.weight": torch.zeros(1)})
    missing = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.bias"}
    with pytest.raises(ValueError, match="missing"):
        convert_dit_state_dict(missing)
    with pytest.raises(ValueError, match="sin-cos"):
        convert_dit_state_dict({**state, "pos_embed": torch.zeros_like(state["pos_embed"])})
    with pytest.raises(ValueError, match="not an original DiT"):
        convert_dit_state_dict({"unet.weight": torch.zeros(1)})


def test_load_dit_from_original_checkpoint_file(original, tmp_path, tiny_dit_dir):
    path = tmp_path / "DiT-tiny.pt"
    torch.save({"ema": original.state_dict(), "model": {}}, path)  # a training checkpoint: "ema" wins
    dit = load_dit(str(path), tiny_dit_dir, "cpu", "float32")
    schedule = dit.make_schedule(4, 0.0)
    assert dit.latent_shape == (4, 8, 8) and dit.adapter.num_classes == 10
    labels = torch.tensor([3, 9])
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    steps, samples = torch.tensor([0, 3]), torch.tensor([0, 1])
    got = dit.eps_fn(class_conditioning(labels, 1.0))(x, steps, samples)
    with torch.no_grad():
        expected = original(x.float(), schedule.timesteps[steps], labels)[:, :4].double()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_checkpoint_errors_name_the_argument(tmp_path, original):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="model_path: could not read"):
        load_dit_checkpoint(str(bad))
    other = tmp_path / "other.pt"
    torch.save({"weight": torch.zeros(2)}, other)
    with pytest.raises(ModelLoadError, match="is not an original DiT checkpoint"):
        load_dit(str(other), None, "cpu", "float32")
    good = tmp_path / "good.pt"
    torch.save(original.state_dict(), good)
    # Default VAE is a hub id; offline it must fail fast with a message naming vae_path.
    with pytest.raises(ModelLoadError, match="vae_path: could not load .*sd-vae-ft-ema"):
        load_dit(str(good), None, "cpu", "float32")
