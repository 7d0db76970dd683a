"""Multistep samplers as the triangular recurrence of ``paratAA.schedule``: DPM-Solver++
(``DPMSolverMultistepScheduler``, the "DPM++ 2M" of SD front ends) and UniPC
(``UniPCMultistepScheduler``, Wan's default).

Step ``i`` reads earlier steps' data predictions too, made from ``x[i+1+l]`` and ``out_{i+l}``
(the schedule's ``levels``): one level for DPM++ 2M, ``solver_order`` levels for UniPC with its
corrector (the model is written down in docs/unipc.md; ``_from_unipc`` below).

DPM-Solver++: with ``lambda = log(alpha / sigma)`` of the variance-preserving noise levels, step
``k`` of the scheduler (our step ``i = T - 1 - k``) from ``s0 = sigmas[k]`` to ``t = sigmas[k+1]``,
``h = lambda_t - lambda_s0``, data predictions ``D_i = p x[i+1] + q out_i``:

    first order:  x[i] = (sigma_t / sigma_s0) x[i+1] + E D_i,      E = alpha_t (1 - exp(-h))
    2M midpoint:  ... + (E / 2) (D_i - D_{i+1}) / r,                r = h_prev / h
    2M heun:      ... + G (D_i - D_{i+1}) / r,                      G = alpha_t ((exp(-h) - 1) / h + 1)

with ``h_prev = lambda_s0 - lambda_s1`` of the previous step (diffusers' ``D1``). Refused by name:
the SDE variants, ``solver_order`` 3, thresholding, a learned variance, flow sigmas, ``eta != 0``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from paratAA.errors import ScheduleError
from paratAA.schedule.core import PREDICTION_TYPES, Schedule, as_x_and_out, posterior_variance, verify_step_loop
from paratAA.schedule.sigma import flow_scale, scaled_posterior_std, scheduler_sigmas

_DPM_MULTISTEP, _UNIPC = "DPMSolverMultistepScheduler", "UniPCMultistepScheduler"
SCHEDULERS = (_DPM_MULTISTEP, _UNIPC)


def from_scheduler(cls: type, scheduler: Any, *, eta: float, verify: bool, s_churn: float = 0.0) -> Schedule:
    """``Schedule.from_scheduler`` for ``DPMSolverMultistepScheduler`` (DPM-Solver++, order 1 or 2)
    and ``UniPCMultistepScheduler``."""
    if type(scheduler).__name__ == _UNIPC:
        return _from_unipc(cls, scheduler, eta, verify)
    config = scheduler.config
    if eta != 0:
        raise ScheduleError(f"eta: {_DPM_MULTISTEP} with algorithm_type='dpmsolver++' is deterministic, "
                            f"eta must be 0 (got {eta!r})")
    unsupported = [
        (config.algorithm_type != "dpmsolver++",
         f"algorithm_type={config.algorithm_type!r} (the SDE variants draw noise inside step(); use 'dpmsolver++')"),
        (config.solver_order not in (1, 2), f"solver_order={config.solver_order} (use 1 or 2: DPM++ 2M)"),
        (config.solver_type not in ("midpoint", "heun"), f"solver_type={config.solver_type!r}"),
        (bool(getattr(config, "thresholding", False)), "thresholding=True (dynamic thresholding is not affine)"),
        # step() keeps only 3 channels of a learned-variance output; any other value is ignored there.
        (getattr(config, "variance_type", None) in ("learned", "learned_range"),
         f"variance_type={getattr(config, 'variance_type', None)!r} (split the learned variance off first)"),
        (bool(getattr(config, "use_flow_sigmas", False)), "use_flow_sigmas=True"),
        (config.prediction_type not in PREDICTION_TYPES, f"prediction_type={config.prediction_type!r}"),
    ]
    for refused, setting in unsupported:
        if refused:
            raise ScheduleError(f"scheduler: {_DPM_MULTISTEP} with {setting} is not supported")
    num_steps = len(scheduler.timesteps)
    sigmas = scheduler_sigmas(scheduler)  # T + 1 VE noise levels, noisiest first
    alpha = 1 / (sigmas**2 + 1).sqrt()
    noise = sigmas * alpha
    # lambda = log(alpha / sigma) = -log(s) of the VE level s; +inf at s = 0 (the last step's target)
    lam = torch.where(sigmas > 0, -sigmas.clamp(min=1e-300).log(), torch.full_like(sigmas, math.inf))
    abar = alpha**2
    (p, q), _ = as_x_and_out(abar[:-1], config.prediction_type)  # D_k = p x + q out at sigmas[k]
    keep, d0, d1 = (torch.zeros(num_steps, dtype=torch.float64) for _ in range(3))  # per scheduler step k
    for k in range(num_steps):
        h = lam[k + 1] - lam[k]
        decay = torch.exp(-h)
        keep[k] = noise[k + 1] / noise[k]
        e = alpha[k + 1] * (1 - decay)
        last = k == num_steps - 1 and (config.euler_at_final or (config.lower_order_final and num_steps < 15)
                                       or config.final_sigmas_type == "zero")
        if config.solver_order == 1 or k == 0 or last:
            d0[k] = e
            continue
        r = (lam[k] - lam[k - 1]) / h
        if config.solver_type == "midpoint":
            weight = e / 2
        else:
            weight = alpha[k + 1] * ((decay - 1) / h + 1)
        d0[k], d1[k] = e + weight / r, -weight / r
    # Scheduler step k is our step i = T-1-k; its previous data prediction is our step i + 1's.
    flip = lambda t: t.flip(0)  # noqa: E731
    a, b = flip(keep + d0 * p), flip(d0 * q)
    p_prev, q_prev = torch.cat([torch.zeros(1, dtype=torch.float64), p[:-1]]), torch.cat(
        [torch.zeros(1, dtype=torch.float64), q[:-1]])
    a2, b2 = flip(d1 * p_prev), flip(d1 * q_prev)
    abar_step, abar_next = flip(abar[:-1]), flip(abar[1:])
    sigma = posterior_variance(abar_step, torch.maximum(abar_next, abar_step)).clamp(min=0).sqrt()
    result = cls(a=a, b=b, c=torch.zeros_like(a), sigma=sigma, timesteps=scheduler.timesteps.detach().cpu().flip(0),
                 alphas_cumprod=abar_step, prediction_type=config.prediction_type, eta=0.0, levels=((a2, b2),))
    if verify:
        verify_step_loop(result, scheduler)
    return result


# ------------------------------------------------------------------------------------------- UniPC
_UNIPC_PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow_prediction")


def _from_unipc(cls: type, scheduler: Any, eta: float, verify: bool) -> Schedule:
    """``Schedule.from_scheduler`` for ``UniPCMultistepScheduler`` (docs/unipc.md).

    Scheduler step ``k`` (our ``i = T - 1 - k``) is evaluated at the predictor's output ``y_k =
    x[i+1]``; its data prediction ``m_k = p_k y_k + q_k out_i`` (``predict_x0=False``: its noise
    prediction). The corrected sample ``c_k = y_k + (corrector - predictor) terms`` only starts the
    next predictor, so ``y_{k+1} = lead_k y_k + sum_j W_k[j] m_{k-j}``, ``j <= solver_order``.
    """
    config = scheduler.config
    prediction = config.prediction_type
    flow = bool(config.use_flow_sigmas)
    unsupported = [
        (eta != 0, f"eta={eta!r} (UniPC is deterministic; use eta=0)"),
        (bool(config.thresholding), "thresholding=True (dynamic thresholding is not affine)"),
        (getattr(scheduler, "solver_p", None) is not None,
         "solver_p (another scheduler as the predictor; use solver_p=None)"),
        (config.solver_type not in ("bh1", "bh2"), f"solver_type={config.solver_type!r}"),
        (prediction not in _UNIPC_PREDICTIONS, f"prediction_type={prediction!r}"),
        (flow and prediction != "flow_prediction",
         f"use_flow_sigmas=True and prediction_type={prediction!r} (use 'flow_prediction')"),
        (not flow and prediction == "flow_prediction",
         "prediction_type='flow_prediction' without use_flow_sigmas=True"),
        (not config.predict_x0 and prediction == "flow_prediction",
         "predict_x0=False and prediction_type='flow_prediction' (diffusers' step() refuses it)"),
        (config.solver_type == "bh1" and config.final_sigmas_type == "zero",
         "solver_type='bh1' and final_sigmas_type='zero' (diffusers' own step() returns NaN at the last "
         "step, -inf times 0; use solver_type='bh2' or final_sigmas_type='sigma_min')"),
    ]
    for refused, setting in unsupported:
        if refused:
            raise ScheduleError(f"scheduler: {_UNIPC} with {setting} is not supported")
    num_steps = len(scheduler.timesteps)
    sigmas = scheduler_sigmas(scheduler)  # T + 1 noise levels, noisiest first (VE, or flow's t)
    if flow:
        alpha, noise = 1 - sigmas, sigmas
    else:
        alpha = 1 / (sigmas**2 + 1).sqrt()
        noise = sigmas * alpha
    lam = alpha.log() - noise.log()  # +inf where the noise level is 0 (the final target)
    s = sigmas[:-1]  # noise level of scheduler step k's input
    p, q = _unipc_prediction(alpha[:-1], noise[:-1], s, prediction, bool(config.predict_x0))
    orders = _unipc_orders(config, num_steps)
    disabled = set(getattr(scheduler, "disable_corrector", None) or ())
    num_levels = max([orders[k] - 1 for k in range(num_steps)]
                     + [orders[k - 1] for k in range(1, num_steps) if k - 1 not in disabled] + [0])
    lead = torch.zeros(num_steps, dtype=torch.float64)
    weights = torch.zeros(num_steps, num_levels + 1, dtype=torch.float64)  # W[k, j] multiplies m_{k-j}
    predictor_rhos: list[list[float]] = []
    for k in range(num_steps):
        mix = _UniPCTerms(config, alpha, noise, lam, t=k + 1, s0=k)
        rhos_p = mix.predictor_rhos(orders[k])
        predictor_rhos.append(rhos_p)
        lead[k] = mix.lead
        weights[k, 0] += -mix.scale * mix.h_phi_1
        for j, (rho, r) in enumerate(zip(rhos_p, mix.ratios(orders[k])), start=1):  # rho (m_{k-j} - m_k) / r
            weights[k, j] += -mix.scale * mix.b_h * rho / r
            weights[k, 0] += mix.scale * mix.b_h * rho / r
        if k == 0 or k - 1 in disabled:
            continue
        # Corrector: c_k - y_k, both started from c_{k-1} with step k-1's (order P') leading terms.
        corr = _UniPCTerms(config, alpha, noise, lam, t=k, s0=k - 1)
        order_c = orders[k - 1]
        rhos_c = corr.corrector_rhos(order_c)
        factor = lead[k] * -corr.scale * corr.b_h
        weights[k, 0] += factor * rhos_c[-1]  # rho_last (m_k - m_{k-1})
        weights[k, 1] -= factor * rhos_c[-1]
        previous = predictor_rhos[k - 1]
        for j, r in enumerate(corr.ratios(order_c), start=1):  # (rho_c - rho_p) (m_{k-1-j} - m_{k-1}) / r
            delta = (rhos_c[j - 1] - previous[j - 1]) / r
            weights[k, 1 + j] += factor * delta
            weights[k, 1] -= factor * delta
    if not (bool(torch.isfinite(lead).all()) and bool(torch.isfinite(weights).all())):
        raise ScheduleError(
            f"scheduler: {_UNIPC} with final_sigmas_type={config.final_sigmas_type!r}, lower_order_final="
            f"{config.lower_order_final}, predict_x0={config.predict_x0} is not supported: a step to noise level 0 "
            "of order > 1 or with predict_x0=False is not finite (diffusers' own step() returns NaN or inf there)")
    # Scheduler step k is our step i = T-1-k; m_{k-j} is made from x[i+1+j] and out_{i+j}.
    flip = lambda t: t.flip(0)  # noqa: E731
    a = flip(lead + weights[:, 0] * p)
    b = flip(weights[:, 0] * q)
    levels = []
    for j in range(1, num_levels + 1):  # m_{k-j}'s coefficients, aligned with step k (zero for k < j)
        p_j, q_j = (torch.cat([v.new_zeros(min(j, num_steps)), v[:max(num_steps - j, 0)]]) for v in (p, q))
        levels.append((flip(weights[:, j] * p_j), flip(weights[:, j] * q_j)))
    s_step, s_next = flip(s), flip(sigmas[1:])
    if flow:
        scale, scale_next = flow_scale(s_step), flow_scale(s_next)
        abar, abar_next = ((1 - s_step) / scale) ** 2, ((1 - s_next) / scale_next) ** 2
        sigma = scaled_posterior_std(abar, abar_next, scale_next)
    else:
        abar, abar_next = 1 / (s_step**2 + 1), 1 / (s_next**2 + 1)
        sigma = posterior_variance(abar, torch.maximum(abar_next, abar)).clamp(min=0).sqrt()
    result = cls(a=a, b=b, c=torch.zeros_like(a), sigma=sigma, timesteps=scheduler.timesteps.detach().cpu().flip(0),
                 alphas_cumprod=abar, prediction_type=prediction, eta=0.0,
                 scheduler_sigmas=s_step if flow else None, levels=tuple(levels))
    if verify:
        verify_step_loop(result, scheduler)
    return result


def _unipc_prediction(alpha: torch.Tensor, noise: torch.Tensor, s: torch.Tensor, prediction: str,
                      predict_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, q)``: UniPC's converted output ``p x + q out`` (``convert_model_output``) at each step's input."""
    one, zero = torch.ones_like(alpha), torch.zeros_like(alpha)
    if predict_x0:
        return {"epsilon": (1 / alpha, -noise / alpha), "sample": (zero, one), "v_prediction": (alpha, -noise),
                "flow_prediction": (one, -s)}[prediction]
    return {"epsilon": (zero, one), "sample": (1 / noise, -alpha / noise), "v_prediction": (noise, alpha)}[prediction]


