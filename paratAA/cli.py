"""Command-line flags shared by ``parallel_dit.py``, ``parallel_sd.py`` and ``parallel_sd_winit.py``.

The flags and defaults follow the authors' reference ParaTAA scripts, so their
commands work as written. User mistakes end the program with one line on stderr naming the flag
and exit status 2, never a traceback: checks here raise ``UsageError``; ``user_errors`` turns the
``ValueError``s of model loading and of ``paratAA.solve`` into ``UsageError``; ``run_cli`` prints it.

A script validates every flag (``validate_common`` and its own checks) before ``start`` joins the
process group and loads the model, so all processes of a launch meet a mistake at once; one
process prints (``is_reporting_process``). SIGINT and SIGTERM raise ``Interrupted``; a run stopped
after its folder exists is marked there (``paratAA.runs.RunFolder``). Exit statuses: 0; 2 usage;
1 NaN/inf or out of memory; 130 / 143 interrupted. This module imports torch only inside functions: ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, NoReturn, Sequence

from paratAA.defaults import PAPER, PAPER_WINDOW, RECOMMENDED
from paratAA.errors import NonFiniteError

if TYPE_CHECKING:  # torch is imported after parsing, so that --help and usage errors are fast
    import torch

    from paratAA.distributed import ProcessContext
    from paratAA.schedule import Schedule

USAGE_EXIT = 2
RUNTIME_EXIT = 1
SIGNAL_EXIT_BASE = 128  # a run stopped by signal N exits 128 + N (130 for SIGINT, 143 for SIGTERM)
SAMPLER_CHOICES = ("ddim", "dpm++2m")  # --sampler (paratAA.pipelines.runner)
TINY_MODEL = "tiny"  # --model_path value reserved for the tiny random-weight models (paratAA.pipelines.tiny)
# parallel_sd.py / parallel_sd_winit.py also take tiny-sdxl, tiny-sd3, tiny-flux (paratAA.pipelines.tiny)


def is_tiny(model_path: str) -> bool:
    """``--model_path`` names one of the tiny random-weight models (``tiny`` or ``tiny-<family>``)."""
    return model_path == TINY_MODEL or model_path.startswith(TINY_MODEL + "-")
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class UsageError(Exception):
    """A user mistake: reported as one line naming the flag, exit status 2."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived; like ``KeyboardInterrupt``, not an ``Exception``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunAborted(Exception):
    """A run stopped after its folder was created; its ``summary.json`` is marked ``status``.

    Attributes:
        cause: what stopped it (``Interrupted``, ``NonFiniteError``, ...).
        folder: the run folder.
        status: ``"interrupted"`` or ``"failed"``.
    """

    def __init__(self, cause: BaseException, folder: Path, status: str):
        super().__init__(f"{status}: {cause!r}")
        self.cause, self.folder, self.status = cause, folder, status


class FlagError(UsageError):
    """A usage error found by ``flag_checks``, before the process group exists (see ``is_reporting_process``)."""


def is_reporting_process(first_to_claim: bool = False) -> bool:
    """True on the one process of a launch that prints (always without a launcher).

    Normally rank 0. For mistakes found while checking flags (``first_to_claim``) it is the first
    process to get there: the launcher SIGTERMs the others as soon as one exits, and rank 0 may
    still be starting. The first claims a marker file in the launcher's folder of this launch (per
    machine); without one (no ``TORCHELASTIC_ERROR_FILE``), rank 0 prints.
    """
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return True
    error_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if first_to_claim and error_file:
        claimed = _claim(str(Path(error_file).parent.parent / "paratAA-reporter"))
        if claimed is not None:
            return claimed
    return os.environ.get("RANK", "0") == "0"


