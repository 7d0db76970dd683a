"""The method's options in one object: ``SolverOptions``, with the recommended and the paper's presets.

One frozen dataclass holds every option of the parallel solve's *method* (window, order, memory,
map form, initialisation, tolerances, ...). ``paratAA.solve``, ``paratAA.Solver``,
``paratAA.pipelines.sample`` and ``prepare`` take it as ``options=`` (keyword arguments of the
same names still work and win over it), the entry scripts generate their flags from its fields
(``paratAA.cli.flags``), and its ``repr`` is what a run's ``config.json`` records. Adding an
option is one field here (with its ``help``) plus its use in the solver and its tests.

This module is also the one home of the option vocabularies (map forms, initialisation rules)
and is importable without torch: the entry scripts read it before anything heavy loads.

``RECOMMENDED`` is what ``paratAA.solve`` runs with nothing given, chosen from the matched-accuracy
benchmarks (``benchmarks/RESULTS.md``, "Matched accuracy" and section 14, batches of 16):

- the order-K equations in secant form with K = the window (``map_form="secant"``: the increment
  form's guess of each step's Jacobian, 1, refined by the network's secant slope),
- no Anderson memory (``memory_size`` left out: 1) for a float32 or float64 network: with the secant
  form, whose map changes every iteration (its slopes are re-estimated), Triangular Anderson
  Acceleration's history mixes those changes into its differences; at B = 16 it set the batch's count
  through a few slow samples (the Gaussian mixture: 18 against 12 iterations to 1e-3) and was never
  ahead by more than one iteration. For a float16 or bfloat16 ``network_dtype`` memory 2
  (``HALF_PRECISION_MEMORY``): there residuals stall at the floor and TAA's least squares over the
  noisy iterates wins (digits DDIM-50, bfloat16, B = 16: 17 against 27 iterations). ``PAPER`` keeps 2,
- steps become final only within a tenth of the tolerance (``freeze_factor=0.1``), while the sample
  stops as soon as its whole window is within the tolerance: about the same iterations at window T
  and a result 8-11 times closer to the sequential sample (one or two more iterations with a sliding
  window, for a result about 7 times closer),
- steps entering the window initialised with the predicted sample held fixed (``init="denoised"``),
- the window is the whole trajectory (``window_size`` = T),
- ``tol1 = tol2 = 1e-4`` (the fields read None: "the default rule"): the final difference from the
  sequential sample is about the residuals of the steps when they became final, carried down and
  added up; 1e-4 lands within a few 1e-4 of it (largest entry) on the benchmark problems;
- in half precision (``network_dtype`` float16 or bfloat16, which ``sample(pipe)`` and the scripts
  set) the default tolerances are raised to the network's measured residual floor
  (``precision_floor``, ``paratAA.precision``): below it no residual can settle.

``PAPER`` is the reference scripts' method (Tang et al. 2024): the paper's affine order-K
equations, memory 2, new steps copied from the lowest latent, tolerances 1e-3, steps final as soon as
they meet them (``freeze_factor=1``), window 100 (capped at T); the scripts' orders (DiT 100, SD 20)
are theirs (``--paper`` in the entry scripts).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable

from paratAA.arguments import is_bool, require_bool, require_int, require_real
from paratAA.errors import OptionError

__all__ = ["AUTO_WINDOW", "DEFAULT_TOLERANCE", "FULL_ORDER", "HALF_PRECISION", "HALF_PRECISION_MEMORY", "INIT_RULES",
           "MAP_FORMS", "NETWORK_DTYPES",
           "OptionError", "PAPER", "PAPER_WINDOW", "RECOMMENDED", "SolverOptions", "merged_options",
           "option_names"]

FULL_ORDER = "window"  # order = the window size: every unknown anchored on the window's top
AUTO_WINDOW = "auto"  # window_size planned for the device by paratAA.planner (or the sequential sampler)
MAP_FORMS = ("affine", "increment", "secant")  # the forms of the order-K equations (paratAA.equations)
INIT_RULES = ("copy", "denoised")  # how steps joining a window start (paratAA.batch.SampleStrategy)
PAPER_WINDOW = 100  # the reference scripts' --window_size
DEFAULT_TOLERANCE = 1e-4  # tol1 and tol2 left out (module docstring)
HALF_PRECISION_MEMORY = 2  # memory_size left out with a float16 / bfloat16 network (module docstring)
NETWORK_DTYPES = ("float64", "float32", "float16", "bfloat16")  # network_dtype's names
HALF_PRECISION = ("float16", "bfloat16")  # the half-precision ones: a floor is measured, memory_size's own default


def _help(text: str, *, flag: bool = True) -> dict[str, Any]:
    """Field metadata: the option's one-line meaning (used by docstrings' readers and the scripts' --help)."""
    return {"help": text, "flag": flag}


