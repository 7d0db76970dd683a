"""The one registry of sampling methods every benchmark runs: name -> how to run it on any problem.

A ``Method`` is a configuration of ``paratAA.solve`` (``kind="solve"``, its options) or one of the
baselines (``"paradigms"``, ``"parasolver"``: ``paratAA.baselines``), plus the tolerances a
matched-accuracy sweep tries. Every method runs the same way::

    result = METHODS["default"].run(eps_fn, schedule, noise, window, tol, dtype)   # a paratAA.SolveResult

``tol`` is tol1 = tol2 of the solve methods and the noise-relative tolerance of the baselines (None:
the method's out-of-the-box run, for ``out_of_box`` methods only). ``order=FULL_ORDER`` is the full order,
K = the run's window (``paratAA.solve`` resolves it). A benchmark that needs a variant (the paper's order
100, a third memory slot) derives it with ``Method.variant``, so that one configuration has one
definition. The sequential sampler is not a method here: every benchmark runs it once as the reference.

Names: ``FP`` (order 1, memory 1), ``FP+`` (full order, memory 1), ``ParaTAA paper m2`` / ``m3``
(the paper's affine equations, full order, new steps copied), ``ParaTAA inc m2`` (increment form),
``ParaTAA inc m2 denoised`` (the same, new steps from the denoised estimate), ``default`` (the
library's recommended method, ``paratAA.RECOMMENDED``), ``default m2`` (the same with Triangular
Anderson Acceleration, memory 2), ``default m2 f1`` (the recommended method before issue 14's change:
memory 2, steps final as soon as they meet the tolerance, ``freeze_factor=1``), ``ParaDiGMS`` and
``ParaSolver`` (the baselines).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from paratAA.options import FULL_ORDER, HALF_PRECISION

HALF = HALF_PRECISION  # the dtypes whose runs are measured against the float32 sequential sample
PSNR_CAP_DB = 100.0
# Sweeps, loose to tight: tol1 = tol2 for paratAA.solve; the noise-relative tolerance of ParaDiGMS and
# ParaSolver (their bounds are tolerance^2 * sigma^2 on a mean squared change).
SOLVE_TOLERANCES = (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6)
STRIDE_TOLERANCES = (0.5, 0.2, 0.1, 0.05, 0.02, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5)
BASELINES = {"paradigms": ("paratAA.baselines.paradigms", "solve_paradigms"),
             "parasolver": ("paratAA.baselines.parasolver", "solve_parasolver")}
PAPER_FORM = dict(map_form="affine", init="copy", freeze_factor=1.0)  # the paper's equations, initialisation, freezing


@dataclass(frozen=True)
class Method:
    """A sampler configuration and the tolerances its sweep tries.

    Attributes:
        name: the name tables and JSON use.
        kind: ``"solve"`` (``paratAA.solve``) or a key of ``BASELINES``.
        options: ``paratAA.solve`` keyword arguments; empty for baselines.
        tolerances: a sweep's tolerances, loose to tight.
        out_of_box: the library default's rules: a run with no tolerance is meaningful (the out-of-the-box
            run), and in half precision a sweep keeps the measured residual floor on (``precision_floor``).
    """

    name: str
    kind: str = "solve"
    options: Mapping[str, Any] = field(default_factory=dict)
    tolerances: tuple[float, ...] = SOLVE_TOLERANCES
    out_of_box: bool = False

    def variant(self, name: str, **options: Any) -> Method:
        """The same method with some options changed (solve methods only), under a new name."""
        if self.kind != "solve":
            raise ValueError(f"{self.name}: a baseline has no solver options to change")
        return dataclasses.replace(self, name=name, options={**self.options, **options})

    def run(self, eps_fn: Callable, schedule: Any, noise: torch.Tensor, window: int, tol: float | None,
            dtype: str | None = None, callback: Callable | None = None) -> Any:
        """Solve ``noise`` with this method; returns the ``paratAA.SolveResult``.

        Args:
            eps_fn, schedule, noise: the problem (``paratAA.solve``'s arguments).
            window: the window size.
            tol: tol1 = tol2 (solve) or the noise-relative tolerance (baselines); None: out of the box.
            dtype: the network's dtype name; half precision is passed to the solve as ``network_dtype``.
            callback: called with every ``paratAA.IterationRecord``.
        """
        if self.kind != "solve":
            module, function = BASELINES[self.kind]
            solver = getattr(importlib.import_module(module), function)
            tolerance = {} if tol is None else {"tolerance": tol}  # None: the baseline's own default
            return solver(eps_fn, schedule, noise, window_size=window, callback=callback, **tolerance)
        from paratAA import solve

        options = dict(self.options)
        half = dtype in HALF
        if half:
            options["network_dtype"] = dtype
        if tol is None:  # out of the box: no tolerance given (in half precision the floor is then on)
            return solve(eps_fn, schedule, noise, window_size=window, callback=callback, **options)
        if half and self.out_of_box:
            options["precision_floor"] = True
        with warnings.catch_warnings():  # explicit tolerances below a half-precision floor: measured, not news
            warnings.filterwarnings("ignore", message=r".*below the residual floor")
            return solve(eps_fn, schedule, noise, window_size=window, tol1=tol, tol2=tol, callback=callback,
                         **options)


def _baseline(name: str, kind: str) -> Method:
    return Method(name, kind=kind, tolerances=STRIDE_TOLERANCES)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("FP", options=dict(order=1, memory_size=1, **PAPER_FORM)),
    Method("FP+", options=dict(order=FULL_ORDER, memory_size=1, **PAPER_FORM)),
    Method("ParaTAA paper m2", options=dict(order=FULL_ORDER, memory_size=2, **PAPER_FORM)),
    Method("ParaTAA paper m3", options=dict(order=FULL_ORDER, memory_size=3, **PAPER_FORM)),
    Method("ParaTAA inc m2", options=dict(order=FULL_ORDER, memory_size=2, map_form="increment", init="copy")),
    Method("ParaTAA inc m2 denoised", options=dict(order=FULL_ORDER, memory_size=2, map_form="increment", init="denoised")),
    Method("default", out_of_box=True),
    Method("default m2", options=dict(memory_size=2), out_of_box=True),
    Method("default m2 f1", options=dict(memory_size=2, freeze_factor=1.0), out_of_box=True),
    _baseline("ParaDiGMS", "paradigms"),
    _baseline("ParaSolver", "parasolver"),
)}


def method(name: str) -> Method:
    """The registered method ``name``; a ``ValueError`` listing the names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}") from None


