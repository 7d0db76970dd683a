"""Command-line flags shared by ``parallel_dit.py``, ``parallel_sd.py`` and ``parallel_sd_winit.py``, and their checks.

The sampling, model and output flags follow the authors' reference ParaTAA scripts, so their
commands work as written. The method's flags are generated from ``paratAA.options.SolverOptions``
(one flag per option, its help the option's own), so a new solver option reaches the scripts
without an edit here; ``solver_options(args)`` turns them back into a ``SolverOptions``.

A script validates every flag (``validate_common`` and its own checks) before
``paratAA.cli.session.start`` joins the process group and loads the model, so all processes of a
launch meet a mistake at once. Checks raise ``UsageError`` naming the flag. This module imports
torch only inside functions: ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from paratAA.cli.process import USAGE_EXIT, is_reporting_process, tell_launcher, user_errors
from paratAA.errors import UsageError, first_line
from paratAA.options import AUTO_WINDOW, INIT_RULES, MAP_FORMS, PAPER, RECOMMENDED, SolverOptions
from paratAA.pipelines.defaults import MODEL_DTYPES, SAMPLERS

if TYPE_CHECKING:  # torch is imported after parsing, so that --help and usage errors are fast
    import torch



class OneLineErrorParser(argparse.ArgumentParser):
    """``ArgumentParser`` for launches of several processes: one-line errors, printed by one process only.

    Abbreviated flags are refused (``--timestep`` is not ``--timesteps``).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        line = f"{self.prog}: error: {message} (see --help)"
        tell_launcher(line)
        self.exit(USAGE_EXIT, line + "\n")

    def _print_message(self, message: str, file: Any = None) -> None:  # --help, usage and errors
        if is_reporting_process(first_to_claim=True):
            super()._print_message(message, file)


@dataclass(frozen=True)
class ReferenceDefaults:
    """Per-script defaults of the reference scripts (the rest are shared)."""

    timesteps: int
    order: int  # with --paper: --order defaults to min(order, --window_size)
    model_path: str
    num_samples: int | None = 10  # None: the script derives it (DiT: from --class_labels)
    model_help: str = "hub id or local path; 'tiny' builds a tiny random-weight model offline"


MEMORY_NOTE = (
    "Memory: the solver's state is float64 latents (8 bytes per entry: DiT-XL/2's 4x32x32 latent is 32.8 kB, "
    "SD 1.5's 4x64x64 131 kB, the tiny models' 4x8x8 2 kB). Per sample: 2 (T+1) for the noise and the "
    "trajectory, and per window step 2 x --memory_size for the Anderson history (none with --memory_size 1) "
    "plus about 8 for the iteration; every process holds all of it. A run whose estimate exceeds the "
    "device's memory is refused, naming the flag, before anything is allocated.")


# Per-option notes the scripts add to the option's own help: memory cost and the presets' values.
def _script_notes(defaults: ReferenceDefaults) -> dict[str, str]:
    return {
        "window_size": "memory: about 2 x --memory_size + 8 latents per window step and sample (default: "
                       f"--timesteps; {PAPER.window_size} with --paper)",
        "order": f"(default: --window_size; with --paper min({defaults.order}, --window_size), the reference "
                 f"scripts' {defaults.order} lowered to a smaller window)",
        "memory_size": "memory: 2 x memory_size latents per window step and sample",
        "tol1": "It bounds residuals, not the result: the final difference from the sequential sample is roughly "
                "the accepted residuals added up: with the default method typically 2-3 x the tolerance, up to "
                "about 12 x on the benchmark rows (benchmarks/RESULTS.md, 'What a tolerance means'); the default "
                "1e-4 lands within about 1e-3 of it",
    }


def window_size_value(text: str) -> int | str:
    """``--window_size``: an integer, or ``auto`` (``paratAA.planner`` picks it for the device)."""
    if text.strip().lower() == AUTO_WINDOW:
        return AUTO_WINDOW
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer or '{AUTO_WINDOW}', got {text!r}") from None


