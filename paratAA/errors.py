"""Every exception the package raises on purpose, in one hierarchy, and the one-line formatting helper.

Importable without torch (the entry scripts' fast paths need it). What a user catches::

    ParaTAAError                       base of all of them
    ├── NonFiniteError (RuntimeError)  NaN or inf in the network's output or the solver's state
    ├── OptionError (ValueError)       a solver option out of range (``paratAA.options``)
    ├── ScheduleError (ValueError)     a scheduler configuration that is not an affine recurrence
    ├── UnsupportedPipelineError       a pipeline, scheduler or call argument ``sample(pipe)`` cannot run
    │   (ValueError)
    ├── ModelLoadError (ValueError)    a model location that cannot be loaded
    └── UsageError                     the command line: a user mistake, reported as one line (exit 2)
        └── FlagError                  found while checking flags, before the process group exists

The ``ValueError`` bases keep ``except ValueError`` working for callers that predate this module.
``Interrupted`` (SIGINT / SIGTERM) derives from ``BaseException`` like ``KeyboardInterrupt``, and
``RunAborted`` wraps whatever stopped a run whose folder already exists (``paratAA.cli.runs``).
Warnings: ``PrecisionWarning`` (a tolerance below what the network's precision can deliver) and
``UnconvergedWarning`` (``sample(pipe)`` returning images of an unfinished solve).
"""

from __future__ import annotations

import signal
from pathlib import Path

__all__ = ["FlagError", "Interrupted", "ModelLoadError", "NonFiniteError", "OptionError", "ParaTAAError",
           "PrecisionWarning", "RunAborted", "ScheduleError", "UnconvergedWarning", "UnsupportedPipelineError",
           "UsageError", "first_line"]


class ParaTAAError(Exception):
    """Base class of every exception this package raises on purpose."""


class NonFiniteError(ParaTAAError, RuntimeError):
    """NaN or inf in the network's output or in the solver's state; the solve stops instead of returning garbage."""


class OptionError(ParaTAAError, ValueError):
    """A solver option out of range; ``option`` is its field name (the scripts name the flag instead)."""

    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


class ScheduleError(ParaTAAError, ValueError):
    """The scheduler's configuration cannot be written as the affine recurrence of ``paratAA.schedule``."""


class UnsupportedPipelineError(ParaTAAError, ValueError):
    """A pipeline, scheduler or pipeline argument that ``paratAA.pipelines.sample`` cannot run."""


class ModelLoadError(ParaTAAError, ValueError):
    """A model path or hub id that cannot be loaded; the message names the argument and the location."""


class UsageError(ParaTAAError):
    """A user mistake on the command line: reported as one line naming the flag, exit status 2."""


class FlagError(UsageError):
    """A usage error found while checking flags, before the process group exists (the first process to
    find it prints it: ``paratAA.cli.process.is_reporting_process``)."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM arrived; like ``KeyboardInterrupt``, not an ``Exception``."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class RunAborted(ParaTAAError):
    """A run stopped after its folder was created; its ``summary.json`` is marked ``status``.

    Attributes:
        cause: what stopped it (``Interrupted``, ``NonFiniteError``, ...).
        folder: the run folder.
        status: ``"interrupted"`` or ``"failed"``.
    """

    def __init__(self, cause: BaseException, folder: Path, status: str):
        super().__init__(f"{status}: {cause!r}")
        self.cause, self.folder, self.status = cause, folder, status


class PrecisionWarning(UserWarning):
    """Explicit tolerances below the residual floor of a half-precision network (``paratAA.precision``)."""


class UnconvergedWarning(UserWarning):
    """``sample(pipe)`` returns images of a solve that did not finish (``max_iters``) or that finished by the
    safeguard alone (one step per iteration: sequential sampling)."""


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message, for one-line reports; empty message: ``default``, else
    the exception's type name."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    return type(error).__name__ if default is None else default
