"""Stable Diffusion (text-to-image latent diffusion) as a ParaTAA ``eps_fn``.

``load_sd`` accepts a hub id (default ``stable-diffusion-v1-5/stable-diffusion-v1-5``, the id
diffusers' own documentation uses since ``runwayml/stable-diffusion-v1-5`` was withdrawn), a
local diffusers pipeline directory, or ``"tiny"``. Sampling uses DDIM built from the pipeline's
scheduler configuration (SD 1.5: leading spacing, steps offset 1, final alpha
``alphas_cumprod[0]``), without clipping.
"""

from __future__ import annotations

import math
import os

import torch
from diffusers import StableDiffusionPipeline

from paratAA import EpsFn, Schedule

from .adapter import LatentDiffusionAdapter, place
from .defaults import DEFAULT_SD
from .loading import ModelLoadError, load_pretrained, resolve_location
from .tiny import tiny_pipeline

__all__ = ["DEFAULT_SD", "SDAdapter", "load_sd"]


class SDAdapter(LatentDiffusionAdapter):
    """A text-conditional Stable Diffusion pipeline (see ``LatentDiffusionAdapter`` for the attributes).

    Attributes:
        pipe: the ``StableDiffusionPipeline`` (text encoder, tokenizer, UNet, VAE).
    """

    def __init__(self, model_id: str, pipe: StableDiffusionPipeline, device: torch.device, dtype: torch.dtype,
                 max_batch_size: int):
        unet = pipe.unet.config
        super().__init__(model_id, pipe.vae, pipe.scheduler.config, dict(clip_sample=False),
                         (unet.in_channels, unet.sample_size, unet.sample_size), device, dtype, max_batch_size)
        self.pipe = pipe

    @staticmethod
    def _texts(prompts, negative_prompts) -> tuple[list[str], list[str]]:
        if isinstance(prompts, str) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts: expected a non-empty list of strings, one per sample")
        if negative_prompts is None or (not isinstance(negative_prompts, str) and len(negative_prompts) == 0):
            negative_prompts = [""] * len(prompts)
        if isinstance(negative_prompts, str) or len(negative_prompts) != len(prompts) \
                or not all(isinstance(n, str) for n in negative_prompts):
            raise ValueError(f"negative_prompts: expected a list of {len(prompts)} strings (one per prompt) or None")
        return list(prompts), list(negative_prompts)

    @staticmethod
    def _scale(cfg_scale: float) -> float:
        if not (isinstance(cfg_scale, (int, float)) and math.isfinite(cfg_scale)):
            raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
        return float(cfg_scale)

    def eps_fn(self, prompts: list[str], negative_prompts: list[str] | None, cfg_scale: float, *,
               schedule: Schedule | None = None) -> EpsFn:
        """``eps_fn(x, steps, samples)`` for the solver: guided UNet noise prediction, rows conditioned per sample.

        Text embeddings come from the pipeline's ``encode_prompt``, once per distinct (prompt,
        negative prompt) pair. Row ``r`` uses ``x[r]``, timestep ``schedule.timesteps[steps[r]]`` and
        the texts of sample ``samples[r]``. With ``cfg_scale > 1``: ``eps = eps_u + s (eps_c - eps_u)``
        (``eps_u`` from the negative prompt, ``""`` by default), both passes in one doubled batch;
        with ``cfg_scale <= 1`` only the conditional pass runs (as in ``StableDiffusionPipeline``).

        Args:
            prompts: one prompt per sample.
            negative_prompts: one negative prompt per sample, or None / ``[]`` for ``""``.
            cfg_scale: guidance scale s.
            schedule: maps step indices to timesteps; default: the latest ``make_schedule`` result.

        Returns:
            The ``eps_fn``: float64 output of shape ``x.shape`` on ``x.device``.
        """
        prompts, negative_prompts = self._texts(prompts, negative_prompts)
        scale = self._scale(cfg_scale)
        schedule = self._bound_schedule(schedule)
        guided = scale > 1
        pairs = list(dict.fromkeys(zip(prompts, negative_prompts)))
        pair_of_sample = torch.tensor([pairs.index(p) for p in zip(prompts, negative_prompts)], device=self.device)
        with torch.no_grad():
            prompt_embeds, negative_prompt_embeds = self.pipe.encode_prompt(
                [p for p, _ in pairs], self.device, 1, guided,
                negative_prompt=[n for _, n in pairs] if guided else None)

        @torch.no_grad()
        def eps(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
            t = self._network_timesteps(schedule, steps)
            pair = pair_of_sample[torch.as_tensor(samples, device=self.device)]
            out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
            for rows in self._row_chunks(x.shape[0], 2 if guided else 1):
                xr = x[rows].to(self.device, self.dtype)
                if not guided:
                    cond = self.pipe.unet(xr, t[rows], encoder_hidden_states=prompt_embeds[pair[rows]]).sample
                    out[rows] = cond.to(x.device, torch.float64)
                    continue
                text = torch.cat([prompt_embeds[pair[rows]], negative_prompt_embeds[pair[rows]]])
                both = self.pipe.unet(torch.cat([xr, xr]), torch.cat([t[rows], t[rows]]),
                                      encoder_hidden_states=text).sample.to(torch.float64)
                cond, uncond = both.chunk(2)
                out[rows] = (uncond + scale * (cond - uncond)).to(x.device)
            return out

        return eps

    def sequential_reference(self, noise: torch.Tensor, prompts: list[str], negative_prompts: list[str] | None,
                             cfg_scale: float, num_steps: int, eta: float) -> torch.Tensor:
        """Final latents of diffusers' own sequential DDIM sampler from the same noise (an outside oracle).

        Which sampler runs:

        - ``StableDiffusionPipeline`` (given this adapter's DDIM scheduler and ``latents=x[T]``,
          ``output_type="latent"``) when ``eta == 0`` and the model is float32;
        - otherwise (``eta > 0``: the pipeline would draw the step noise itself; or float16: the
          pipeline would round ``x[T]`` to float16) a loop over diffusers' ``DDIMScheduler.step(eps, t,
          x, eta=eta, variance_noise=z_i)`` with this adapter's ``eps_fn``, in float64.

        Args:
            noise: float64 ``(B, T+1, *latent_shape)`` from ``paratAA.noise.sample_noise``.
            prompts, negative_prompts, cfg_scale: as for ``eps_fn``.
            num_steps: T.
            eta: DDIM eta.

        Returns:
            float64 ``(B, *latent_shape)`` final latents (before decoding), on the model's device.
        """
        self._check_noise(noise, num_steps)
        prompts, negative_prompts = self._texts(prompts, negative_prompts)
        scale = self._scale(cfg_scale)
        if len(prompts) != noise.shape[0]:
            raise ValueError(f"prompts: expected {noise.shape[0]} prompts (one per noise sample), got {len(prompts)}")
        if eta == 0 and self.dtype == torch.float32:
            components = {**self.pipe.components, "scheduler": self.make_scheduler(num_steps)}
            pipe = StableDiffusionPipeline(**components, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            latents = pipe(prompt=prompts, negative_prompt=negative_prompts, guidance_scale=scale,
                           num_inference_steps=num_steps, eta=0.0, output_type="latent",
                           latents=noise[:, num_steps].to(self.device, torch.float32)).images
            return latents.to(torch.float64)
        eps = self.eps_fn(prompts, negative_prompts, scale, schedule=self._new_schedule(num_steps, eta))
        return self._scheduler_loop(eps, noise, num_steps, eta)


def load_sd(model_path: str = DEFAULT_SD, device: torch.device | str = "cpu", fp16: bool = False, *,
            max_batch_size: int = 64) -> SDAdapter:
    """Load a Stable Diffusion pipeline as an ``SDAdapter``.

    The safety checker is not loaded (images are decoded by ``SDAdapter.decode``, which never
    calls it).

    Args:
        model_path: ``"tiny"`` (tiny random pipeline built offline), a hub id, or a local diffusers
            pipeline directory (``model_index.json``).
        device: where the networks run.
        fp16: run the networks in float16.
        max_batch_size: most rows per network forward pass.

    Returns:
        The adapter.

    Raises:
        ModelLoadError: a path that does not exist, a directory that is not a pipeline, or a hub id
            that is not available (e.g. offline and not cached).
    """
    dtype = torch.float16 if fp16 else torch.float32
    if model_path == "tiny":
        pipe = tiny_pipeline("sd")
    else:
        kind, location = resolve_location(model_path, "model_path")
        if kind == "local" and not os.path.isfile(os.path.join(location, "model_index.json")):
            raise ModelLoadError(f"model_path: '{location}' is not a diffusers pipeline directory (no model_index.json)")
        pipe = load_pretrained(StableDiffusionPipeline, location, kind, "model_path", "Stable Diffusion pipeline",
                               torch_dtype=dtype, safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
    pipe = place(pipe, device, dtype)
    return SDAdapter(model_path, pipe, torch.device(device), dtype, max_batch_size)
