"""ParaTAA sampling of Stable Diffusion 1.5 (default ``stable-diffusion-v1-5/stable-diffusion-v1-5``) with DDIM,
or of any text-to-image pipeline ``paratAA.cli.models`` detects (SD 1.x/2.x, SDXL, SD3, Flux).

    python parallel_sd.py --model_path tiny --num_samples 2 --timesteps 20 --prompt "a cat"   # CPU, tiny model
    python parallel_sd.py --model_path tiny-sd3 --timesteps 20 --prompt "a cat"              # tiny SD3 (flow matching)
    accelerate launch --num_processes 8 parallel_sd.py --max_steps 15 --dtype float16         # 8 GPUs

Every process runs the same solver; each iteration's network calls are split across processes.
Outputs go to a new folder under ``--output_path`` (see ``paratAA.cli.runs``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Sequence

# Light imports only: --help and flag errors come before torch, diffusers and the models load (in sample()).
from paratAA.cli.flags import OneLineErrorParser, ReferenceDefaults, add_common_args, require_prompt, validate_common
from paratAA.cli.models import MODEL_HELP, check_text_to_image_flags, script_pipeline_class
from paratAA.cli.process import flag_checks, run_cli, user_errors
from paratAA.errors import ModelLoadError
from paratAA.pipelines.defaults import DEFAULT_SD

if TYPE_CHECKING:
    import torch

DEFAULTS = ReferenceDefaults(timesteps=50, order=20, model_path=DEFAULT_SD, num_samples=10,
                             model_help=MODEL_HELP)


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
    """Parse and check every flag, then sample."""
    with flag_checks():
        args = build_parser().parse_args(argv)
        device = validate_common(args, DEFAULTS)
        require_prompt("--prompt", args.prompt)
        with user_errors(ModelLoadError):
            family = script_pipeline_class(args.model_path, "sd")  # None for a hub id: checked once it loads
        check_text_to_image_flags(family, eta=args.eta, negative_prompt=args.negative_prompt,
                                  sampler=args.sampler)
    sample(args, device)


def sample(args: argparse.Namespace, device: torch.device) -> None:
    """Load, solve, save (``args`` validated)."""
    from paratAA.cli.models import RUN_PREFIXES, load_text_to_image
    from paratAA.cli.runs import RunFolder, print_report, run_name, run_solve, write_config
    from paratAA.cli.session import resolved_settings, start
    from paratAA.distributed import shard_eps_fn
    from paratAA.pipelines.runner import text_conditioning

    # 1. Join the processes, load the pipeline, build the sampler's schedule and the solver's options.
    context, runner, schedule, options = start(
        args, device, lambda dev: load_text_to_image(args.model_path, dev, args.dtype, eta=args.eta,
                                                     negative_prompt=args.negative_prompt, sampler=args.sampler),
        ModelLoadError)
    # 2. What to sample: the prompts' conditioning, per-sample noise (identical on every process), the network.
    conditioning = text_conditioning([args.prompt] * args.num_samples, [args.negative_prompt] * args.num_samples,
                                     args.cfg_scale)
    noise = runner.sample_noise(args.seed, args.num_samples, args.timesteps, device=context.device)
    eps_fn = shard_eps_fn(runner.eps_fn(conditioning), context.accelerator)  # rows split across processes

    def sequential_fn() -> torch.Tensor:  # --check_sequential: the pipeline's own sampler from the same noise
        return runner.sequential_reference(noise, conditioning, args.eta)

    # 3. Solve on every process; the main one records into a new run folder and reports.
    name = run_name(RUN_PREFIXES[runner.pipeline_class], args.sampler, args.timesteps, options, args.seed)
    with RunFolder(args.output_path if context.is_main else None, name,
                   half_precision=args.dtype != "float32") as run:
        if run.path is not None:
            write_config(run.path, "parallel_sd.py", vars(args), resolved_settings(runner, context, schedule, options),
                         context.num_processes)
        _, summary = run_solve(
            eps_fn, schedule, noise, options, run, runner.decode,
            [{"seed": args.seed + k, "prompt": args.prompt, "negative_prompt": args.negative_prompt}
             for k in range(args.num_samples)],
            description="SD ParaTAA", sequential_fn=sequential_fn if args.check_sequential else None,
            extra={"world_size": context.num_processes})
        if summary is not None:
            print_report(summary, run.path)


if __name__ == "__main__":
    sys.exit(run_cli(main))
