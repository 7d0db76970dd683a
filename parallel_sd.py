"""ParaTAA sampling of Stable Diffusion 1.5 (default ``stable-diffusion-v1-5/stable-diffusion-v1-5``) with DDIM.

    python parallel_sd.py --model_path tiny --num_samples 2 --timesteps 20 --prompt "a cat"   # CPU, tiny model
    accelerate launch --num_processes 8 parallel_sd.py --max_steps 15 --fp16                   # 8 GPUs

Every process runs the same solver; each iteration's network calls are split across processes.
Outputs go to a new folder under ``--output_path`` (see ``paratAA.runs``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch

from models import ModelLoadError, load_sd
from models.sd import DEFAULT_SD
from paratAA.cli import (OneLineErrorParser, ReferenceDefaults, add_common_args, require_prompt, run_cli,
                         resolved_settings, solver_options, start)
from paratAA.distributed import shard_eps_fn
from paratAA.noise import sample_noise
from paratAA.runs import create_run_dir, print_report, run_solve, write_config

DEFAULTS = ReferenceDefaults(timesteps=50, order=20, model_path=DEFAULT_SD, num_samples=10)


def build_parser() -> argparse.ArgumentParser:
    """The command line: the reference script's flags plus a negative prompt, device and checks."""
    parser = OneLineErrorParser(description="ParaTAA parallel sampling of Stable Diffusion.")
    add_common_args(parser, DEFAULTS)
    sd = parser.add_argument_group("Stable Diffusion")
    sd.add_argument("--prompt", default="black duck", help="text prompt of every sample (default: %(default)s)")
    sd.add_argument("--negative_prompt", default="",
                    help="the unconditional side of classifier-free guidance (default: empty)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse, load, solve, save."""
    args = build_parser().parse_args(argv)
    require_prompt("--prompt", args.prompt)
    context, adapter, schedule = start(
        args, lambda device: load_sd(args.model_path, device=device, fp16=args.fp16), ModelLoadError)
    prompts = [args.prompt] * args.num_samples
    negatives = [args.negative_prompt] * args.num_samples
    noise = sample_noise(args.seed, args.num_samples, args.timesteps, adapter.latent_shape, device=context.device)
    eps_fn = shard_eps_fn(adapter.eps_fn(prompts, negatives, args.cfg_scale), context.accelerator)
    options = solver_options(args)

    run_dir = None
    if context.is_main:
        run_dir = create_run_dir(args.output_path, f"SD-T{args.timesteps}-w{args.window_size}-o{args.order}"
                                                   f"-m{args.memory_size}-seed{args.seed}")
        write_config(run_dir, "parallel_sd.py", vars(args),
                     resolved_settings(adapter, context, schedule, options),
                     context.num_processes)

    def sequential_fn() -> torch.Tensor:
        return adapter.sequential_reference(noise, prompts, negatives, args.cfg_scale, args.timesteps, args.eta)

    _, summary = run_solve(
        eps_fn, schedule, noise, options, run_dir, adapter.decode,
        [{"seed": args.seed + k, "prompt": args.prompt, "negative_prompt": args.negative_prompt}
         for k in range(args.num_samples)],
        description="SD ParaTAA", sequential_fn=sequential_fn if args.check_sequential else None,
        extra={"world_size": context.num_processes})
    if summary is not None:
        print_report(summary, run_dir)


if __name__ == "__main__":
    sys.exit(run_cli(main))