@functools.cache
def _claim(marker: str) -> bool | None:
    """Create ``marker`` if nobody has: True for the creator, False for the others; None if impossible."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False
    except OSError:
        return None


def tell_launcher(message: str) -> None:
    """Leave ``message`` where ``torchrun`` / ``accelerate launch`` look for a failed process's error.

    Their failure report then shows this line as the root cause instead of "To enable traceback
    see ...". Nothing happens without a launcher.
    """
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not path:
        return
    try:
        Path(path).write_text(json.dumps({"message": message, "timestamp": int(time.time())}))
    except OSError:
        pass  # the report then falls back to its generic text


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
    sampling.add_argument("--sampler", choices=SAMPLER_CHOICES, default=None,
                          help="'ddim' (the reference scripts') or 'dpm++2m' (DPM-Solver++ 2M, multistep), both "
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
    solver.add_argument("--paper", action="store_true",
                        help="reproduce the reference scripts' method and defaults: the paper's affine "
                             f"equations, --window_size {PAPER_WINDOW}, --order min({defaults.order}, --window_size), "
                             "--memory_size 2, new steps copied (--init copy); flags given explicitly still win. "
                             "Without it the recommended method runs (secant form, window T, full order, "
                             "--init denoised: fewest iterations at equal accuracy, see benchmarks/RESULTS.md)")
    solver.add_argument("--window_size", type=int, default=None,
                        help="steps evaluated in parallel per sample and iteration (capped at --timesteps); "
                             "memory: about 2 x --memory_size + 8 latents per window step and sample "
                             f"(default: --timesteps; {PAPER_WINDOW} with --paper)")
    solver.add_argument("--order", type=int, default=None,
                        help="order of the nonlinear equations, at most --window_size (default: --window_size; "
                             f"with --paper min({defaults.order}, --window_size), the reference scripts' "
                             f"{defaults.order} lowered to a smaller window)")
    solver.add_argument("--memory_size", type=int, default=None,
                        help="iterates kept for Triangular Anderson Acceleration; 1 turns it off "
                             "(plain fixed-point iteration); memory: 2 x memory_size latents per window step "
                             f"and sample (default: {RECOMMENDED['memory_size']})")
    solver.add_argument("--tol1", type=float, default=None,
                        help="a step has converged when its RMS residual <= tol1 ... (default: "
                             f"{RECOMMENDED['tol1']:g}; {PAPER['tol1']:g} with --paper). It bounds residuals, not the "
                             "result: the final difference from the sequential sample is roughly the accepted "
                             "residuals added up: with the default method typically 2-3 x the tolerance, up to "
                             "about 12 x on the benchmark rows (benchmarks/RESULTS.md, 'What a tolerance means'); "
                             "the default 1e-4 lands within about 1e-3 of it")
    solver.add_argument("--tol2", type=float, default=None,
                        help="... or <= tol2 * the step's eta=1 noise std (default: "
                             f"{RECOMMENDED['tol2']:g}; {PAPER['tol2']:g} with --paper)")
    solver.add_argument("--anderson_lambda", type=float, default=1e-3,
                        help="regularisation lambda of the Anderson least squares, > 0 (default: %(default)s)")
    solver.add_argument("--reanchor", action="store_true",
                        help="extension, off by default: re-anchor the accelerated steps on the plain update of "
                             "the highest unconverged step (removes the frontier's one-step lag after a jump; "
                             "same solution; see paratAA.solve)")
    solver.add_argument("--map_form", choices=("affine", "increment", "secant"), default=None,
                        help="form of the order-k equations: 'affine' is the paper's; 'increment' (a telescoping "
                             "sum of step increments, same solution) needs markedly fewer iterations; 'secant' (opt-in extension) "
                             "guesses each step's Jacobian from its last two iterates "
                             f"(see benchmarks/RESULTS.md) (default: {RECOMMENDED['map_form']}; affine with --paper)")
    solver.add_argument("--init", choices=("copy", "denoised"), default=None,
                        help="how steps entering the window start: 'copy' of the lowest latent (the paper's) or "
                             "'denoised' (the sampler's steps with the latest predicted sample held fixed; same "
                             f"solution, fewer iterations with small windows) (default: {RECOMMENDED['init']}; "
                             "copy with --paper)")
    solver.add_argument("--max_steps", type=int, default=None,
                        help="cap, counted as in the reference scripts: at most N saved images per sample "
                             "including the initial one, i.e. at most N - 1 parallel iterations (N >= 2). "
                             "Default: no cap (ParaTAA never needs more than --timesteps iterations)")

    model = parser.add_argument_group("model")
    model.add_argument("--model_path", default=defaults.model_path,
                       help=defaults.model_help + " (default: %(default)s)")
    model.add_argument("--fp16", action="store_true", help="run the network in float16 (GPU only)")
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


def sampler_tag(sampler: str | None) -> str:
    """The run-folder name's mark of an explicit ``--sampler`` (``"-ddim"``, ``"-dpm2m"``), else empty."""
    return "" if sampler is None else "-" + sampler.replace("++", "")


def fit_default(args: argparse.Namespace, flag: str, value: Any) -> None:
    """Give ``--flag`` the value ``value`` when the user left it out (its parser default is None)."""
    if getattr(args, flag) is None:
        setattr(args, flag, value)


