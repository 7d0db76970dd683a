"""Command-line flags shared by ``parallel_dit.py``, ``parallel_sd.py`` and ``parallel_sd_winit.py``.

The flags and defaults follow the authors' reference ParaTAA scripts, so their
commands work as written. User mistakes end the program with one line on stderr naming the flag
and exit status 2, never a traceback: checks here raise ``UsageError``; ``user_errors`` turns the
``ValueError``s of model loading and of ``paratAA.solve`` into ``UsageError``; ``run_cli`` prints it.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Sequence

import torch

from paratAA import NonFiniteError, Schedule
from paratAA.distributed import ProcessContext, init_processes

USAGE_EXIT = 2
RUNTIME_EXIT = 1
TINY_MODEL = "tiny"  # --model_path value reserved for the tiny random-weight models (models.tiny)


class UsageError(Exception):
    """A user mistake: reported as one line naming the flag, exit status 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """``ArgumentParser`` whose errors are a single line (argparse's own add the usage line)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_EXIT, f"{self.prog}: error: {message} (see --help)\n")


@dataclass(frozen=True)
class ReferenceDefaults:
    """Per-script defaults of the reference scripts (the rest are shared)."""

    timesteps: int
    order: int
    model_path: str
    num_samples: int | None = 10  # None: the script derives it (DiT: from --class_labels)


def add_common_args(parser: argparse.ArgumentParser, defaults: ReferenceDefaults) -> None:
    """Add the sampler, ParaTAA, model and output flags every script shares.

    Args:
        parser: the script's parser.
        defaults: the script's reference defaults.
    """
    sampling = parser.add_argument_group("sampling")
    sampling.add_argument("--timesteps", type=int, default=defaults.timesteps,
                          help="number of DDIM steps T (default: %(default)s)")
    sampling.add_argument("--cfg_scale", type=float, default=4.0,
                          help="classifier-free guidance scale (default: %(default)s)")
    sampling.add_argument("--eta", type=float, default=0.0,
                          help="DDIM eta in [0, 1]: 0 is the ODE sampler, 1 is DDPM (default: %(default)s)")
    sampling.add_argument("--seed", type=int, default=0,
                          help="sample k draws its noise from a CPU generator seeded with seed + k (default: %(default)s)")
    sampling.add_argument("--num_samples", type=int, default=defaults.num_samples,
                          help="number of samples, solved together (default: %(default)s)" if defaults.num_samples
                          else "number of samples, solved together (default: one per --class_labels, else 10)")

    solver = parser.add_argument_group("ParaTAA")
    solver.add_argument("--window_size", type=int, default=100,
                        help="steps evaluated in parallel per sample and iteration (default: %(default)s)")
    solver.add_argument("--order", type=int, default=defaults.order,
                        help="order of the nonlinear equations, at most --window_size (default: %(default)s)")
    solver.add_argument("--memory_size", type=int, default=2,
                        help="iterates kept for Triangular Anderson Acceleration; 1 turns it off "
                             "(plain fixed-point iteration); 2 to 5 recommended (default: %(default)s)")
    solver.add_argument("--tol1", type=float, default=1e-3,
                        help="a step has converged when its RMS residual <= tol1 ... (default: %(default)s)")
    solver.add_argument("--tol2", type=float, default=1e-3,
                        help="... or <= tol2 * the step's eta=1 noise std (default: %(default)s)")
    solver.add_argument("--anderson_lambda", type=float, default=1e-3,
                        help="regularisation lambda of the Anderson least squares, > 0 (default: %(default)s)")
    solver.add_argument("--reanchor", action="store_true",
                        help="extension, off by default: re-anchor the accelerated steps on the plain update of "
                             "the highest unconverged step (removes the frontier's one-step lag after a jump; "
                             "same solution; see paratAA.solve)")
    solver.add_argument("--map_form", choices=("affine", "increment"), default="affine",
                        help="form of the order-k equations: 'affine' is the paper's; 'increment' (a telescoping "
                             "sum of step increments, same solution) needs markedly fewer iterations "
                             "(see benchmarks/RESULTS.md) (default: %(default)s)")
    solver.add_argument("--max_steps", type=int, default=None,
                        help="cap, counted as in the reference scripts: at most N saved images per sample "
                             "including the initial one, i.e. at most N - 1 parallel iterations (N >= 2). "
                             "Default: no cap (ParaTAA never needs more than --timesteps iterations)")

    model = parser.add_argument_group("model")
    model.add_argument("--model_path", default=defaults.model_path,
                       help="hub id or local path; 'tiny' builds a tiny random-weight model offline "
                            "(default: %(default)s)")
    model.add_argument("--fp16", action="store_true", help="run the network in float16 (GPU only)")
    model.add_argument("--device", default=None,
                       help="torch device of a single-process run (default: cuda if available, else cpu); "
                            "under a multi-process launch accelerate assigns the devices")

    output = parser.add_argument_group("output")
    output.add_argument("--output_path", default="output",
                        help="a new run folder is created inside it for every run (default: %(default)s)")
    output.add_argument("--check_sequential", action="store_true",
                        help="also run diffusers' sequential sampler from the same noise and report the "
                             "largest latent difference, the decoded images' PSNR and its time in summary.json")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UsageError(message)


def validate_common(args: argparse.Namespace) -> torch.device:
    """Check the shared flags; create ``--output_path`` if needed.

    Args:
        args: parsed arguments carrying the flags of ``add_common_args``.

    Returns:
        The requested device (``--device`` or its default).

    Raises:
        UsageError: naming the first offending flag.
    """
    _require(args.timesteps >= 1, f"--timesteps must be >= 1 (got {args.timesteps})")
    _require(math.isfinite(args.cfg_scale), f"--cfg_scale must be finite (got {args.cfg_scale})")
    _require(0.0 <= args.eta <= 1.0, f"--eta must be in [0, 1] (got {args.eta})")
    _require(args.seed >= 0, f"--seed must be >= 0 (got {args.seed})")
    _require(args.num_samples is None or args.num_samples >= 1,
             f"--num_samples must be >= 1 (got {args.num_samples})")
    _require(args.window_size >= 1, f"--window_size must be >= 1 (got {args.window_size})")
    _require(args.order >= 1, f"--order must be >= 1 (got {args.order})")
    _require(args.order <= args.window_size,
             f"--order ({args.order}) must not exceed --window_size ({args.window_size})")
    _require(args.memory_size >= 1, f"--memory_size must be >= 1 (got {args.memory_size})")
    for flag in ("tol1", "tol2"):
        value = getattr(args, flag)
        _require(math.isfinite(value) and value >= 0, f"--{flag} must be a finite number >= 0 (got {value})")
    _require(math.isfinite(args.anderson_lambda) and args.anderson_lambda > 0,
             f"--anderson_lambda must be a finite number > 0 (got {args.anderson_lambda})")
    _require(args.max_steps is None or args.max_steps >= 2,
             f"--max_steps counts saved images including the initial one, so it must be >= 2 (got {args.max_steps})")
    _require(bool(args.model_path.strip()), "--model_path must not be empty")
    device = resolve_device(args.device)
    check_fp16(args.fp16, device)
    check_output_path(args.output_path)
    return device


def resolve_device(name: str | None) -> torch.device:
    """``--device`` as a torch device (default: cuda if available, else cpu)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name!r} is not a torch device: {error}") from None
    _require(device.type != "cuda" or torch.cuda.is_available(), f"--device {name}: CUDA is not available here")
    return device


