"""Parallel solve of a sampler's trajectory: FP, FP+ and ParaTAA (Tang et al., ICML 2024).

The trajectory ``x[0..T]`` of a sampler with ``T`` steps (index convention in
``paratAA.schedule``) is the unique solution of the triangular system ``x[i] = F_i(x[i+1])``.
Each iteration

1. evaluates the network once per window step, for every unfinished sample, in one batched call
   of ``eps_fn`` (the only place the network is called);
2. tests every window step on its first-order residual ``r_i = F_i(X) - x[i]`` against the
   tolerance ``tau_i = max(tol1, tol2 * sigma_i)``: when ``rms(r_i) <= tau_i`` on every window step
   the sample is done (after this update); otherwise i* is the highest step not yet within the
   stricter freezing bound ``freeze_factor * tau_i`` (a step accepted at ``tau_i`` would carry its
   residual, amplified, into x[0]; one more update of it costs no extra iteration while lower steps
   still converge);
3. updates the window with the order-K residual ``R_i = F^K_i(X) - x[i]``: the plain update
   ``x_i + R_i`` at and above i* (the safeguard: x[i*] is then final), Triangular Anderson
   Acceleration below it (``memory_size >= 2``);
4. moves the frontier to i* (or to the window bottom when the sample is done) and lets new steps
   into the window, initialised as a copy of the lowest initialised latent. When some of the steps
   made final were accepted only within a half-precision network's residual floor
   (``paratAA.precision``), all of them form a *settling block*: the next iteration evaluates them
   once more and updates them with the window, by the same map over both (``SlidingWindow``'s
   ``updated_bounds``; the block takes the plain update). Such steps are accepted at their first dip
   below the floor, often while still converging, and the lowest of them carries the error of all;
   one more update removes most of it at the cost of rows, not iterations: only the window's steps
   decide the frontier and the stop. The steps made final in an iteration that settled a block
   form the next block too: their input moved with the block, and they read that change through
   the map, so they are exact only up to the map's error on it, until their own settling update.
   Benchmarks/RESULTS.md, section 17.

FP is ``order=1, memory_size=1``; FP+ is ``order>1, memory_size=1``; ParaTAA is
``memory_size>=2``. Since the frontier drops by at least one per iteration, no sample needs more
than ``T`` iterations, the cost of sequential sampling. All solver state is float64.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Iterator

import torch

from paratAA.anderson import TriangularAnderson
from paratAA.batch import BatchSolver, EpsFn, IterationRecord, SampleStrategy, SolveResult
from paratAA.equations import (
    carried_map,
    first_order_residual,
    increment_map,
    order_k_map,
    rms,
    secant_carry,
    step_tolerance,
)
from paratAA.errors import PrecisionWarning
from paratAA.memory import check_solve_fits
from paratAA.options import AUTO_WINDOW, PAPER, RECOMMENDED, SolverOptions, merged_options
from paratAA.precision import HALF_PRECISION, FloorProbe, floor_warning
from paratAA.schedule import Schedule
from paratAA.validation import NonFiniteError, check_callable, checked_output, require_int, validate_noise

__all__ = ["EpsFn", "IterationRecord", "NonFiniteError", "PAPER", "RECOMMENDED", "SolveResult", "Solver",
           "SolverOptions", "solve", "sequential"]


def updated_steps(settings: SolverOptions, num_steps: int) -> int:
    """The most steps one iteration updates per sample: the window, and with a half-precision floor
    in use also a settling block of at most the window's size above it (module docstring, step 4)."""
    settles = settings.network_dtype in HALF_PRECISION and settings.precision_floor
    return min(2 * settings.window_size, num_steps) if settles else settings.window_size