def fit_method_defaults(args: argparse.Namespace, defaults: ReferenceDefaults) -> None:
    """Fill in the method flags left out: the recommended method, or the reference scripts' with ``--paper``.

    Recommended (``paratAA.RECOMMENDED``): window ``--timesteps``, order = window, secant form,
    memory 2, ``--init denoised``, tolerances 1e-4. ``--paper``: window 100, order min(script's
    order, window), affine form, memory 2, ``--init copy``, tolerances 1e-3.
    """
    method = PAPER if args.paper else RECOMMENDED
    fit_default(args, "window_size", PAPER_WINDOW if args.paper else args.timesteps)
    if args.window_size is not None and args.window_size >= 1:
        fit_default(args, "order", min(defaults.order, args.window_size) if args.paper else args.window_size)
    for flag in ("memory_size", "map_form", "init", "tol1", "tol2"):
        fit_default(args, flag, method[flag])


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
    fit_method_defaults(args, defaults)
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
    check_seed(args.seed, args.num_samples)
    args.output_path = check_output_path(args.output_path)
    device = resolve_device(args.device)
    check_fp16(args.fp16, device)
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
        reason = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"--device {name!r} cannot be used here: {reason}") from None
    return device


def check_fp16(fp16: bool, device: torch.device) -> None:
    """Reject ``--fp16`` on a CPU (half precision inference is a GPU feature here)."""
    _require(not (fp16 and device.type == "cpu"),
             f"--fp16 needs a GPU but this run is on {device}; drop --fp16 for CPU runs")


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


def solver_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of ``paratAA.solve`` given by the ParaTAA flags."""
    return dict(window_size=args.window_size, order=args.order, memory_size=args.memory_size,
                tol1=args.tol1, tol2=args.tol2, max_iters=max_iterations(args.max_steps),
                anderson_lambda=args.anderson_lambda, reanchor=args.reanchor, map_form=args.map_form,
                init=args.init)


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


def check_memory(args: argparse.Namespace, latent_shape: Sequence[int], device: torch.device,
                 kept_trajectories: int = 0) -> None:
    """Refuse flags whose solver state cannot fit the device (``paratAA.memory``), naming the costliest flag.

    Args:
        args: validated arguments (``--num_samples``, ``--timesteps``, ``--window_size``, ``--memory_size``).
        latent_shape: the model's latent shape.
        device: where the state lives.
        kept_trajectories: trajectories the script keeps besides the solve's (a warm start's).
    """
    from paratAA.memory import check_fits, estimate_solver_memory

    estimate = estimate_solver_memory(args.num_samples, args.timesteps, math.prod(latent_shape), args.window_size,
                                      args.memory_size, kept_trajectories)
    culprits = {"trajectories": f"--num_samples {args.num_samples} with --timesteps {args.timesteps}",
                "history": f"--memory_size {args.memory_size} with --window_size {args.window_size}",
                "window": f"--window_size {args.window_size} with --num_samples {args.num_samples}"}
    # On a CPU every process of a launch holds its own copy in the same RAM.
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    with user_errors(ValueError):
        check_fits(estimate, device, culprits, sharing=sharing)


def start(args: argparse.Namespace, device: torch.device, load: Callable[[torch.device], Any],
          load_error: type[Exception], kept_trajectories: int = 0) -> tuple[ProcessContext, Any, Schedule]:
    """Join the process group, load the model, build the schedule, check that the solver's state fits.

    Call it after every flag has been validated (``validate_common`` and the script's own checks).

    Args:
        args: validated arguments (``add_common_args`` flags).
        device: ``validate_common``'s device.
        load: loads the model onto a device as a ``paratAA.pipelines.runner.PipelineRunner``
            (``paratAA.script_models``).
        load_error: the loader's exception for a bad model location (``paratAA.pipelines.locations.ModelLoadError``).
        kept_trajectories: see ``check_memory``.

    Returns:
        The process context, the adapter and its ``--timesteps`` / ``--eta`` schedule.

    Raises:
        UsageError: a model location that cannot be loaded, a step count the model's scheduler
            refuses, or flags whose state cannot fit the device.
    """
    import torch

    from paratAA.distributed import init_processes

    context = init_processes(device)
    check_fp16(args.fp16, context.device)
    if is_tiny(args.model_path) and context.device.type == "cpu":
        # Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP's spinning
        # threads made them 20-50x slower (measured: 67 s -> 2.6 s for the README's tiny SD run).
        torch.set_num_threads(1)
    with user_errors(load_error):
        adapter = load(context.device)
    with user_errors(ValueError, flag="--timesteps"):
        schedule = adapter.make_schedule(args.timesteps, args.eta)
    # A multistep sampler keeps every step's output: one more trajectory's worth (paratAA.memory).
    check_memory(args, adapter.latent_shape, context.device, kept_trajectories + int(schedule.is_multistep))
    return context, adapter, schedule


@contextmanager
def user_errors(*error_types: type[Exception], flag: str | None = None) -> Iterator[None]:
    """Re-raise ``error_types`` raised in the block as ``UsageError`` (optionally naming ``flag``).

    Wrap only calls whose errors of these types are caused by user input: model loading
    (``ModelLoadError``), ``paratAA.solve`` (``ValueError`` naming the argument).
    """
    try:
        yield
    except error_types as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"{flag}: {message}" if flag else message) from None


@contextmanager
def signals_raise_interrupted() -> Iterator[None]:
    """Within the block SIGINT and SIGTERM raise ``Interrupted`` (previous handlers restored after).

    A second signal while the first is being handled (the run folder being marked) is ignored.
    """
    def handler(signum: int, frame: Any) -> None:
        ignore_signals()
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def signals_deferred(drop_on_error: bool = False) -> Iterator[None]:
    """SIGINT and SIGTERM arriving within the block take effect at its end (files written together stay
    consistent: a metrics line and the summary that counts it).

    The signal is only noted (in Python, so other threads receiving it change nothing) and raised
    again after the block, to the handler that was there before; with ``drop_on_error`` it is
    dropped when the block fails. Outside the main thread (no signal handlers there) nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum)) for sig in _STOP_SIGNALS}
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received and not (failed and drop_on_error):
            signal.raise_signal(received[0])


