"""ParaTAA sampling of a class-conditional DiT (default ``facebook/DiT-XL-2-256``) with DDIM.

    python parallel_dit.py --model_path tiny --num_samples 2 --timesteps 20      # CPU, tiny random model
    accelerate launch --num_processes 8 parallel_dit.py --max_steps 10 --dtype float16     # 8 GPUs

Every process runs the same solver; each iteration's network calls are split across processes.
Outputs go to a new folder under ``--output_path`` (see ``paratAA.cli.runs``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Sequence

# Light imports only: --help and flag errors come before torch, diffusers and the models load (in sample()).
from paratAA.cli.flags import OneLineErrorParser, ReferenceDefaults, add_common_args, validate_common
from paratAA.cli.models import check_dit_family, script_pipeline_class
from paratAA.cli.process import flag_checks, run_cli, user_errors
from paratAA.errors import ModelLoadError, UsageError
from paratAA.pipelines.defaults import DEFAULT_DIT, GUIDANCE_RULES
from paratAA.pipelines.locations import resolve_location

if TYPE_CHECKING:
    import torch

DEFAULTS = ReferenceDefaults(timesteps=100, order=100, model_path=DEFAULT_DIT, num_samples=None)
DEFAULT_NUM_SAMPLES = 10


def build_parser() -> argparse.ArgumentParser:
    """The command line: the reference script's flags plus labels, guidance rule, device and checks."""
    parser = OneLineErrorParser(description="ParaTAA parallel sampling of a class-conditional DiT.")
    add_common_args(parser, DEFAULTS)
    dit = parser.add_argument_group("DiT")
    dit.add_argument("--vae_path", default=None,
                     help="VAE hub id or path (default: the pipeline's own VAE; stabilityai/sd-vae-ft-ema "
                          "for an original .pt checkpoint)")
    dit.add_argument("--class_labels", type=int, nargs="+", default=None,
                     help="ImageNet class of each sample (default: drawn from --seed); "
                          f"--num_samples defaults to their count, else to {DEFAULT_NUM_SAMPLES}")
    dit.add_argument("--guidance", choices=GUIDANCE_RULES, default="all",
                     help="'all' guides every latent channel, as diffusers' DiTPipeline does (the default, so "
                          "that --check_sequential compares with diffusers' own sampler); 'original' guides "
                          "3 of the 4 channels like the original DiT code and the authors' ParaTAA script")
    return parser


def sample_count(class_labels: list[int] | None, num_samples: int | None) -> int:
    """``--num_samples``, defaulting to the number of ``--class_labels`` (else 10).

    Raises:
        UsageError: both given and they disagree.
    """
    if class_labels is None:
        return DEFAULT_NUM_SAMPLES if num_samples is None else num_samples
    if num_samples is not None and num_samples != len(class_labels):
        raise UsageError(f"--class_labels gives {len(class_labels)} labels but --num_samples is {num_samples}")
    return len(class_labels)


def resolve_labels(class_labels: list[int] | None, num_samples: int | None, seed: int,
                   num_classes: int) -> list[int]:
    """The class label of every sample: as given, or drawn from ``seed``.

    Drawn labels come from one CPU generator seeded ``seed``; label ``k`` does not depend on the
    number of samples or processes.

    Raises:
        UsageError: count or range mismatch, naming the flag.
    """
    import torch

    count = sample_count(class_labels, num_samples)
    if class_labels is None:
        generator = torch.Generator("cpu").manual_seed(seed)
        return torch.randint(0, num_classes, (count,), generator=generator).tolist()
    bad = [label for label in class_labels if not 0 <= label < num_classes]
    if bad:
        raise UsageError(f"--class_labels must lie in [0, {num_classes}) for this model (got {bad})")
    return list(class_labels)


def main(argv: Sequence[str] | None = None) -> None:
    """Parse and check every flag, then sample."""
    with flag_checks():
        args = build_parser().parse_args(argv)
        args.num_samples = sample_count(args.class_labels, args.num_samples)
        device = validate_common(args, DEFAULTS)
        with user_errors(ModelLoadError):
            family = script_pipeline_class(args.model_path, "dit")  # None for a hub id: checked once it loads
            if args.vae_path is not None:
                resolve_location(args.vae_path, "vae_path")
        check_dit_family(family)
    sample(args, device)


def sample(args: argparse.Namespace, device: torch.device) -> None:
    """Load, solve, save (``args`` validated)."""
    from paratAA.cli.models import load_dit
    from paratAA.cli.runs import RunFolder, print_report, run_name, run_solve, write_config
    from paratAA.cli.session import resolved_settings, start
    from paratAA.distributed import shard_eps_fn
    from paratAA.pipelines.runner import class_conditioning, dit_guidance_scale

    # 1. Join the processes, load the model, build the sampler's schedule and the solver's options.
    context, runner, schedule, options = start(
        args, device, lambda dev: load_dit(args.model_path, args.vae_path, device=dev, dtype=args.dtype,
                                           guidance=args.guidance, sampler=args.sampler), ModelLoadError)
    # 2. What to sample: class labels, per-sample noise (identical on every process), the network.
    num_classes = runner.adapter.num_classes
    labels = resolve_labels(args.class_labels, args.num_samples, args.seed, num_classes)
    guidance_scale = dit_guidance_scale(args.cfg_scale, num_classes)
    if guidance_scale != args.cfg_scale and context.is_main:
        print(f"this model has a single class: it samples unconditionally (--cfg_scale {args.cfg_scale:g} not used)")
    conditioning = class_conditioning(labels, guidance_scale)
    noise = runner.sample_noise(args.seed, len(labels), args.timesteps, device=context.device)
    eps_fn = shard_eps_fn(runner.eps_fn(conditioning), context.accelerator)  # rows split across processes

    def sequential_fn() -> torch.Tensor:  # --check_sequential: diffusers' own sampler from the same noise
        return runner.sequential_reference(noise, conditioning, args.eta, seed=args.seed)

    # 3. Solve on every process; the main one records into a new run folder and reports.
    name = run_name("DiT", args.sampler, args.timesteps, options, args.seed)
    with RunFolder(args.output_path if context.is_main else None, name,
                   half_precision=args.dtype != "float32") as run:
        if run.path is not None:
            write_config(run.path, "parallel_dit.py", vars(args),
                         {**resolved_settings(runner, context, schedule, options), "num_samples": len(labels),
                          "class_labels": labels, "num_classes": num_classes, "guidance_scale": guidance_scale},
                         context.num_processes)
        _, summary = run_solve(
            eps_fn, schedule, noise, options, run, runner.decode,
            [{"seed": args.seed + k, "class_label": label} for k, label in enumerate(labels)],
            description="DiT ParaTAA", sequential_fn=sequential_fn if args.check_sequential else None,
            extra={"world_size": context.num_processes})
        if summary is not None:
            print_report(summary, run.path)


if __name__ == "__main__":
    sys.exit(run_cli(main))
