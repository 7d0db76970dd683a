"""ParaTAA warm start: solve prompt 1, then prompt 2 starting from prompt 1's trajectory.

    python parallel_sd_winit.py --model_path tiny --timesteps 20 --prompt1 "a dog" --prompt2 "a cat"
    accelerate launch --num_processes 8 parallel_sd_winit.py --fp16 --variation_steps 30 \\
        --prompt1 "a cute dog" --prompt2 "a cute cat"

Both prompts use the same noise. Prompt 2 re-solves only steps ``i < --variation_steps`` (the
least noisy ones) and keeps prompt 1's values above them: an SDEdit-like variation of prompt 1's
image; with ``--variation_steps`` equal to ``--timesteps`` it is prompt 2's exact sequential sample.
For comparison prompt 2 is also solved from scratch (``--skip_scratch`` to leave it out), so the
iterations saved by the warm start are reported. One run folder holds ``prompt1/``, ``prompt2/``
(whose ``step_0`` is prompt 1's image: watch it turn into prompt 2's), ``prompt2_from_scratch/``
(final images and metrics only) and a ``summary.json`` comparing them.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any, Sequence

# Light imports only: --help and flag errors come before torch, diffusers and the models load (in sample()).
from paratAA.cli.flags import (
    OneLineErrorParser,
    ReferenceDefaults,
    add_common_args,
    fit_default,
    require_prompt,
    validate_common,
)
from paratAA.cli.models import MODEL_HELP, check_text_to_image_flags, script_pipeline_class
from paratAA.cli.process import flag_checks, run_cli, user_errors
from paratAA.errors import ModelLoadError, UsageError
from paratAA.pipelines.defaults import DEFAULT_SD

if TYPE_CHECKING:
    import torch

DEFAULTS = ReferenceDefaults(timesteps=50, order=20, model_path=DEFAULT_SD, num_samples=1,
                             model_help=MODEL_HELP)
DEFAULT_VARIATION_STEPS = 10  # the reference script's


def build_parser() -> argparse.ArgumentParser:
    """The command line: the reference script's flags plus a negative prompt, the scratch baseline, device."""
    parser = OneLineErrorParser(description="ParaTAA warm start: prompt 2 solved from prompt 1's trajectory.")
    add_common_args(parser, DEFAULTS)
    winit = parser.add_argument_group("warm start")
    winit.add_argument("--prompt1", default="a cute dog", help="prompt solved first, from scratch (default: %(default)s)")
    winit.add_argument("--prompt2", default="a cute cat",
                       help="prompt solved from prompt 1's trajectory (default: %(default)s)")
    winit.add_argument("--negative_prompt", default="", help="negative prompt of both (default: empty)")
    winit.add_argument("--variation_steps", type=int, default=None,
                       help="prompt 2 re-solves the steps i < this (the least noisy ones), keeping prompt 1's "
                            "trajectory above; --timesteps re-solves everything (default: "
                            f"min({DEFAULT_VARIATION_STEPS}, --timesteps): the reference scripts' "
                            f"{DEFAULT_VARIATION_STEPS}, lowered to fewer steps)")
    winit.add_argument("--skip_scratch", action="store_true",
                       help="do not also solve prompt 2 from scratch (saves time, loses the comparison)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse and check every flag, then sample."""
    with flag_checks():
        args = build_parser().parse_args(argv)
        device = validate_common(args, DEFAULTS)
        require_prompt("--prompt1", args.prompt1)
        require_prompt("--prompt2", args.prompt2)
        fit_default(args, "variation_steps", min(DEFAULT_VARIATION_STEPS, args.timesteps))
        if not 1 <= args.variation_steps <= args.timesteps:
            raise UsageError(f"--variation_steps must be in [1, --timesteps={args.timesteps}] "
                             f"(got {args.variation_steps})")
        with user_errors(ModelLoadError):
            family = script_pipeline_class(args.model_path, "sd")  # None for a hub id: checked once it loads
        check_text_to_image_flags(family, eta=args.eta, negative_prompt=args.negative_prompt,
                                  sampler=args.sampler)
    sample(args, device)


def sample(args: argparse.Namespace, device: torch.device) -> None:
    """Load, solve prompt 1, warm-start prompt 2, optionally solve prompt 2 from scratch, save (``args`` validated)."""
    from paratAA.cli.models import RUN_PREFIXES, load_text_to_image
    from paratAA.cli.runs import RunFolder, run_name, run_solve, summary_lines, write_config
    from paratAA.cli.session import resolved_settings, start
    from paratAA.distributed import shard_eps_fn
    from paratAA.pipelines.runner import text_conditioning

    # 1. Join the processes, load the pipeline, build the schedule and the solver's options.
    #    Prompt 1's trajectory is kept while prompt 2 is solved: one more trajectory in memory.
    context, runner, schedule, options = start(
        args, device, lambda dev: load_text_to_image(args.model_path, dev, args.dtype, eta=args.eta,
                                                     negative_prompt=args.negative_prompt, sampler=args.sampler),
        ModelLoadError,
        kept_trajectories=1)
    count, num_steps = args.num_samples, args.timesteps
    conditioning = {prompt: text_conditioning([prompt] * count, [args.negative_prompt] * count, args.cfg_scale)
                    for prompt in (args.prompt1, args.prompt2)}
    noise = runner.sample_noise(args.seed, count, num_steps, device=context.device)
    eps = {prompt: shard_eps_fn(runner.eps_fn(conditioning[prompt]), context.accelerator) for prompt in conditioning}
    references = {}  # prompt -> the sequential sampler's latents, computed at most once

    # 2. Three solves into subfolders of one run folder: prompt 1, prompt 2 warm-started, prompt 2 from scratch.
    name = run_name(RUN_PREFIXES[runner.pipeline_class], args.sampler, num_steps, options, args.seed,
                    variation_steps=args.variation_steps)
    with RunFolder(args.output_path if context.is_main else None, name,
                   half_precision=args.dtype != "float32") as run:
        if run.path is not None:
            write_config(run.path, "parallel_sd_winit.py", vars(args),
                         resolved_settings(runner, context, schedule, options), context.num_processes)
        run.fields = {"variation_steps": args.variation_steps, "num_steps": num_steps}

        def phase(name: str, prompt: str, start_from: Any = None, save_steps: bool = True, check: bool = False):
            """One solve of ``prompt`` into ``<run>/<name>`` (``start_from``: a warm-start trajectory)."""
            def sequential_fn():
                if prompt not in references:
                    references[prompt] = runner.sequential_reference(noise, conditioning[prompt], args.eta)
                return references[prompt]

            return run_solve(
                eps[prompt], schedule, noise, options, run, runner.decode,
                [{"seed": args.seed + k, "prompt": prompt} for k in range(count)], subfolder=name,
                init_trajectory=start_from, variation_steps=None if start_from is None else args.variation_steps,
                description=name, save_steps=save_steps,
                sequential_fn=sequential_fn if check and args.check_sequential else None,
                extra={"world_size": context.num_processes})

        first, first_summary = phase("prompt1", args.prompt1, check=True)
        # The warm result equals prompt 2's sequential sample only when every step is re-solved.
        _, warm_summary = phase("prompt2", args.prompt2, start_from=first.trajectory,
                                check=args.variation_steps == num_steps)
        scratch_summary = None if args.skip_scratch else phase("prompt2_from_scratch", args.prompt2,
                                                               save_steps=False, check=True)[1]
        if run.path is None:
            return
        overview = {**run.fields, "prompt1": first_summary, "prompt2": warm_summary,
                    "prompt2_from_scratch": scratch_summary}
        if scratch_summary is not None:
            overview["prompt2_iterations_saved"] = scratch_summary["iterations"] - warm_summary["iterations"]
        run.complete(overview)
    for title, summary in (("prompt 1", first_summary), ("prompt 2 from prompt 1", warm_summary),
                           ("prompt 2 from scratch", scratch_summary)):
        if summary is not None:
            print(f"{title}:")
            print("\n".join("  " + line for line in summary_lines(summary)))
    if scratch_summary is not None:
        print(f"warm start: prompt 2 took {warm_summary['iterations']} parallel iterations "
              f"instead of {scratch_summary['iterations']} from scratch")
    print(f"Output folder: {run.path}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