@contextmanager
def flag_checks() -> Iterator[None]:
    """Wrap a script's parsing and flag checks: SIGINT and SIGTERM wait until they are done.

    Under a launch, the launcher SIGTERMs every process as soon as one exits; a process still
    checking would die with -15 instead of finding the same mistake. Deferred, the signal is
    dropped when the checks fail (the process exits 2 like the others) and delivered when they pass.
    A mistake found here is a ``FlagError``: the first process to find it prints it.
    """
    with signals_deferred(drop_on_error=True):
        try:
            yield
        except UsageError as error:
            raise FlagError(str(error)) from None


def ignore_signals() -> None:
    """Ignore SIGINT and SIGTERM from now on (while a stop is being recorded and reported)."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


@contextmanager
def signals_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM within the block (a run that is already stopping is being recorded)."""
    previous = {sig: signal.getsignal(sig) for sig in _STOP_SIGNALS}
    ignore_signals()
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def failure_report(error: BaseException) -> tuple[int, str] | None:
    """The exit status and one-line message for a known way of failing; None for an unexpected error."""
    if isinstance(error, Interrupted):
        return SIGNAL_EXIT_BASE + error.signum, f"interrupted by {error}"
    if isinstance(error, KeyboardInterrupt):
        return SIGNAL_EXIT_BASE + signal.SIGINT, "interrupted by SIGINT"
    if isinstance(error, UsageError):
        return USAGE_EXIT, f"error: {error}"
    if isinstance(error, NonFiniteError):
        return RUNTIME_EXIT, f"error: {error}"
    if is_out_of_memory(error):
        first = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
        return RUNTIME_EXIT, (f"error: out of memory ({first}); lower --num_samples, --window_size or "
                              "--memory_size (see --help)")
    return None


def is_out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, torch's (GPU) OutOfMemoryError, or torch's CPU allocator giving up."""
    return (isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"
            or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error)))


def run_cli(main: Callable[[Sequence[str] | None], None], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``main`` and turn every expected way of stopping into one line on stderr.

    One process of a launch prints (``is_reporting_process``); every process returns the same
    status and tells the launcher its line (``tell_launcher``). A run stopped after its folder
    exists has it marked (``RunAborted``) and the line says where. Unexpected errors keep their
    traceback.

    Args:
        main: the script body; takes argv (None: ``sys.argv[1:]``).
        argv: command-line arguments.

    Returns:
        The exit status: 0; 2 for a usage error; 1 for NaN/inf or running out of memory; 128 + the
        signal number for SIGINT (130) and SIGTERM (143).
    """
    prog = os.path.basename(sys.argv[0]) or "paratAA"
    with signals_raise_interrupted():
        try:
            main(argv)
            return 0
        except (Exception, KeyboardInterrupt, Interrupted) as error:
            ignore_signals()  # a signal now would interrupt the report
            status = _report(prog, error)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        # Once one process fails the launcher SIGTERMs the others: let them finish exiting with their status.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return status


def _report(prog: str, error: BaseException) -> int:
    """Print ``error``'s line (one process: ``is_reporting_process``), tell the launcher, return the exit status."""
    where = ""
    if isinstance(error, RunAborted):
        where = f" (run folder marked {error.status}: {error.folder})"
        error = error.cause
    report = failure_report(error)
    reporting = is_reporting_process(first_to_claim=isinstance(error, FlagError))
    if report is None:  # a bug, not a way of stopping: keep the traceback
        report = (RUNTIME_EXIT, f"unexpected error: {type(error).__name__}: {error}")
        if reporting:
            traceback.print_exception(error)
    if reporting:
        print(f"{prog}: {report[1]}{where}", file=sys.stderr)
    tell_launcher(f"{prog}: {report[1]}")
    return report[0]
