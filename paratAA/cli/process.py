"""How the entry scripts stop: exit statuses, signals, one-line errors, and which process of a launch reports.

User mistakes end the program with one line on stderr naming the flag and exit status 2, never a
traceback: checks raise ``UsageError``; ``user_errors`` turns the ``ValueError``s of model loading
and of ``paratAA.solve`` into ``UsageError``; ``run_cli`` prints it. One process of a launch
prints (``is_reporting_process``). SIGINT and SIGTERM raise ``Interrupted``; a run stopped after
its folder exists is marked there (``paratAA.cli.runs.RunFolder``). Exit statuses: 0; 2 usage;
1 NaN/inf or out of memory; 130 / 143 interrupted. Imports neither torch nor the library's solver.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from paratAA.errors import FlagError, Interrupted, NonFiniteError, RunAborted, UsageError, first_line

USAGE_EXIT = 2
RUNTIME_EXIT = 1
SIGNAL_EXIT_BASE = 128  # a run stopped by signal N exits 128 + N (130 for SIGINT, 143 for SIGTERM)
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


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


@contextmanager
def user_errors(*error_types: type[Exception], flag: str | None = None) -> Iterator[None]:
    """Re-raise ``error_types`` raised in the block as ``UsageError`` (optionally naming ``flag``).

    Wrap only calls whose errors of these types are caused by user input: model loading
    (``ModelLoadError``), ``paratAA.solve`` (``ValueError`` naming the argument).
    """
    try:
        yield
    except error_types as error:
        message = first_line(error)
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
        first = first_line(error, "no detail")
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
