"""The random numbers of a solve, drawn once, up front, per sample.

Sample ``k`` of a run with seed ``s`` uses its own CPU generator seeded ``s + k``, so its noise does
not depend on the batch size, the device or the number of processes. It draws ``x[T]`` first, as
``torch.randn((1, *latent_shape), dtype=float32)``: a diffusers pipeline given batch size 1 and
``generator=torch.Generator("cpu").manual_seed(s + k)`` in float32 starts from the same latent.
Then it draws ``z[T-1], ..., z[0]`` (the noise of the stochastic steps) in that order.
"""

from __future__ import annotations

import torch

from paratAA.validation import is_int, require_int

__all__ = ["MAX_SEED", "largest_seed", "sample_noise"]

MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes 64-bit seeds


def largest_seed(num_samples: int) -> int:
    """The largest ``seed`` for which every sample's seed ``seed + k`` (k < num_samples) fits a generator."""
    return MAX_SEED - (num_samples - 1)


def sample_noise(seed: int, num_samples: int, num_steps: int, latent_shape: tuple[int, ...],
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Initial latents and per-step noise of ``num_samples`` samples.

    Args:
        seed: seed of sample 0; sample ``k`` uses ``seed + k``.
        num_samples: B.
        num_steps: T.
        latent_shape: shape of one latent, e.g. ``(4, 32, 32)``.
        device: where the result goes.

    Returns:
        float64 ``(B, T+1, *latent_shape)``: ``[:, T]`` is ``x[T]``, ``[:, i]`` is ``z[i]``.

    Raises:
        ValueError: an argument out of range (named), e.g. a seed whose ``seed + k`` exceeds 64 bits.
    """
    require_int("num_samples", num_samples)
    require_int("num_steps", num_steps)
    require_int("seed", seed, 0, largest_seed(num_samples))
    if not isinstance(latent_shape, (tuple, list)) or not all(is_int(n) and n >= 1 for n in latent_shape):
        raise ValueError(f"latent_shape must be a tuple of integers >= 1, got {latent_shape!r}")
    seed, num_samples, num_steps = int(seed), int(num_samples), int(num_steps)
    noise = torch.empty((num_samples, num_steps + 1, *map(int, latent_shape)), dtype=torch.float64)
    for k in range(num_samples):
        generator = torch.Generator("cpu").manual_seed(seed + k)
        for j in range(num_steps, -1, -1):
            noise[k, j] = torch.randn((1, *latent_shape), generator=generator, dtype=torch.float32)[0]
    return noise.to(device)