@dataclass(frozen=True)
class SolverOptions:
    """Every option of the parallel solve's method (module docstring); ``None`` means "the default rule".

    Attributes: see each field's ``help`` (``SolverOptions.help(name)``).
    """

    window_size: int | str | None = field(default=None, metadata=_help(
        "steps evaluated in parallel per sample and iteration, >= 1, capped at T (default: T; sample(pipe): "
        "'auto'); 'auto': the window of least predicted wall-clock on this device, or the sequential sampler "
        "when none is predicted to beat it (paratAA.planner: measures the network's cost once per process)"))
    order: int | str = field(default=FULL_ORDER, metadata=_help(
        "K of the order-K equations, 1 <= order <= window_size (default: the window size)"))
    memory_size: int | None = field(default=None, metadata=_help(
        "iterates kept per step for Triangular Anderson Acceleration; 1 turns it off (plain fixed-point iteration; "
        "default: 1, and 2 for a float16 or bfloat16 network_dtype)"))
    map_form: str = field(default="secant", metadata=_help(
        "form of the order-K equations: 'affine' (the paper's), 'increment' (a telescoping sum of step "
        "increments) or 'secant' (each step's Jacobian guessed from its last two iterates); same solution"))
    init: str = field(default="denoised", metadata=_help(
        "how steps entering the window start: 'copy' of the lowest latent (the paper's) or 'denoised' (the "
        "sampler's steps with the latest predicted sample held fixed); same solution"))
    tol1: float | None = field(default=None, metadata=_help(
        "a step has converged when the RMS of its first-order residual is <= tol1 ... (default: 1e-4, raised to "
        "the network's residual floor in half precision)"))
    tol2: float | None = field(default=None, metadata=_help(
        "... or <= tol2 * the step's eta=1 noise std (default: 1e-4, like tol1)"))
    freeze_factor: float = field(default=0.1, metadata=_help(
        "a step becomes final (no longer updated) only once its residual is within freeze_factor x the "
        "tolerance, in (0, 1]; the sample stops as soon as every step of its window is within the tolerance "
        "(1: the paper's rule, steps final as soon as they meet it)"))
    anderson_lambda: float = field(default=1e-3, metadata=_help(
        "regularisation lambda of the Anderson least squares, > 0"))
    reanchor: bool = field(default=False, metadata=_help(
        "extension, off by default: re-anchor the accelerated steps on the plain update of the highest "
        "unconverged step (removes the frontier's one-step lag after a jump; same solution)"))
    max_iters: int | None = field(default=None, metadata=_help(
        "stop after this many iterations even if unconverged (None: run to the end; the scripts' --max_steps)",
        flag=False))
    network_dtype: str | None = field(default=None, metadata=_help(
        "the precision the network runs in ('float32', 'float16', 'bfloat16' or a torch dtype; None: unknown, "
        "taken as exact). In half precision the solve measures the network's residual floor (paratAA.precision); "
        "sample(pipe) and the scripts set it", flag=False))
    precision_floor: bool | None = field(default=None, metadata=_help(
        "count a step as converged when its residual is within the network's measured floor, whatever the "
        "tolerance (None: when tol1 and tol2 are left at their defaults; a tolerance given explicitly wins, with a "
        "warning when it is below the floor)", flag=False))

    @staticmethod
    def help(name: str) -> str:
        """The one-line meaning of option ``name``."""
        return _FIELDS[name].metadata["help"]

    def replace(self, **changes: Any) -> "SolverOptions":
        """A copy with ``changes`` (those that are None are ignored: None means "not given").

        Raises:
            OptionError: an unknown option name.
        """
        unknown = sorted(set(changes) - set(_FIELDS))
        if unknown:
            raise OptionError(unknown[0], f"unknown solver option {unknown[0]!r}; the options are {option_names()}")
        given = {name: value for name, value in changes.items() if value is not None}
        return replace(self, **given) if given else self

    def as_dict(self) -> dict[str, Any]:
        """The options as a JSON-ready dict."""
        return asdict(self)

    def resolved(self, num_steps: int, flag: Callable[[str], str] = str) -> "SolverOptions":
        """These options for a sampler of ``num_steps`` steps: checked, window capped at T, order made a number.

        ``window_size="auto"`` stays "auto" (``paratAA.planner`` resolves it when the solve starts,
        from the device's measured cost); the order then stays as given.

        Args:
            num_steps: T.
            flag: how an error message names an option (the scripts pass ``lambda n: "--" + n``).

        Raises:
            OptionError: an option out of range, naming it.
        """
        window = num_steps if self.window_size is None else self.window_size
        auto = window == AUTO_WINDOW  # left for paratAA.planner to resolve (it knows the device)
        if not auto:
            _checked("window_size", require_int, flag, window)
        order = (num_steps if auto else window) if self.order == FULL_ORDER else self.order
        _checked("order", require_int, flag, order)
        if not auto and order > window:
            raise OptionError("order", f"{flag('order')} ({order}) must not exceed {flag('window_size')} ({window})")
        network_dtype = _network_dtype(flag, self.network_dtype)
        memory_size = self.memory_size
        if memory_size is None:  # the default rule (module docstring)
            memory_size = HALF_PRECISION_MEMORY if network_dtype in HALF_PRECISION else 1
        _checked("memory_size", require_int, flag, memory_size)
        tolerances = {name: DEFAULT_TOLERANCE if getattr(self, name) is None else getattr(self, name)
                      for name in ("tol1", "tol2")}
        for name, value in tolerances.items():
            _checked(name, require_real, flag, value)
        _checked("freeze_factor", require_real, flag, self.freeze_factor, strict=True)
        if self.freeze_factor > 1:
            raise OptionError("freeze_factor", f"{flag('freeze_factor')} must be in (0, 1], got {self.freeze_factor!r}")
        _checked("anderson_lambda", require_real, flag, self.anderson_lambda, strict=True)
        _checked("reanchor", require_bool, flag, self.reanchor)
        for name, choices in (("map_form", MAP_FORMS), ("init", INIT_RULES)):
            if getattr(self, name) not in choices:
                raise OptionError(name, f"{flag(name)} must be one of {choices}, got {getattr(self, name)!r}")
        if self.max_iters is not None:
            _checked("max_iters", require_int, flag, self.max_iters)
        floor = self.precision_floor
        if floor is None:
            floor = self.tol1 is None and self.tol2 is None
        elif not is_bool(floor):
            raise OptionError("precision_floor", f"{flag('precision_floor')} must be True, False or None, got {floor!r}")
        # A window larger than T is capped at T; the order K only ever acts up to the window's length.
        # With "auto", the order stays as given (the planner caps it at the window it picks).
        return replace(self, window_size=AUTO_WINDOW if auto else int(min(window, num_steps)),
                       order=self.order if auto and self.order == FULL_ORDER else int(min(order, num_steps)),
                       memory_size=int(memory_size), tol1=float(tolerances["tol1"]),
                       tol2=float(tolerances["tol2"]), freeze_factor=float(self.freeze_factor),
                       anderson_lambda=float(self.anderson_lambda),
                       reanchor=bool(self.reanchor), network_dtype=network_dtype, precision_floor=bool(floor))