class _SampleSolver(SampleStrategy):
    """ParaTAA's update of one sample's window: order-K map, TAA below the highest unconverged step."""

    def __init__(self, x: torch.Tensor, z: torch.Tensor, schedule: Schedule, settings: SolverOptions,
                 frontier: int, initialized_from: int):
        self.settings = settings
        self._slots = updated_steps(settings, schedule.num_steps)  # step i's history lives in slot i % _slots
        self.anderson = (TriangularAnderson(self._slots, tuple(x.shape[1:]), settings.memory_size,
                                            settings.anderson_lambda, x.device)
                         if settings.memory_size >= 2 else None)
        if settings.map_form == "secant":  # each step's last input and output
            self._last_in = torch.zeros((self._slots, *x.shape[1:]), dtype=x.dtype, device=x.device)
            self._last_out = torch.zeros_like(self._last_in)
            self._has_last = torch.zeros(self._slots, dtype=torch.bool, device=x.device)
        super().__init__(x, z, schedule, settings.window_size, frontier, initialized_from, settings.init)

    def update(self, out: torch.Tensor) -> float:
        lo, hi = self.window.bounds
        top = self.window.updated_bounds[1]  # above hi: the settling block (module docstring, step 4)
        s, cfg = self.schedule, self.settings
        x_updated, x_above = self.x[lo:top], self.x[lo + 1:top + 1]
        a = s.a[lo:top]
        g = self.step_offsets(out)

        n = hi - lo  # the window's steps decide; a settling block's are only updated
        rho = rms(first_order_residual(x_updated[:n], x_above[:n], a[:n], g[:n]))
        tolerance = step_tolerance(s.sigma[lo:hi], cfg.tol1, cfg.tol2)
        within_floor = (rho <= self.floor[lo:hi] if self.floor is not None and cfg.precision_floor
                        else torch.zeros_like(rho, dtype=torch.bool))
        if bool(((rho <= tolerance) | within_floor).all()):  # the sample is done: every step final
            final_by_tolerance, highest_unconverged = rho <= tolerance, None
        else:  # only steps within the stricter freezing bound become final (module docstring, step 2)
            final_by_tolerance = rho <= cfg.freeze_factor * tolerance
            unconverged = torch.nonzero(~(final_by_tolerance | within_floor)).flatten()
            highest_unconverged = int(unconverged.max())

        self.remember_denoised(out)
        order = min(cfg.order, top - lo)
        if cfg.map_form == "secant":
            carry = self._secant_carry(lo, top, x_above, out)
            residual = carried_map(x_above, a, g, order, carry) - x_updated
        else:
            carry = a if cfg.map_form == "affine" else torch.ones_like(a)
            residual = (order_k_map if cfg.map_form == "affine" else increment_map)(x_above, a, g, order) - x_updated
        if self.anderson is not None and highest_unconverged is not None:
            # How a change of G_{i*} = x[i*] + R[i*] reaches G_i below it (full order): the carry product.
            carried = carry if cfg.reanchor else None
            new = self.anderson.update(lo, top, x_updated, residual, highest_unconverged, reanchor_a=carried)
        else:
            new = x_updated + residual
        self.x[lo:top] = new
        first_final = 0 if highest_unconverged is None else highest_unconverged + 1  # window-local
        by_floor = int((within_floor & ~final_by_tolerance)[first_final:].sum())
        self.advance(lo if highest_unconverged is None else lo + highest_unconverged,
                     by_safeguard=int(highest_unconverged is not None), by_floor=by_floor,
                     settle=by_floor > 0 or top > hi)  # module docstring, step 4
        return float(rho.max())

    def _secant_carry(self, lo: int, hi: int, x_above: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The secant form's carry factors; remembers this iteration's inputs and outputs."""
        slots = torch.arange(lo, hi, device=out.device) % self._slots
        carry = secant_carry(self.schedule.a[lo:hi], self.schedule.b[lo:hi], x_above - self._last_in[slots],
                             out - self._last_out[slots], self._has_last[slots])
        self._last_in[slots], self._last_out[slots], self._has_last[slots] = x_above, out, True
        return carry

    def _joined(self, steps: range) -> None:
        if self.anderson is not None:
            self.anderson.forget(steps.start, steps.stop)
        if self.settings.map_form == "secant":
            self._has_last[torch.arange(steps.start, steps.stop) % self._slots] = False


class Solver(BatchSolver):
    """Iterate a parallel solve one batched network call at a time.

    Arguments are those of ``solve``. ``iterate()`` yields one ``IterationRecord`` per iteration;
    ``result()`` returns the ``SolveResult`` so far. ``settings`` are the options in force
    (``SolverOptions.resolved``: window capped at T, order a number).
    """

    def __init__(self, eps_fn: EpsFn, schedule: Schedule, noise: torch.Tensor, options: SolverOptions | None = None,
                 *, init_trajectory: torch.Tensor | None = None, variation_steps: int | None = None,
                 **option_values: Any):
        validate_noise(schedule, noise)
        check_callable("eps_fn", eps_fn)
        settings = merged_options(options, **option_values).resolved(schedule.num_steps)
        if settings.window_size == AUTO_WINDOW:
            raise ValueError("window_size='auto' is planned by paratAA.solve (paratAA.planner.solve_auto); "
                             "Solver needs a number")
        max_iters = settings.max_iters
        _validate_run(schedule, noise, init_trajectory, variation_steps)
        check_solve_fits(noise, settings.window_size, settings.memory_size, warm_start=init_trajectory is not None,
                         multistep=schedule.is_multistep, updated_steps=updated_steps(settings, schedule.num_steps))
        num_steps = schedule.num_steps
        schedule = schedule.to(noise.device)
        noise = noise.to(torch.float64)
        if init_trajectory is None:
            trajectory = torch.zeros_like(noise)
            frontier, initialized_from = num_steps, num_steps
        else:
            trajectory = init_trajectory.to(device=noise.device, dtype=torch.float64).clone()
            frontier, initialized_from = (num_steps if variation_steps is None else int(variation_steps)), 0
        trajectory[:, num_steps] = noise[:, num_steps]
        samples = [_SampleSolver(trajectory[k], noise[k], schedule, settings, frontier, initialized_from)
                   for k in range(noise.shape[0])]
        probe = FloorProbe(settings.network_dtype, schedule.b) if settings.network_dtype in HALF_PRECISION else None
        super().__init__(eps_fn, trajectory, samples, max_iters, floor_probe=probe)
        self.schedule, self.noise, self.settings = schedule, noise, settings

    def iterate(self) -> Iterator[IterationRecord]:
        """As ``BatchSolver.iterate``; after the first iteration of a half-precision network, a
        ``paratAA.errors.PrecisionWarning`` when explicit tolerances lie below its measured floor."""
        for record in super().iterate():
            if record.iteration == 1 and self.floor_probe is not None and not self.settings.precision_floor:
                floors = self.floors()
                message = None if floors is None else floor_warning(
                    floors, self.schedule.sigma, self.settings.tol1, self.settings.tol2, self.settings.network_dtype)
                if message is not None:
                    warnings.warn(message, PrecisionWarning, stacklevel=2)
            yield record


def solve(eps_fn: EpsFn, schedule: Schedule, noise: torch.Tensor, options: SolverOptions | None = None, *,
          init_trajectory: torch.Tensor | None = None, variation_steps: int | None = None,
          callback: Callable[[IterationRecord], None] | None = None, **option_values: Any) -> SolveResult:
    """Solve B sampling trajectories in parallel (FP, FP+ or ParaTAA; see the module docstring).

    The method's options come in one ``SolverOptions`` (``paratAA.options``); left out, the
    recommended configuration (``RECOMMENDED``), chosen from the matched-accuracy benchmarks
    (benchmarks/RESULTS.md); ``PAPER`` holds the reference scripts'. Any option can also be given
    as a keyword argument (``solve(..., tol1=1e-3)``), which wins over ``options``; a keyword set
    to None keeps the value of ``options``.

    Args:
        eps_fn: the network, ``eps_fn(x, steps, samples) -> out`` (see ``EpsFn``).
        schedule: the sampler's coefficients (``Schedule.from_scheduler``).
        noise: ``(B, T+1, *latent)``: ``noise[:, T]`` is ``x[T]``, ``noise[:, i]`` the ``z_i`` of
            step ``i``. Its device is the solver's.
        options: the method (``SolverOptions``; default ``RECOMMENDED``). Its fields, also accepted
            as keyword arguments:
        window_size: steps evaluated per sample per iteration (``>= 1``; capped at T; default T), or
            ``"auto"``: measure the network's cost on this device (once per process) and take the
            window of least predicted wall-clock, or run the sequential sampler when no window is
            predicted to beat it, saying so in one ``SequentialChoiceWarning`` (``paratAA.planner``;
            the result's ``method``, ``plan`` and ``sequential_seconds`` tell which and why).
        order: K of the order-K equations, ``1 <= order <= window_size`` (default: the window size).
        memory_size: iterates kept per step for TAA; 1 disables acceleration.
        tol1, tol2: a step has converged when the RMS of its first-order residual is
            ``<= tol1`` or ``<= tol2 * sigma_i`` (default 1e-4 each, ``RECOMMENDED``). They bound
            residuals, not the final difference: that is roughly the accepted residuals added up,
            typically 2-3 times the tolerance with the default method, up to about 12 times on
            the benchmark rows (benchmarks/RESULTS.md, "What a tolerance means").
        max_iters: stop after this many iterations even if unconverged (None: run to the end).
        init_trajectory: ``(B, T+1, *latent)`` warm start: the starting iterate of every step.
        variation_steps: with ``init_trajectory``: re-solve only steps ``i < variation_steps``,
            keeping the others (default T: re-solve everything).
        anderson_lambda: TAA's regularisation lambda, ``> 0``.
        reanchor: an extension of the published method (off by default): below the highest
            unconverged step, TAA leaves out the change it would inherit from that step, which
            takes the plain update (see ``TriangularAnderson.update``). It removes the one-step
            lag of the frontier after a jump; the solution is unchanged.
        map_form: the form of the order-K equations (``paratAA.equations``): ``"affine"``, the
            paper's, ``"increment"``, a telescoping sum of step increments, or ``"secant"`` (an
            opt-in extension: each step's Jacobian guessed from its last two iterates); all have
            the same solution.
        init: how steps entering the window start (``paratAA.batch.SampleStrategy``): ``"copy"``
            of the lowest initialised latent (the paper's rule) or ``"denoised"`` (the sampler's
            steps with the latest predicted sample held fixed). Only the iterations change.
        callback: called with every ``IterationRecord`` as soon as it is made.

    Returns:
        The ``SolveResult``.

    Raises:
        ValueError: an argument is invalid (the message names it), or the solver's float64 state
            cannot fit the device's memory (``paratAA.memory``; checked before anything is allocated).
        NonFiniteError: the network returned NaN or inf, or the solver's state overflowed.
    """
    merged = merged_options(options, **option_values)
    if merged.window_size == AUTO_WINDOW:
        from paratAA.planner import solve_auto

        validate_noise(schedule, noise)
        check_callable("eps_fn", eps_fn)
        merged.resolved(schedule.num_steps)  # the other options' errors before any measuring
        return solve_auto(eps_fn, schedule, noise, merged, callback=callback, init_trajectory=init_trajectory,
                          variation_steps=variation_steps)
    solver = Solver(eps_fn, schedule, noise, merged, init_trajectory=init_trajectory, variation_steps=variation_steps)
    return solver.run(callback)


@torch.no_grad()
def sequential(eps_fn: EpsFn, schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """The sequential sampler: T network calls of batch B, one step after another.

    Args:
        eps_fn, schedule, noise: as for ``solve``.

    Returns:
        float64 ``(B, T+1, *latent)`` trajectory; ``[:, 0]`` are the samples.
    """
    validate_noise(schedule, noise)
    check_callable("eps_fn", eps_fn)
    schedule = schedule.to(noise.device)
    noise = noise.to(torch.float64)
    num_steps, batch = schedule.num_steps, noise.shape[0]
    x = torch.empty_like(noise)
    x[:, num_steps] = noise[:, num_steps]
    samples = torch.arange(batch, device=noise.device)
    earlier: list[tuple[torch.Tensor, torch.Tensor]] = []  # (x[i+1+l], out_{i+l}): a multistep sampler's levels
    for i in reversed(range(num_steps)):
        inputs = x[:, i + 1].clone()
        out = checked_output(eps_fn(inputs, torch.full_like(samples, i), samples), inputs, iteration=num_steps - i)
        x[:, i] = schedule.step(i, x[:, i + 1], out, noise[:, i], earlier)
        if schedule.num_levels:
            earlier = [(x[:, i + 1], out)] + earlier[:schedule.num_levels - 1]
    return x


def _validate_run(schedule: Schedule, noise: torch.Tensor, init_trajectory: torch.Tensor | None,
                  variation_steps: int | None) -> None:
    if init_trajectory is None:
        if variation_steps is not None:
            raise ValueError("variation_steps needs init_trajectory (a warm start)")
        return
    if not isinstance(init_trajectory, torch.Tensor) or init_trajectory.shape != noise.shape:
        got = tuple(init_trajectory.shape) if isinstance(init_trajectory, torch.Tensor) else type(init_trajectory).__name__
        raise ValueError(f"init_trajectory must have the shape of noise {tuple(noise.shape)}, got {got}")
    if not bool(torch.isfinite(init_trajectory).all()):
        raise ValueError("init_trajectory must be finite")
    if variation_steps is not None:
        require_int("variation_steps", variation_steps, 1, schedule.num_steps)