def _unipc_orders(config: Any, num_steps: int) -> list[int]:
    """The predictor's order at each scheduler step, as ``step`` chooses it (warm-up, ``lower_order_final``)."""
    orders = []
    for k in range(num_steps):
        order = min(config.solver_order, num_steps - k) if config.lower_order_final else config.solver_order
        orders.append(min(order, min(k, config.solver_order) + 1))
    return orders


class _UniPCTerms:
    """The scalars of one UniP / UniC update from noise level ``s0`` to ``t`` (indices into ``sigmas``).

    ``lead`` multiplies the starting sample, ``scale * h_phi_1`` the newest model output,
    ``scale * b_h`` the rho-weighted differences ``(m_{s0-j} - m_{s0}) / r_j``.
    """

    def __init__(self, config: Any, alpha: torch.Tensor, noise: torch.Tensor, lam: torch.Tensor, t: int, s0: int):
        self.lam, self.s0 = lam, s0
        self.h = float(lam[t] - lam[s0])
        x0 = bool(config.predict_x0)
        self.hh = -self.h if x0 else self.h
        self.lead = float(noise[t] / noise[s0]) if x0 else float(alpha[t] / alpha[s0])
        self.scale = float(alpha[t]) if x0 else float(noise[t])
        self.h_phi_1 = math.expm1(self.hh) if math.isfinite(self.hh) else (math.inf if self.hh > 0 else -1.0)
        self.b_h = self.hh if config.solver_type == "bh1" else self.h_phi_1

    def ratios(self, order: int) -> list[torch.Tensor]:
        """``r_j = (lambda_{s0-j} - lambda_{s0}) / h``, ``j = 1..order-1`` (0 where ``h`` is infinite)."""
        return [(self.lam[self.s0 - j] - self.lam[self.s0]) / self.h for j in range(1, order)]

    def _system(self, order: int) -> tuple[torch.Tensor, torch.Tensor]:
        """UniPC's ``R`` (rows ``r^(i-1)``) and ``b`` (``phi`` terms over ``B(h)``), float64."""
        rks = torch.stack(self.ratios(order) + [torch.ones((), dtype=torch.float64)])
        hh = self.hh
        h_phi_k = self.h_phi_1 / hh - 1
        factorial, rows, rhs = 1, [], []
        for i in range(1, order + 1):
            rows.append(rks ** (i - 1))
            rhs.append(h_phi_k * factorial / self.b_h)
            factorial *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return torch.stack(rows), torch.tensor(rhs, dtype=torch.float64)

    def predictor_rhos(self, order: int) -> list[float]:
        """UniP's weights of the ``order - 1`` differences (0.5 at order 2, as diffusers simplifies)."""
        if order <= 1:
            return []
        if order == 2:
            return [0.5]
        matrix, rhs = self._system(order)
        return torch.linalg.solve(matrix[:-1, :-1], rhs[:-1]).tolist()

    def corrector_rhos(self, order: int) -> list[float]:
        """UniC's weights: ``order - 1`` differences, then the new output's ``(m_t - m_{s0})`` (last)."""
        if order == 1:
            return [0.5]
        matrix, rhs = self._system(order)
        return torch.linalg.solve(matrix, rhs).tolist()