_FIELDS = {f.name: f for f in fields(SolverOptions)}


def merged_options(options: SolverOptions | None, **keywords: Any) -> SolverOptions:
    """``options`` (default ``RECOMMENDED``) with the keyword arguments of the same names that are not None:
    how ``solve``, ``Solver``, ``sample`` and ``prepare`` combine their ``options=`` and keywords.

    Raises:
        ValueError: ``options`` is not a ``SolverOptions``; OptionError: an unknown option name.
    """
    if options is not None and not isinstance(options, SolverOptions):
        raise ValueError(f"options must be a paratAA.SolverOptions, got {type(options).__name__}")
    return (options or RECOMMENDED).replace(**keywords)


def option_names() -> tuple[str, ...]:
    """The names of every solver option, in declaration order."""
    return tuple(_FIELDS)


def _checked(option: str, check: Callable[..., None], flag: Callable[[str], str], value: object,
             **bounds: Any) -> None:
    """``check`` (``paratAA.arguments``) of one option, its error an ``OptionError`` naming it as ``flag`` does."""
    try:
        check(flag(option), value, **bounds)
    except ValueError as error:
        raise OptionError(option, str(error)) from None


def _network_dtype(flag: Callable[[str], str], dtype: object) -> str | None:
    """The dtype's name (``torch.float16`` -> ``"float16"``), checked."""
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    if name not in NETWORK_DTYPES:
        raise OptionError("network_dtype", f"{flag('network_dtype')} must be one of {NETWORK_DTYPES} or a torch "
                                           f"dtype of those, got {dtype!r}")
    return name


RECOMMENDED = SolverOptions()
PAPER = SolverOptions(window_size=PAPER_WINDOW, memory_size=2, map_form="affine", init="copy", tol1=1e-3,
                      tol2=1e-3, freeze_factor=1.0)
# RECOMMENDED's tolerances read as None ("the default rule": 1e-4, raised to a half-precision network's floor).