window_size_value.__name__ = "window size"  # argparse names the type in its error message


_FLAG_KINDS: dict[str, dict[str, Any]] = {  # argparse settings per option, beyond the defaults by annotation
    "window_size": {"type": window_size_value}, "order": {"type": int}, "memory_size": {"type": int},
    "map_form": {"choices": MAP_FORMS}, "init": {"choices": INIT_RULES},
    "tol1": {"type": float}, "tol2": {"type": float}, "freeze_factor": {"type": float},
    "anderson_lambda": {"type": float},
    "reanchor": {"action": "store_const", "const": True},
}


def add_solver_args(group: Any, defaults: ReferenceDefaults) -> None:
    """One flag per ``SolverOptions`` field marked as a flag: ``--<name>``, default None (filled in by
    ``fit_method_defaults`` from ``RECOMMENDED`` or, with ``--paper``, ``PAPER``)."""
    group.add_argument("--paper", action="store_true",
                       help="reproduce the reference scripts' method and defaults: the paper's affine "
                            f"equations, --window_size {PAPER.window_size}, --order min({defaults.order}, "
                            "--window_size), --memory_size 2, new steps copied (--init copy), tolerances 1e-3, "
                            "--freeze_factor 1; flags given explicitly still win. Without it the recommended method "
                            "runs (secant form, window T, full order, memory 1, --init denoised, --freeze_factor 0.1: "
                            "fewest iterations at equal accuracy, "
                            "see benchmarks/RESULTS.md)")
    notes = _script_notes(defaults)
    for option in fields(SolverOptions):
        if not option.metadata["flag"]:
            continue
        name = option.name
        recommended, paper = getattr(RECOMMENDED, name), getattr(PAPER, name)
        shown = [] if name in ("window_size", "order") else (
            ([] if recommended is None else [f"default: {recommended}"])
            + ([] if paper == recommended else [f"{paper} with --paper"]))
        default = f" ({'; '.join(shown)})" if shown else ""
        text = f"{option.metadata['help']}{default}" + (f". {notes[name]}" if name in notes else "")
        group.add_argument(f"--{name}", default=None, help=text.replace("%", "%%"), **_FLAG_KINDS[name])


