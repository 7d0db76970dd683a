"""DiT (class-conditional ImageNet latent diffusion, Peebles & Xie 2023) as a ParaTAA ``eps_fn``.

``load_dit`` accepts a hub id (default ``facebook/DiT-XL-2-256``), a local diffusers pipeline
directory, a local transformer-only directory, an original DiT ``.pt`` checkpoint (converted by
``models.dit_checkpoint``), ``"tiny"`` or ``"digits"`` (the small trained pixel-space model shipped in
``models/digits``). A pipeline directory whose ``model_index.json`` lists ``"vae": [null, null]``
is a pixel-space model: no VAE, the sample is the image. Sampling uses DDIM with DiT's own respacing: diffusers'
``linspace`` timesteps and a final alpha of 1 (ALGORITHM.md section 6), no clipping.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

from paratAA import EpsFn, Schedule

from .adapter import LatentDiffusionAdapter, place
from .dit_checkpoint import load_dit_checkpoint
from .loading import ModelLoadError, load_pretrained, resolve_location
from .tiny import DIT_SCHEDULER_CONFIG, tiny_pipeline

__all__ = ["DEFAULT_DIT", "DEFAULT_DIT_VAE", "DIGITS_MODEL", "GUIDANCE_RULES", "DiTAdapter", "load_dit"]

DEFAULT_DIT = "facebook/DiT-XL-2-256"
# The VAE the DiT authors sample with (their sample.py default); used when the model brings none.
DEFAULT_DIT_VAE = "stabilityai/sd-vae-ft-ema"
GUIDANCE_RULES = ("all", "original")
# --model_path digits: the trained pixel-space DiT in this folder (training/train_digits.py).
DIGITS_MODEL = "digits"
DIGITS_DIR = Path(__file__).resolve().parent / "digits"
# DiT's respaced DDIM: linspace(0, 999, T).round() timesteps, alpha_bar = 1 after the last step.
_DIT_DDIM = dict(timestep_spacing="linspace", set_alpha_to_one=True, steps_offset=0, clip_sample=False)
# The original DiT guides only this many latent channels (its forward_with_cfg).
_ORIGINAL_GUIDED_CHANNELS = 3


class _FinalSampleRecorder(DDIMScheduler):
    """A ``DDIMScheduler`` that keeps its latest ``prev_sample``: ``DiTPipeline`` returns only decoded images."""

    def step(self, *args, **kwargs):
        output = super().step(*args, **kwargs)
        self.last_sample = output.prev_sample if hasattr(output, "prev_sample") else output[0]
        return output


class DiTAdapter(LatentDiffusionAdapter):
    """A class-conditional DiT with its VAE and schedule (see ``LatentDiffusionAdapter`` for the attributes).

    Attributes:
        transformer: the ``DiTTransformer2DModel``.
        num_classes: number of classes; label ``num_classes`` is the null (unconditional) class.
    """

    def __init__(self, model_id: str, transformer: DiTTransformer2DModel, vae: AutoencoderKL | None, scheduler_config,
                 device: torch.device, dtype: torch.dtype, max_batch_size: int):
        config = transformer.config
        super().__init__(model_id, vae, scheduler_config, _DIT_DDIM,
                         (config.in_channels, config.sample_size, config.sample_size), device, dtype, max_batch_size)
        self.transformer = transformer
        self.num_classes = int(config.num_embeds_ada_norm)

    def _labels(self, class_labels) -> torch.Tensor:
        labels = torch.as_tensor(class_labels)
        if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"class_labels: expected a 1-D integer tensor or list, got shape {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"class_labels: labels must lie in [0, {self.num_classes})")
        return labels.to(self.device, torch.long)

    @staticmethod
    def _check_guidance(cfg_scale: float, guidance: str) -> float:
        if guidance not in GUIDANCE_RULES:
            raise ValueError(f"guidance must be one of {GUIDANCE_RULES}, got {guidance!r}")
        if not (isinstance(cfg_scale, (int, float)) and math.isfinite(cfg_scale)):
            raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale!r}")
        return float(cfg_scale)

    def _eps(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The network's epsilon channels (learned-sigma channels dropped), float64."""
        out = self.transformer(x.to(self.dtype), timestep=t, class_labels=y).sample
        return out[:, : self.latent_shape[0]].to(torch.float64)

    def eps_fn(self, class_labels, cfg_scale: float, guidance: str = "all", *,
               schedule: Schedule | None = None) -> EpsFn:
        """``eps_fn(x, steps, samples)`` for the solver: guided DiT noise prediction, rows conditioned per sample.

        Row ``r`` is evaluated at ``x[r]``, timestep ``schedule.timesteps[steps[r]]`` and class
        ``class_labels[samples[r]]``. With ``cfg_scale > 1`` each row also runs with the null class
        (one doubled batch) and ``eps = eps_u + s (eps_c - eps_u)``; with ``cfg_scale <= 1`` only the
        conditional pass runs. Guidance rules:

        - ``"all"``: every latent channel is guided (diffusers' ``DiTPipeline``).
        - ``"original"``: the original DiT ``forward_with_cfg`` rule: only the first 3 latent
          channels are guided; the 4th takes the conditional prediction ``eps_c`` (the original
          code keeps the conditional half of its batch, whose unguided channels are ``eps_c``).

        Args:
            class_labels: ``(B,)`` integer ImageNet classes in ``[0, num_classes)``, one per sample.
            cfg_scale: guidance scale s.
            guidance: ``"all"`` or ``"original"``.
            schedule: maps step indices to timesteps; default: the latest ``make_schedule`` result.

        Returns:
            The ``eps_fn``: float64 output of shape ``x.shape`` on ``x.device``.
        """
        labels = self._labels(class_labels)
        scale = self._check_guidance(cfg_scale, guidance)
        schedule = self._bound_schedule(schedule)
        guided = scale > 1
        null = torch.tensor([self.num_classes], device=self.device)

        @torch.no_grad()
        def eps(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
            t = self._network_timesteps(schedule, steps)
            y = labels[torch.as_tensor(samples, device=self.device)]
            out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
            for rows in self._row_chunks(x.shape[0], 2 if guided else 1):
                xr = x[rows].to(self.device)
                if not guided:
                    out[rows] = self._eps(xr, t[rows], y[rows]).to(x.device)
                    continue
                both = self._eps(torch.cat([xr, xr]), torch.cat([t[rows], t[rows]]),
                                 torch.cat([y[rows], null.expand(xr.shape[0])]))
                cond, uncond = both.chunk(2)
                mixed = uncond + scale * (cond - uncond)
                if guidance == "original":
                    mixed[:, _ORIGINAL_GUIDED_CHANNELS:] = cond[:, _ORIGINAL_GUIDED_CHANNELS:]
                out[rows] = mixed.to(x.device)
            return out

        return eps

    def sequential_reference(self, noise: torch.Tensor, class_labels, cfg_scale: float, num_steps: int,
                             eta: float, guidance: str = "all", *, seed: int | None = None) -> torch.Tensor:
        """Final latents of diffusers' own sequential DDIM sampler from the same noise (an outside oracle).

        Which sampler runs:

        - ``DiTPipeline`` (given this adapter's DDIM scheduler) when ``eta == 0``, ``guidance ==
          "all"`` (the pipeline's rule), the model is float32, has a VAE (the pipeline always
          decodes) and ``seed`` is given: the pipeline
          draws its own initial latents from per-sample generators seeded ``seed + k``, exactly as
          ``paratAA.noise.sample_noise`` draws ``x[T]`` (checked against ``noise``; a mismatch is a
          ``ValueError``).
        - otherwise a loop over diffusers' ``DDIMScheduler.step(eps, t, x, eta=eta,
          variance_noise=z_i)`` with this adapter's ``eps_fn``, in float64.

        Args:
            noise: float64 ``(B, T+1, *latent_shape)`` from ``paratAA.noise.sample_noise``.
            class_labels, cfg_scale, guidance: as for ``eps_fn``.
            num_steps: T.
            eta: DDIM eta.
            seed: the seed ``noise`` was drawn with; enables the pipeline path.

        Returns:
            float64 ``(B, *latent_shape)`` final latents (before decoding), on the model's device.
        """
        self._check_noise(noise, num_steps)
        scale = self._check_guidance(cfg_scale, guidance)
        labels = self._labels(class_labels)
        if eta == 0 and guidance == "all" and self.dtype == torch.float32 and seed is not None and self.vae is not None:
            return self._pipeline_reference(noise, labels, scale, num_steps, seed)
        eps = self.eps_fn(labels, scale, guidance, schedule=self._new_schedule(num_steps, eta))
        return self._scheduler_loop(eps, noise, num_steps, eta)

    def _pipeline_reference(self, noise: torch.Tensor, labels: torch.Tensor, scale: float, num_steps: int,
                            seed: int) -> torch.Tensor:
        for k in range(noise.shape[0]):
            start = torch.randn((1, *self.latent_shape), generator=torch.Generator("cpu").manual_seed(seed + k))
            if not torch.equal(start[0].to(torch.float64), noise[k, num_steps].cpu()):
                raise ValueError(f"seed: noise[{k}, T] was not drawn with seed {seed} + {k} (paratAA.noise.sample_noise)")
        generators = [torch.Generator("cpu").manual_seed(seed + k) for k in range(noise.shape[0])]
        scheduler = _FinalSampleRecorder.from_config(self._scheduler_config, **self._ddim_overrides)
        pipe = DiTPipeline(transformer=self.transformer, vae=self.vae, scheduler=scheduler)
        pipe.set_progress_bar_config(disable=True)
        pipe(class_labels=labels.tolist(), guidance_scale=scale, generator=generators,
             num_inference_steps=num_steps, output_type="pt")
        # With guidance the pipeline carries [cond, uncond] copies of the batch: the first half is the samples.
        return scheduler.last_sample[: noise.shape[0]].to(torch.float64)


def _load_vae(vae_path: str, dtype: torch.dtype) -> AutoencoderKL:
    kind, location = resolve_location(vae_path, "vae_path")
    subfolder = None
    if kind == "local" and not os.path.isfile(os.path.join(location, "config.json")) \
            and os.path.isfile(os.path.join(location, "vae", "config.json")):
        subfolder = "vae"  # a pipeline directory: use its VAE
    return load_pretrained(AutoencoderKL, location, kind, "vae_path", "VAE (AutoencoderKL)",
                           subfolder=subfolder, torch_dtype=dtype)


def _declares_no_vae(pipeline_dir: str) -> bool:
    """Whether a local pipeline directory's ``model_index.json`` lists no VAE (a pixel-space model)."""
    try:
        index = json.loads(Path(pipeline_dir, "model_index.json").read_text())
    except (OSError, ValueError):
        return False  # unreadable: let from_pretrained report it
    return index.get("vae", [None, None]) == [None, None]


def load_dit(model_path: str = DEFAULT_DIT, vae_path: str | None = None, device: torch.device | str = "cpu",
             fp16: bool = False, *, max_batch_size: int = 64) -> DiTAdapter:
    """Load a DiT model as a ``DiTAdapter``.

    Args:
        model_path: ``"tiny"`` (tiny random model built offline), ``"digits"`` (the trained
            pixel-space model in ``models/digits``), a hub id of a diffusers DiT pipeline, a local
            pipeline directory (``model_index.json``; ``"vae": [null, null]`` there means pixel
            space), a local transformer-only directory (``config.json``), or an original DiT
            checkpoint file (``.pt``/``.pth``).
        vae_path: hub id or local directory of an ``AutoencoderKL`` (or of a pipeline with a ``vae``
            folder). Default: the pipeline's own VAE (none for a pixel-space pipeline);
            ``stabilityai/sd-vae-ft-ema`` for a transformer-only directory or an original checkpoint.
        device: where the networks run.
        fp16: run the networks in float16.
        max_batch_size: most rows per network forward pass.

    Returns:
        The adapter.

    Raises:
        ModelLoadError: a path that does not exist, an unrecognised directory, a hub id that is not
            available (e.g. offline and not cached), or a malformed checkpoint.
    """
    dtype = torch.float16 if fp16 else torch.float32
    vae = None
    pixel_space = False
    scheduler_config = dict(DIT_SCHEDULER_CONFIG)
    if model_path == "tiny":
        pipe = tiny_pipeline("dit")
        transformer, vae, scheduler_config = pipe.transformer, pipe.vae, pipe.scheduler.config
    else:
        kind, location = resolve_location(str(DIGITS_DIR) if model_path == DIGITS_MODEL else model_path,
                                          "model_path")
        if kind == "local" and os.path.isfile(location):
            transformer = load_dit_checkpoint(location)
        elif kind == "local" and not os.path.isfile(os.path.join(location, "model_index.json")):
            if not os.path.isfile(os.path.join(location, "config.json")):
                raise ModelLoadError(f"model_path: '{location}' is neither a diffusers pipeline directory "
                                     "(model_index.json) nor a transformer directory (config.json)")
            transformer = load_pretrained(DiTTransformer2DModel, location, kind, "model_path",
                                          "DiT transformer", torch_dtype=dtype)
        else:
            pixel_space = kind == "local" and _declares_no_vae(location)
            extra = {"vae": None} if pixel_space else {}
            pipe = load_pretrained(DiTPipeline, location, kind, "model_path", "DiT pipeline", torch_dtype=dtype,
                                   **extra)
            transformer, vae, scheduler_config = pipe.transformer, pipe.vae, pipe.scheduler.config
    if vae_path is not None or (vae is None and not pixel_space):
        vae = _load_vae(vae_path or DEFAULT_DIT_VAE, dtype)
    transformer = place(transformer, device, dtype).eval()
    vae = None if vae is None else place(vae, device, dtype).eval()
    return DiTAdapter(model_path, transformer, vae, scheduler_config, torch.device(device), dtype, max_batch_size)