def latent_metrics(samples: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Largest absolute difference and latent PSNR (dB, capped at 100) against the sequential sample."""
    samples, reference = samples.double().cpu(), reference.double().cpu()
    mse = float((samples - reference).pow(2).mean())
    peak = float(reference.max() - reference.min())
    psnr = PSNR_CAP_DB if mse == 0 else min(PSNR_CAP_DB, 10 * math.log10(peak ** 2 / mse))
    return {"max_abs_diff": float((samples - reference).abs().max()), "psnr_db": psnr}


def residual_trace(records: list) -> list[float]:
    """Per iteration, the largest first-order RMS residual over the batch (4 significant digits)."""
    trace = []
    for record in records:
        values = [v for v in record.max_residual if v is not None]
        trace.append(float(f"{max(values):.4g}") if values else 0.0)
    return trace


def run_outcome(method: Method, eps_fn: Callable, schedule: Any, noise: torch.Tensor, window: int,
                tol: float | None, dtype: str | None = None) -> dict[str, Any]:
    """``method.run`` reduced to what the side-by-side tables keep: iterations, evaluations, seconds,
    converged, the residual trace and the samples."""
    result = method.run(eps_fn, schedule, noise, window, tol, dtype)
    return dict(iterations=result.iterations, evaluations=result.evaluations, seconds=result.seconds,
                converged=result.converged, residuals=residual_trace(result.records), samples=result.samples)
