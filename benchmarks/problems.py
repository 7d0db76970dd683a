"""The one registry of benchmark problems: a network, its latent shape and its schedulers, by name.

``load_problem(name, args)`` builds one: ``gmm`` (the analytic Gaussian mixture, latent 4x32x32, whose
exact score makes the network cost nothing), ``digits`` (the trained pixel-space DiT of
``models/digits``), ``patches`` (the trained unconditional 32x32 RGB pixel DiT of
``models/patches``, whose samplers keep improving up to 50+ steps; sampled without guidance),
``tiny-dit`` / ``tiny-sd`` / ``tiny-sdxl`` / ``tiny-sd3`` (the tiny random-weight pipelines), ``dit`` /
``sd`` (real models by ``--dit_path`` / ``--sd_path``). ``args`` carries
``device``, ``seed``, ``samples`` (B), ``cfg_scale``, ``prompt``, the network's dtype
(``network_dtype``) and, optionally, ``labels`` (the DiT problems' class per sample). A ``Problem``
makes its ``eps_fn`` per schedule (``paratAA.EpsFn``: conditioning sample k of the batch) and its
diffusers scheduler per (sampler, T): ``ddim``, ``ddpm``, ``dpm``
(DPM-Solver++ 2M), ``unipc``; on ``gmm`` also ``flow`` (SD3's flow-matching Euler on the rectified-flow
mixture), ``unipc-flow`` (Wan's UniPC) and ``unipc-sd`` (UniPC over SD 1.5's betas).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable

import torch

PROBLEMS = ("gmm", "digits", "patches", "tiny-dit", "tiny-sd", "tiny-sdxl", "tiny-sd3", "dit", "sd")
# Problems that sample with their pipeline's own scheduler only (sampler name -> the pipeline's scheduler class).
OWN_SAMPLER_PROBLEMS = {"tiny-sdxl": "euler", "tiny-sd3": "flow"}


@dataclass
class Problem:
    """What every method needs: a network per schedule, the latent shape, how to build a scheduler.

    Attributes:
        name: problem name (``gmm``, ``tiny-sd``, ...).
        latent_shape: shape of one latent.
        make_eps_fn: ``schedule -> eps_fn``.
        make_scheduler: ``(sampler, T) -> diffusers scheduler`` (``set_timesteps`` done).
        sd_pipe: the float32 ``StableDiffusionPipeline`` for the diffusers ParaDiGMS column, or None.
        prompt, negative_prompt, cfg_scale: SD conditioning (sample k uses ``prompt``) or None.
    """

    name: str
    latent_shape: tuple[int, ...]
    make_eps_fn: Callable[[Any], Callable]
    make_scheduler: Callable[[str, int], Any]
    sd_pipe: Any = None
    prompt: str = ""
    negative_prompt: str = ""
    cfg_scale: float = 1.0


def ordinary_scheduler(config: Any, sampler: str, num_steps: int) -> Any:
    """DDIM (``"ddim"``), DDPM (``"ddpm"``), DPM-Solver++ 2M (``"dpm"``) or UniPC (``"unipc"``, diffusers'
    defaults: bh2, order 2, corrector on) over ``config``, set to ``num_steps``."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if sampler == "unipc":
        scheduler = UniPCMultistepScheduler.from_config(config)
    elif sampler == "dpm":
        scheduler = DPMSolverMultistepScheduler.from_config(config)
    else:
        scheduler = (DDIMScheduler if sampler == "ddim" else DDPMScheduler).from_config(config, clip_sample=False)
    scheduler.set_timesteps(num_steps)
    return scheduler


def flow_matching_scheduler(num_steps: int) -> Any:
    """SD3's flow-matching Euler scheduler (static shift 3.0), ``set_timesteps(num_steps)`` done."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(num_steps)
    return scheduler


# Wan 2.1's UniPC (480p): flow sigmas with shift 3, flow prediction, order 2, bh2, corrector on.
WAN_UNIPC = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000,
                 solver_order=2)
# SD 1.5's scheduler betas and spacing (its PNDM configuration), for UniPC on the analytic mixture.
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1,
                timestep_spacing="leading")


def unipc_scheduler(num_steps: int, flow: bool) -> Any:
    """UniPC in Wan's flow setting (``flow``) or over SD 1.5's betas, ``set_timesteps(num_steps)`` done."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(**(WAN_UNIPC if flow else SD_BETAS))
    scheduler.set_timesteps(num_steps)
    return scheduler


def _gmm_scheduler(config: Any, sampler: str, num_steps: int) -> Any:
    if sampler == "flow":
        return flow_matching_scheduler(num_steps)
    if sampler in ("unipc-flow", "unipc-sd"):
        return unipc_scheduler(num_steps, flow=sampler == "unipc-flow")
    return ordinary_scheduler(config, sampler, num_steps)