def check_fp16(fp16: bool, device: torch.device) -> None:
    """Reject ``--fp16`` on a CPU (half precision inference is a GPU feature here)."""
    _require(not (fp16 and device.type == "cpu"),
             f"--fp16 needs a GPU but this run is on {device}; drop --fp16 for CPU runs")


def check_output_path(path: str) -> None:
    """Create ``--output_path`` if missing and make sure a file can be written in it."""
    _require(bool(path.strip()), "--output_path must not be empty")
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UsageError(f"--output_path {path!r} is not writable: {error.strerror or error}") from None


def require_prompt(flag: str, prompt: str) -> None:
    """Reject an empty or blank prompt."""
    _require(bool(prompt.strip()), f"{flag} must not be empty")


def max_iterations(max_steps: int | None) -> int | None:
    """The solver's iteration cap for ``--max_steps`` (reference meaning: images incl. the start)."""
    return None if max_steps is None else max_steps - 1


def solver_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``paratAA.solve`` given by the ParaTAA flags."""
    return dict(window_size=args.window_size, order=args.order, memory_size=args.memory_size,
                tol1=args.tol1, tol2=args.tol2, max_iters=max_iterations(args.max_steps),
                anderson_lambda=args.anderson_lambda, reanchor=args.reanchor, map_form=args.map_form)


def resolved_settings(adapter: Any, context: ProcessContext, schedule: Schedule,
                      options: dict[str, Any]) -> dict[str, Any]:
    """What every script's run resolved to, for ``config.json``'s ``resolved`` section.

    Args:
        adapter: the model adapter (``model_id``, ``dtype``).
        context: the process context (device).
        schedule: the DDIM schedule (its timesteps).
        options: ``solver_options(args)`` (the iteration cap).
    """
    return {"model_id": adapter.model_id, "max_iterations": options["max_iters"], "device": str(context.device),
            "dtype": str(adapter.dtype), "timesteps": schedule.timesteps.tolist()}


def start(args: argparse.Namespace, load: Callable[[torch.device], Any],
          load_error: type[Exception]) -> tuple[ProcessContext, Any, Schedule]:
    """Validate the shared flags, join the process group, load the model, build the schedule.

    Args:
        args: parsed arguments (``add_common_args`` flags).
        load: loads the model adapter onto a device (``models.load_dit`` / ``load_sd`` bound to args).
        load_error: the loader's exception for a bad model location (``models.ModelLoadError``).

    Returns:
        The process context, the adapter and its ``--timesteps`` / ``--eta`` schedule.

    Raises:
        UsageError: a bad flag, model location or step count.
    """
    device = validate_common(args)
    context = init_processes(device)
    check_fp16(args.fp16, context.device)
    if args.model_path == TINY_MODEL and context.device.type == "cpu":
        # Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP's spinning
        # threads made them 20-50x slower (measured: 67 s -> 2.6 s for the README's tiny SD run).
        torch.set_num_threads(1)
    with user_errors(load_error):
        adapter = load(context.device)
    with user_errors(ValueError, flag="--timesteps"):
        schedule = adapter.make_schedule(args.timesteps, args.eta)
    return context, adapter, schedule


@contextmanager
def user_errors(*error_types: type[Exception], flag: str | None = None) -> Iterator[None]:
    """Re-raise ``error_types`` raised in the block as ``UsageError`` (optionally naming ``flag``).

    Wrap only calls whose errors of these types are caused by user input: model loading
    (``models.ModelLoadError``), ``paratAA.solve`` (``ValueError`` naming the argument).
    """
    try:
        yield
    except error_types as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{flag}: {message}" if flag else message) from None


def run_cli(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main`` and turn expected failures into one line on stderr.

    Args:
        main: the script body; takes argv (None: ``sys.argv[1:]``).
        argv: command-line arguments.

    Returns:
        The exit status: 0, 2 for a usage error, 1 when the network produced NaN/inf.
    """
    prog = os.path.basename(sys.argv[0]) or "paratAA"
    # Every process of a launch meets the same error: only rank 0 reports it.
    report = os.environ.get("RANK", "0") == "0"
    try:
        main(argv)
    except UsageError as error:
        if report:
            print(f"{prog}: error: {error}", file=sys.stderr)
        return USAGE_EXIT
    except NonFiniteError as error:
        if report:
            print(f"{prog}: error: {error} (with --fp16, try without it)", file=sys.stderr)
        return RUNTIME_EXIT
    return 0