def add_common_args(parser: argparse.ArgumentParser, defaults: ReferenceDefaults) -> None:
    """Add the sampler, ParaTAA, model and output flags every script shares (and the memory note).

    Args:
        parser: the script's parser.
        defaults: the script's reference defaults.
    """
    parser.epilog = MEMORY_NOTE if parser.epilog is None else parser.epilog
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--timesteps", type=int, default=defaults.timesteps,
                          help="number of sampling steps T; memory: 2 (T+1) latents per sample (default: %(default)s)")
    sampling.add_argument("--cfg_scale", type=float, default=4.0,
                          help="classifier-free guidance scale (default: %(default)s)")
    sampling.add_argument("--sampler", choices=SAMPLERS, default=None,
                          help="'ddim' (the reference scripts'), 'dpm++2m' (DPM-Solver++ 2M) or 'unipc' (UniPC, bh2, "
                               "order 2), all "
                               "built from the model's scheduler configuration (default: ddim for DiT and SD 1.x/2.x, "
                               "the scheduler the pipeline ships for SDXL, SD3 and Flux)")
    sampling.add_argument("--eta", type=float, default=0.0,
                          help="DDIM eta in [0, 1]: 0 is the ODE sampler, 1 is DDPM (default: %(default)s)")
    sampling.add_argument("--seed", type=int, default=0,
                          help="sample k draws its noise from a CPU generator seeded with seed + k, which must "
                               "fit 64 bits: 0 <= seed <= 2**64 - num_samples (default: %(default)s)")
    count = (f"(default: {defaults.num_samples})" if defaults.num_samples
             else "(default: one per --class_labels, else 10)")
    sampling.add_argument("--num_samples", type=int, default=defaults.num_samples,
                          help=f"number of samples, solved together; memory grows linearly with it {count}")

    solver = parser.add_argument_group("ParaTAA")
    add_solver_args(solver, defaults)
    solver.add_argument("--max_steps", type=int, default=None,
                        help="cap, counted as in the reference scripts: at most N saved images per sample "
                             "including the initial one, i.e. at most N - 1 parallel iterations (N >= 2). "
                             "Default: no cap (ParaTAA never needs more than --timesteps iterations)")

    model = parser.add_argument_group("model")
    model.add_argument("--model_path", default=defaults.model_path,
                       help=defaults.model_help + " (default: %(default)s)")
    model.add_argument("--dtype", choices=MODEL_DTYPES, default=None,
                       help="precision the network runs in; the solver's state stays float64 and its stop rule "
                            "allows for the network's rounding (default: float32)")
    model.add_argument("--fp16", action="store_true", help="the same as --dtype float16")
    model.add_argument("--device", default=None,
                       help="torch device of a single-process run, e.g. cpu, cuda, cuda:1 (default: cuda if "
                            "available, else cpu); under a multi-process launch accelerate assigns the devices")

    output = parser.add_argument_group("output")
    output.add_argument("--output_path", default="output",
                        help="a new run folder is created inside it for every run; ~ is expanded "
                             "(default: %(default)s)")
    output.add_argument("--check_sequential", action="store_true",
                        help="also run diffusers' sequential sampler from the same noise and report the "
                             "largest latent difference, the decoded images' PSNR and its time in summary.json")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def fit_default(args: argparse.Namespace, flag: str, value: Any) -> None:
    """Give ``--flag`` the value ``value`` when the user left it out (its parser default is None)."""
    if getattr(args, flag) is None:
        setattr(args, flag, value)


def fit_method_defaults(args: argparse.Namespace, defaults: ReferenceDefaults) -> None:
    """Fill in the method flags left out: the recommended method, or the reference scripts' with ``--paper``.

    Recommended (``paratAA.RECOMMENDED``): window ``--timesteps``, order = window, secant form,
    memory 1 (2 with a half-precision ``--dtype``: filled in by ``validate_common``), ``--init denoised``,
    tolerances 1e-4, freeze factor 0.1. ``--paper``: window 100, order
    min(script's order, window), affine form, memory 2, ``--init copy``, tolerances 1e-3, freeze factor 1.
    """
    method = PAPER if args.paper else RECOMMENDED
    fit_default(args, "window_size", PAPER.window_size if args.paper else args.timesteps)
    if isinstance(args.window_size, int) and args.window_size >= 1:  # "auto": the order follows the planned window
        fit_default(args, "order", min(defaults.order, args.window_size) if args.paper else args.window_size)
    for option in fields(SolverOptions):
        if option.metadata["flag"]:
            fit_default(args, option.name, getattr(method, option.name))


def validate_common(args: argparse.Namespace, defaults: ReferenceDefaults) -> torch.device:
    """Check the shared flags, fit the defaults that depend on others, expand and create ``--output_path``.

    Call it first, before loading anything or joining a process group: every process of a launch
    then meets the same error at once. ``args.num_samples`` must be resolved (not None).

    Args:
        args: parsed arguments carrying the flags of ``add_common_args``.
        defaults: the script's reference defaults (the method flags left out are filled in by
            ``fit_method_defaults``).

    Returns:
        The requested device (``--device`` or its default), checked to be usable.

    Raises:
        UsageError: naming the first offending flag.
    """
    _require(args.timesteps >= 1, f"--timesteps must be >= 1 (got {args.timesteps})")
    _require(math.isfinite(args.cfg_scale), f"--cfg_scale must be finite (got {args.cfg_scale})")
    _require(0.0 <= args.eta <= 1.0, f"--eta must be in [0, 1] (got {args.eta})")
    _require(args.eta == 0 or args.sampler in (None, "ddim"),
             f"--eta: {args.sampler} is deterministic; eta applies to --sampler ddim only (got {args.eta})")
    _require(args.num_samples >= 1, f"--num_samples must be >= 1 (got {args.num_samples})")
    _require(args.max_steps is None or args.max_steps >= 2,
             f"--max_steps counts saved images including the initial one, so it must be >= 2 (got {args.max_steps})")
    fit_method_defaults(args, defaults)
    args.dtype = resolve_dtype(args.dtype, args.fp16)
    with user_errors(ValueError):
        in_force = solver_options(args).resolved(args.timesteps, flag=lambda name: f"--{name}")
    args.memory_size = in_force.memory_size  # left out: the default rule for --dtype (paratAA.options)
    _require(bool(args.model_path.strip()), "--model_path must not be empty")
    check_seed(args.seed, args.num_samples)
    args.output_path = check_output_path(args.output_path)
    device = resolve_device(args.device)
    check_dtype(args.dtype, device)
    return device


