"""The random numbers of a solve, drawn once, up front, per sample.

Sample ``k`` of a run with seed ``s`` uses its own CPU generator seeded ``s + k``, so its noise does
not depend on the batch size, the device or the number of processes. It draws ``x[T]`` first, as
``torch.randn((1, *latent_shape), dtype=float32)``: a diffusers pipeline given batch size 1 and
``generator=torch.Generator("cpu").manual_seed(s + k)`` in float32 starts from the same latent.
Then it draws ``z[T-1], ..., z[0]`` (the noise of the stochastic steps) in that order.
"""

from __future__ import annotations

import torch

__all__ = ["sample_noise"]


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
    """
    noise = torch.empty((num_samples, num_steps + 1, *latent_shape), dtype=torch.float64)
    for k in range(num_samples):
        generator = torch.Generator("cpu").manual_seed(seed + k)
        for j in range(num_steps, -1, -1):
            noise[k, j] = torch.randn((1, *latent_shape), generator=generator, dtype=torch.float32)[0]
    return noise.to(device)