def network_dtype(args: argparse.Namespace) -> str:
    """The dtype the problem's network runs in: ``args.dtype`` if set, else float16 with ``args.fp16``, else float32."""
    return getattr(args, "dtype", None) or ("float16" if getattr(args, "fp16", False) else "float32")


def _own_scheduler(runner: Any, name: str, sampler: str, num_steps: int) -> Any:
    """The pipeline's own scheduler set to ``num_steps`` (by the pipeline's call, as it samples)."""
    if sampler != OWN_SAMPLER_PROBLEMS[name]:
        raise SystemExit(f"{name} samples with its own scheduler ({OWN_SAMPLER_PROBLEMS[name]}), not {sampler!r}")
    runner.make_schedule(num_steps)
    return runner.pipe.scheduler


def load_problem(name: str, args: argparse.Namespace) -> Problem:
    """Build a problem by name (``--dit_path`` / ``--sd_path`` for the real models; the network in
    ``network_dtype(args)``). ``tiny-sdxl`` (Euler) and ``tiny-sd3`` (flow-matching Euler) sample with their
    pipeline's own scheduler only (``OWN_SAMPLER_PROBLEMS``)."""
    from benchmarks.diffusers_paradigms import scheduler_pair

    device = torch.device(args.device)
    if name == "gmm":
        from diffusers import DDIMScheduler

        from paratAA.analytic import gaussian_mixture_problem

        gmm = gaussian_mixture_problem((4, 32, 32), num_components=8, seed=args.seed)
        config = DDIMScheduler().config  # linear betas 1e-4..0.02, leading spacing, final alpha 1 (DiT's schedule)
        # sampler "flow": the same mixture under rectified flow, its exact velocity (SD3's sampler).
        # "unipc-flow": Wan's UniPC on the same rectified flow; "unipc-sd": UniPC over SD 1.5's betas.
        return Problem(name, (4, 32, 32), gmm.eps_fn, lambda s, t: _gmm_scheduler(config, s, t))
    if name in ("tiny-dit", "dit", "digits", "patches"):
        from paratAA.cli.models import load_dit
        from paratAA.pipelines.runner import class_conditioning, dit_guidance_scale

        if name == "dit" and not args.dit_path:
            raise SystemExit("--problems dit needs --dit_path (a hub id or a local DiT checkpoint)")
        dit = load_dit({"tiny-dit": "tiny", "digits": "digits", "patches": "patches"}.get(name, args.dit_path), None,
                       device, network_dtype(args))
        dit.make_schedule(10)
        # args.labels if given; else digits: classes 0, 3, 6, 9, 2, ...; ImageNet: 207 (golden retriever), 307, ...;
        # patches: its one class, 0 (sampled unguided: dit_guidance_scale)
        classes = getattr(args, "labels", None) or [
            0 if name == "patches" else (3 * k) % 10 if name == "digits" else (207 + 100 * k) % 1000
            for k in range(args.samples)]
        labels = class_conditioning(classes, dit_guidance_scale(args.cfg_scale, dit.adapter.num_classes))
        config = dit.pipe.scheduler.config  # DDIM with DiT's respacing
        return Problem(name, dit.latent_shape, lambda schedule: dit.eps_fn(labels, schedule),
                       lambda s, t: ordinary_scheduler(config, s, t))
    if name in ("tiny-sd", "sd"):
        from paratAA.cli.models import load_text_to_image
        from paratAA.pipelines.runner import text_conditioning

        if name == "sd" and not args.sd_path:
            raise SystemExit("--problems sd needs --sd_path (a hub id or a local pipeline directory)")
        sd = load_text_to_image("tiny" if name == "tiny-sd" else args.sd_path, device, network_dtype(args))
        sd.make_schedule(10)
        prompts = text_conditioning([args.prompt] * args.samples, None, args.cfg_scale)
        return Problem(name, sd.latent_shape, lambda schedule: sd.eps_fn(prompts, schedule),
                       lambda s, t: (ordinary_scheduler(sd.pipe.scheduler.config, s, t) if s in ("dpm", "unipc")
                                     else scheduler_pair(sd.pipe.scheduler.config, s, t)[1]),
                       sd_pipe=None if network_dtype(args) != "float32" else sd.pipe, prompt=args.prompt,
                       cfg_scale=args.cfg_scale)
    if name in OWN_SAMPLER_PROBLEMS:
        from paratAA.cli.models import load_text_to_image
        from paratAA.pipelines.runner import text_conditioning

        runner = load_text_to_image(name, device, network_dtype(args))
        runner.make_schedule(10)
        prompts = text_conditioning([args.prompt] * args.samples, None, args.cfg_scale)
        return Problem(name, runner.latent_shape, lambda schedule: runner.eps_fn(prompts, schedule),
                       lambda s, t: _own_scheduler(runner, name, s, t), prompt=args.prompt, cfg_scale=args.cfg_scale)
    raise SystemExit(f"--problems: unknown problem {name!r}; choose from {', '.join(PROBLEMS)}")