def check_seed(seed: int, num_samples: int) -> None:
    """Reject a seed outside ``[0, 2**64 - num_samples]``: sample k's generator is seeded ``seed + k``."""
    from paratAA.noise import largest_seed

    largest = largest_seed(num_samples)
    _require(0 <= seed <= largest, f"--seed must be in [0, {largest}] (2**64 - --num_samples, since sample k "
                                   f"uses seed + k) (got {seed})")


def resolve_device(name: str | None) -> torch.device:
    """``--device`` as a torch device (default: cuda if available, else cpu), checked to hold data."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.zeros(1, device=device).cpu()  # fails for an absent backend or index, and for "meta" (no data)
    except Exception as error:  # noqa: BLE001 - whatever the backend raises, the device is unusable
        reason = first_line(error).split(". ")[0]
        raise UsageError(f"--device {name!r} cannot be used here: {reason}") from None
    return device


def resolve_dtype(dtype: str | None, fp16: bool) -> str:
    """``--dtype``, with ``--fp16`` its alias for float16 (default float32)."""
    _require(not (fp16 and dtype not in (None, "float16")), f"--fp16 means --dtype float16, but --dtype is {dtype}")
    return "float16" if fp16 else (dtype or "float32")


def check_dtype(dtype: str, device: torch.device) -> None:
    """Reject a ``--dtype`` the device cannot run a matrix product in (both half precisions run on a
    current CPU build of torch, slowly)."""
    import torch

    try:
        torch.ones(2, 2, dtype=getattr(torch, dtype), device=device) @ torch.ones(2, 2, dtype=getattr(torch, dtype),
                                                                                   device=device)
    except Exception as error:  # noqa: BLE001 - whatever the backend raises, the dtype is unusable there
        raise UsageError(f"--dtype {dtype} cannot run on {device}: {first_line(error)}") from None


def check_output_path(path: str) -> str:
    """``--output_path`` with ``~`` expanded, created if missing and checked to be writable."""
    _require(bool(path.strip()), "--output_path must not be empty")
    path = os.path.expanduser(path)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UsageError(f"--output_path {path!r} is not writable: {error.strerror or error}") from None
    return path


def require_prompt(flag: str, prompt: str) -> None:
    """Reject an empty or blank prompt."""
    _require(bool(prompt.strip()), f"{flag} must not be empty")


def max_iterations(max_steps: int | None) -> int | None:
    """The solver's iteration cap for ``--max_steps`` (reference meaning: images incl. the start)."""
    return None if max_steps is None else max_steps - 1


def solver_options(args: argparse.Namespace) -> SolverOptions:
    """The ``SolverOptions`` the ParaTAA flags give (every flag of ``add_solver_args``, ``--max_steps``, and
    ``--dtype`` as the network's precision)."""
    given = {option.name: getattr(args, option.name) for option in fields(SolverOptions) if option.metadata["flag"]}
    return SolverOptions(**given, max_iters=max_iterations(args.max_steps), network_dtype=getattr(args, "dtype", None))


