"""diffusers' own ParaDiGMS sampler (``StableDiffusionParadigmsPipeline``) on a Stable Diffusion pipeline.

Used as the outside oracle for ``paratAA.baselines.paradigms.solve_paradigms`` and as a column of
``benchmarks/compare.py``. Three facts about diffusers' implementation shape this module:

- Its parallel schedulers (``DDIMParallelScheduler`` / ``DDPMParallelScheduler``) take the previous
  timestep as ``t - num_train_timesteps // T`` and ``batch_step_no_noise`` hard-codes a final alpha of
  1.0. They agree with ``DDIMScheduler`` / ``DDPMScheduler`` only for leading spacing with ``T``
  dividing ``num_train_timesteps`` and ``set_alpha_to_one=True``; ``scheduler_pair`` therefore builds
  both from one configuration with ``set_alpha_to_one=True`` (SD 1.5 ships ``False``).
- The pipeline drops the step noise of DDIM with ``eta > 0`` (it treats DDIM as an ODE), so the
  stochastic sampler is DDPM (``DDPMParallelScheduler``).
- It draws ``x_T`` and then one noise tensor per step from the generator, in the order
  ``paratAA.noise.sample_noise`` uses, so ``generator=manual_seed(seed)`` with batch size 1 sees the
  noise of ``sample_noise(seed, 1, T, latent_shape)``. Its ``callback`` argument fails once the window
  has moved past its own length (it indexes the window's timesteps with a global index), so
  iterations are counted with a forward pre-hook on the UNet: one UNet call per iteration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import (
    DDIMParallelScheduler,
    DDIMScheduler,
    DDPMParallelScheduler,
    DDPMScheduler,
    StableDiffusionParadigmsPipeline,
)

__all__ = ["DiffusersParadigmsRun", "SAMPLERS", "run_diffusers_paradigms", "scheduler_pair"]

SAMPLERS = ("ddim", "ddpm")


@dataclass
class DiffusersParadigmsRun:
    """One run of diffusers' ParaDiGMS pipeline.

    Attributes:
        latents: float64 ``(1, *latent)`` final latents (before decoding).
        iterations: parallel iterations (UNet calls).
        evaluations: latent rows evaluated (guidance's doubled rows counted once, as in ``paratAA.solve``).
        seconds: wall-clock of the pipeline call.
    """

    latents: torch.Tensor
    iterations: int
    evaluations: int
    seconds: float


def scheduler_pair(config: Any, sampler: str, num_steps: int) -> tuple[Any, Any]:
    """A diffusers parallel scheduler and the ordinary scheduler that computes the same sampler.

    Args:
        config: a diffusers scheduler configuration (e.g. ``pipe.scheduler.config``).
        sampler: ``"ddim"`` (eta 0) or ``"ddpm"``.
        num_steps: T; ``set_timesteps(T)`` is called on the ordinary scheduler.

    Returns:
        ``(parallel, ordinary)``: feed ``parallel`` to the pipeline and
        ``paratAA.Schedule.from_scheduler(ordinary)`` to this package's solvers.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    train_steps = dict(config)["num_train_timesteps"]
    if train_steps % num_steps:
        raise ValueError(f"num_steps: diffusers' parallel schedulers assume T divides {train_steps}, got {num_steps}")
    overrides = dict(clip_sample=False, timestep_spacing="leading")
    if sampler == "ddim":
        overrides["set_alpha_to_one"] = True
        parallel = DDIMParallelScheduler.from_config(config, **overrides)
        ordinary = DDIMScheduler.from_config(config, **overrides)
    else:
        parallel = DDPMParallelScheduler.from_config(config, **overrides)
        ordinary = DDPMScheduler.from_config(config, **overrides)
    ordinary.set_timesteps(num_steps)
    return parallel, ordinary


@torch.no_grad()
def run_diffusers_paradigms(sd_pipe: Any, prompt: str, negative_prompt: str, cfg_scale: float, sampler: str,
                            num_steps: int, window_size: int, tolerance: float, seed: int) -> DiffusersParadigmsRun:
    """Sample one image's latents with ``StableDiffusionParadigmsPipeline`` built from ``sd_pipe``'s components.

    Args:
        sd_pipe: a float32 ``StableDiffusionPipeline`` (e.g. ``paratAA.cli.models.load_text_to_image(...).pipe``).
        prompt, negative_prompt: the texts (negative ``""`` is the pipeline's default).
        cfg_scale: guidance scale.
        sampler: ``"ddim"`` or ``"ddpm"`` (see ``scheduler_pair``).
        num_steps: T.
        window_size: the pipeline's ``parallel``.
        tolerance: the pipeline's ``tolerance``.
        seed: ``torch.Generator("cpu").manual_seed(seed)`` draws all the noise.

    Returns:
        The latents, iteration count and wall-clock.
    """
    parallel, _ = scheduler_pair(sd_pipe.scheduler.config, sampler, num_steps)
    wanted = StableDiffusionParadigmsPipeline._get_signature_keys(StableDiffusionParadigmsPipeline)[0]
    components = {k: v for k, v in sd_pipe.components.items() if k in wanted}
    pipe = StableDiffusionParadigmsPipeline(**{**components, "scheduler": parallel, "safety_checker": None,
                                               "feature_extractor": None}, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    calls, rows = 0, 0
    rows_per_latent = 2 if cfg_scale > 1 else 1  # the pipeline's guidance rule

    def count(_: Any, inputs: tuple) -> None:
        nonlocal calls, rows
        calls += 1
        rows += inputs[0].shape[0] // rows_per_latent

    hook = pipe.unet.register_forward_pre_hook(count)
    try:
        start = time.perf_counter()
        latents = pipe(prompt=[prompt], negative_prompt=[negative_prompt], num_inference_steps=num_steps,
                       parallel=window_size, tolerance=tolerance, guidance_scale=cfg_scale,
                       generator=torch.Generator("cpu").manual_seed(seed), output_type="latent").images
        seconds = time.perf_counter() - start
    finally:
        hook.remove()
    return DiffusersParadigmsRun(latents=latents.to(torch.float64).cpu(), iterations=calls, evaluations=rows,
                                  seconds=seconds)
