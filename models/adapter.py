"""What the DiT and Stable Diffusion adapters share: schedules, chunked calls, decoding, the step-loop oracle.

An adapter turns a diffusers latent-diffusion pipeline into the pieces the solver needs: a float64
``paratAA.Schedule`` (DDIM built from the pipeline's own scheduler configuration), an
``eps_fn(x, steps, samples)`` with per-sample conditioning (in the subclasses), VAE decoding, and a
sequential reference sampler. The network runs in its own dtype; its inputs are cast from float64
and its outputs back to float64 at one boundary, in micro-batches of at most ``max_batch_size``
rows (one solver iteration can ask for hundreds).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler

from paratAA import EpsFn, Schedule

__all__ = ["LatentDiffusionAdapter", "place"]


def place(module: Any, device: torch.device | str, dtype: torch.dtype) -> Any:
    """Move a model or pipeline to ``device``, and cast it only if its dtype differs (diffusers warns on every cast)."""
    module = module.to(device)
    return module if module.dtype == dtype else module.to(dtype)


class LatentDiffusionAdapter:
    """Base class of ``DiTAdapter`` and ``SDAdapter``.

    Attributes:
        model_id: what was loaded (``"tiny"``, a hub id or a path).
        latent_shape: shape of one latent, e.g. ``(4, 32, 32)``.
        device: where the networks run.
        dtype: the networks' dtype (float16 or float32).
        max_batch_size: most rows per network forward pass (classifier-free guidance's doubled rows
            included); settable.
        schedule: the schedule of the latest ``make_schedule`` call, used by ``eps_fn`` when it is
            not given one (None before the first call).
        vae: the pipeline's ``AutoencoderKL``; None for a pixel-space model (the sample is the image).
    """

    def __init__(self, model_id: str, vae: AutoencoderKL | None, scheduler_config: Any, ddim_overrides: dict,
                 latent_shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, max_batch_size: int):
        if not (isinstance(max_batch_size, int) and max_batch_size >= 2):
            raise ValueError(f"max_batch_size must be an int >= 2, got {max_batch_size!r}")
        self.model_id = model_id
        self.vae = vae
        self.latent_shape = tuple(latent_shape)
        self.device = torch.device(device)
        self.dtype = dtype
        self.max_batch_size = max_batch_size
        self.schedule: Schedule | None = None
        self._scheduler_config = dict(scheduler_config)
        self._ddim_overrides = dict(ddim_overrides)

    # ----------------------------------------------------------------------------------------- schedule
    def make_scheduler(self, num_steps: int) -> DDIMScheduler:
        """A DDIM scheduler from the pipeline's scheduler config (with this model's overrides), set to ``num_steps``.

        Args:
            num_steps: T, number of sampling steps (1 .. num_train_timesteps).

        Returns:
            The scheduler, ``set_timesteps(num_steps)`` done.
        """
        scheduler = DDIMScheduler.from_config(self._scheduler_config, **self._ddim_overrides)
        train_steps = scheduler.config.num_train_timesteps
        if not (isinstance(num_steps, int) and 1 <= num_steps <= train_steps):
            raise ValueError(f"num_steps must be an int in [1, {train_steps}], got {num_steps!r}")
        scheduler.set_timesteps(num_steps)
        return scheduler

    def make_schedule(self, num_steps: int, eta: float) -> Schedule:
        """The float64 DDIM(eta) schedule of ``num_steps`` steps; also remembered as ``self.schedule``.

        Args:
            num_steps: T, number of sampling steps.
            eta: DDIM stochasticity (0: deterministic, 1: DDPM-like).

        Returns:
            ``paratAA.Schedule.from_scheduler`` of ``make_scheduler(num_steps)``.
        """
        self.schedule = self._new_schedule(num_steps, eta)
        return self.schedule

    def _new_schedule(self, num_steps: int, eta: float) -> Schedule:
        return Schedule.from_scheduler(self.make_scheduler(num_steps), eta=eta)

    def _bound_schedule(self, schedule: Schedule | None) -> Schedule:
        schedule = schedule if schedule is not None else self.schedule
        if schedule is None:
            raise ValueError("schedule: call make_schedule(num_steps, eta) first or pass schedule=")
        return schedule

    def sample_noise(self, seed: int, num_samples: int, num_steps: int, device: Any = None) -> torch.Tensor:
        """``paratAA.noise.sample_noise`` of this model's latents: sample k from seed ``seed + k``.

        Returns:
            float64 ``(num_samples, num_steps + 1, *latent_shape)``; ``[:, num_steps]`` is ``x[T]``.
        """
        from paratAA.noise import sample_noise

        return sample_noise(seed, num_samples, num_steps, self.latent_shape, device=device)

    # ---------------------------------------------------------------------------------- network calls
    def _network_timesteps(self, schedule: Schedule, steps: torch.Tensor) -> torch.Tensor:
        """Training timesteps of step indices ``steps`` on the model's device, with a range check."""
        steps = torch.as_tensor(steps, dtype=torch.long)
        if steps.numel() and (int(steps.min()) < 0 or int(steps.max()) >= schedule.num_steps):
            raise ValueError(f"steps: indices must lie in [0, {schedule.num_steps}), the schedule's steps")
        return schedule.timesteps.to(steps.device)[steps].to(self.device)

    def _row_chunks(self, n: int, rows_per_input: int) -> Iterator[slice]:
        """Slices of ``n`` input rows whose network batch (``rows_per_input`` each) fits ``max_batch_size``."""
        size = max(1, self.max_batch_size // rows_per_input)
        for start in range(0, n, size):
            yield slice(start, min(start + size, n))

    def _check_noise(self, noise: torch.Tensor, num_steps: int) -> None:
        expected = (num_steps + 1, *self.latent_shape)
        if noise.dim() != len(expected) + 1 or tuple(noise.shape[1:]) != expected:
            raise ValueError(f"noise: expected shape (B, {', '.join(map(str, expected))}), got {tuple(noise.shape)}")

    # ------------------------------------------------------------------------------------- reference
    def _scheduler_loop(self, eps_fn: EpsFn, noise: torch.Tensor, num_steps: int, eta: float) -> torch.Tensor:
        """Sequential DDIM(eta) with diffusers' own ``DDIMScheduler.step`` and ``variance_noise = z_i``.

        Float64 state; ``eps_fn`` is the adapter's network (with guidance). Step ``i`` (network at
        ``timesteps[i]`` increasing) is scheduler iteration ``T - 1 - i`` and uses ``noise[:, i]``.
        """
        scheduler = self.make_scheduler(num_steps)
        x = noise[:, num_steps].to(self.device, torch.float64)
        samples = torch.arange(x.shape[0], device=self.device)
        for k, t in enumerate(scheduler.timesteps):
            i = num_steps - 1 - k
            out = eps_fn(x, torch.full_like(samples, i), samples).to(torch.float64)
            z = noise[:, i].to(self.device, torch.float64) if eta > 0 else None
            x = scheduler.step(out, t, x, eta=eta, variance_noise=z).prev_sample
        return x

    # ---------------------------------------------------------------------------------------- decode
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[PIL.Image.Image]:
        """Latents to images: ``vae.decode(latents / scaling_factor)``, or the latents themselves
        for a pixel-space model (no VAE); either way mapped from [-1, 1] to 8-bit pixels.

        Args:
            latents: ``(n, *latent_shape)``, any float dtype and device.

        Returns:
            ``n`` PIL images: RGB, or grey ("L") for one-channel pixel-space models.
        """
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents: expected shape (n, {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(latents.shape)}")
        images: list[PIL.Image.Image] = []
        for rows in self._row_chunks(latents.shape[0], 1):
            if self.vae is None:
                decoded = latents[rows].float()
            else:
                z = latents[rows].to(self.device, self.vae.dtype) / self.vae.config.scaling_factor
                decoded = self.vae.decode(z).sample.float()
            pixels = (decoded / 2 + 0.5).clamp(0, 1)
            array = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
            images.extend(PIL.Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a) for a in array)
        return images
