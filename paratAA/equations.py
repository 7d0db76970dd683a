"""The triangular system of a sampler's trajectory: first-order and order-K maps and residuals.

Notation (see ``paratAA.schedule``): the window is the block of unknowns ``x[lo..hi-1]``; every
``x[j]`` with ``j >= hi`` is final. For each window step ``p`` the network output ``out_p`` was
evaluated at ``x[p+1]`` and ``g[p] = b[p] * out_p + c[p] * z[p]``. Then

    first order:  F_i(X)   = a[i] x[i+1] + g[i]
    order K:      F^K_i(X) = A(i, u-1) x[u] + sum_{p=i}^{u-1} A(i, p-1) g[p],   u = min(i + K, hi)

with ``A(i, j) = a[i] a[i+1] ... a[j]`` (``A(i, i-1) = 1``). A multistep sampler's ``g[p]`` also holds
its level terms ``sum_l a_l[p] x[p+1+l] + b_l[p] out_{p+l}`` (``paratAA.schedule``, any number of
levels; ``SampleStrategy.step_offsets``): every map below takes ``g`` as given, so each form keeps
its fixed point, the sampler's trajectory.

The order-K map unrolls the recurrence K steps: it has the same fixed point (the sequential
trajectory) and propagates a correction K steps per iteration instead of one. ``K >= hi - lo`` anchors
every unknown on ``x[hi]``.

That is the paper's ("affine") form: it composes the linear part ``a`` exactly but holds the
network term at the old iterate. ``increment_map`` is the other natural form with the same fixed
point, a telescoping sum of the steps' increments (the Picard form ParaDiGMS uses):

    increment:    F^K_i(X) = x[u] + sum_{p=i}^{u-1} (F_p(X) - x[p+1])

It holds the whole step at the old iterate, i.e. it takes each step's total Jacobian
``a + b d(out)/dx`` as the identity, which suits diffusion steps (they move x by little; ``a > 1``
is largely cancelled by the network term) better than the affine form's ``a``.

Both are one map with a per-step *carry factor* ``c_p`` (the guess of the step's Jacobian):
``F^K_i = C(i, u-1) x[u] + sum_p C(i, p-1) (F_p(X) - c_p x[p+1])``, ``c = a`` (affine) or 1
(increment). The ``"secant"`` form (an extension, opt-in) takes ``c_p = a_p + b_p kappa_p`` with
``kappa_p`` the network's slope along the step's last change of input,
``<d out_p, d x[p+1]> / <d x[p+1], d x[p+1]>`` between consecutive iterations (a scalar secant,
Newton-like in ParaSolver's spirit), clamped to ``[0.25, 4]`` (``SECANT_CLAMP``: most steps are near
1, but where a trajectory crosses between modes of the data a step can amplify a change of its input
by more than 1.5, and a tighter clamp slowed those samples: benchmarks/RESULTS.md, section 15.4); 1
before a step has two iterates. The fixed point is the same for every ``c``.

All functions are pure tensor maps over window-local arrays: index ``w = i - lo``.
"""

from __future__ import annotations

import torch

from paratAA.options import MAP_FORMS  # the forms of the order-K equations (module docstring)

__all__ = ["MAP_FORMS", "carried_map", "first_order_residual", "increment_map", "order_k_map", "rms", "secant_carry",
           "step_offset"]


SECANT_CLAMP = (0.25, 4.0)  # the secant form's carry factors stay in this range (module docstring)
# Above this spread of the partial products of ``a`` the prefix-sum form loses precision.
_MAX_PRODUCT_SPREAD = 1e8


def step_offset(b: torch.Tensor, c: torch.Tensor, out: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``g[p] = b[p] * out_p + c[p] * z[p]``: the part of each window step not proportional to x[p+1].

    Args:
        b, c: ``(n,)`` coefficients of the window steps.
        out: ``(n, *latent)`` network outputs, evaluated at ``x[lo+1..hi]``.
        z: ``(n, *latent)`` the steps' noise.
    """
    return (out * _bcast(b, out)).addcmul_(_bcast(c, out), z)


def first_order_residual(x_window: torch.Tensor, x_above: torch.Tensor, a: torch.Tensor,
                         g: torch.Tensor) -> torch.Tensor:
    """``F_i(X) - x[i]`` for every window step.

    Args:
        x_window: ``(n, *latent)``: ``x[lo..hi-1]``.
        x_above: ``(n, *latent)``: ``x[lo+1..hi]``, the inputs of the network calls.
        a: ``(n,)`` coefficients of the window steps.
        g: ``(n, *latent)``: ``b * out + c * z`` of the window steps.
    """
    return torch.addcmul(g, _bcast(a, x_above), x_above).sub_(x_window)


def order_k_map(x_above: torch.Tensor, a: torch.Tensor, g: torch.Tensor, order: int) -> torch.Tensor:
    """``F^K_i(X)`` for every window step (``K = order``; arguments as in ``first_order_residual``).

    Computed in O(n) with prefix products ``P[j] = a[lo] ... a[j-1]`` and prefix sums
    ``S[j] = sum_{p<j} P[p] g[p]``:  ``F^K_i = (P[u] x[u] + S[u] - S[i]) / P[i]``. When the
    products span too many orders of magnitude for that to be accurate (``a`` near zero or huge),
    the recurrence is unrolled directly instead. Latent-sized temporaries are kept to two: on a
    CPU, fresh memory costs more than the arithmetic.
    """
    n = a.shape[0]
    if order <= 1:
        return torch.addcmul(g, _bcast(a, x_above), x_above)
    prefix = torch.cat([a.new_ones(1), torch.cumprod(a, 0)])  # P[0..n]
    spread = prefix.abs().max() / prefix.abs().min()
    if not bool(torch.isfinite(spread)) or float(spread) > _MAX_PRODUCT_SPREAD:
        return _order_k_by_recurrence(x_above, a, g, order)
    sums = g.new_zeros((n + 1,) + g.shape[1:])  # S[0..n]
    torch.cumsum(g * _bcast(prefix[:n], g), 0, out=sums[1:])
    result = torch.neg(sums[:n])
    inner = max(n - order, 0)  # rows w < inner anchor on x[w + K] inside the window, the rest on x[hi]
    result[:inner] += sums[order:n]
    result[:inner].addcmul_(_bcast(prefix[order:n], g), x_above[order - 1:n - 1])
    result[inner:] += sums[n]
    result[inner:].add_(x_above[n - 1], alpha=float(prefix[n]))
    return result.div_(_bcast(prefix[:n], g))


def increment_map(x_above: torch.Tensor, a: torch.Tensor, g: torch.Tensor, order: int) -> torch.Tensor:
    """The increment form of ``F^K_i(X)``: ``x[u] + sum_{p=i}^{u-1} ((a[p] - 1) x[p+1] + g[p])``.

    Arguments as in ``order_k_map``; O(n) with one prefix sum. ``order=1`` gives the first-order map.
    """
    n = a.shape[0]
    sums = g.new_zeros((n + 1,) + g.shape[1:])
    torch.cumsum(torch.addcmul(g, _bcast(a - 1, x_above), x_above), 0, out=sums[1:])
    result = torch.neg(sums[:n])
    inner = max(n - order, 0)  # rows w < inner anchor on x[w + K] inside the window, the rest on x[hi]
    result[:inner] += sums[order:n]
    result[:inner] += x_above[order - 1:n - 1]
    result[inner:] += sums[n]
    result[inner:] += x_above[n - 1]
    return result


def carried_map(x_above: torch.Tensor, a: torch.Tensor, g: torch.Tensor, order: int,
                carry: torch.Tensor) -> torch.Tensor:
    """The order-K map with per-step carry factors ``carry`` (module docstring); arguments as in ``order_k_map``."""
    return order_k_map(x_above, carry, torch.addcmul(g, _bcast(a - carry, x_above), x_above), order)


def secant_carry(a: torch.Tensor, b: torch.Tensor, dx: torch.Tensor, dout: torch.Tensor,
                 known: torch.Tensor) -> torch.Tensor:
    """Carry factors ``a + b kappa`` of the secant form, ``kappa = <dout, dx> / <dx, dx>`` (module docstring).

    Args:
        a, b: ``(n,)`` step coefficients.
        dx, dout: ``(n, *latent)`` changes of each step's input ``x[p+1]`` and network output
            since the previous iteration.
        known: ``(n,)`` bool: the step has a previous iterate (else its carry is 1).
    """
    num = (dx * dout).flatten(1).sum(1)
    den = dx.flatten(1).pow(2).sum(1)
    usable = known & (den > 0)
    kappa = torch.where(usable, num / torch.where(usable, den, torch.ones_like(den)), torch.zeros_like(den))
    return torch.where(usable, (a + b * kappa).clamp(SECANT_CLAMP[0], SECANT_CLAMP[1]), torch.ones_like(a))


def _order_k_by_recurrence(x_above: torch.Tensor, a: torch.Tensor, g: torch.Tensor, order: int) -> torch.Tensor:
    """``order_k_map`` without divisions by partial products (for ``a`` near zero or huge).

    With the full chain ``G[w] = a[w] G[w+1] + g[w]``, ``G[n] = x[hi]`` (one backward sweep),
    ``F^K_w = G[w] + A(w, u-1) (x[u] - G[u])``; the products ``A`` of at most K factors are taken
    directly.
    """
    n = a.shape[0]
    chain = torch.empty((n + 1,) + g.shape[1:], dtype=g.dtype, device=g.device)
    chain[n] = x_above[n - 1]
    for w in range(n - 1, -1, -1):
        chain[w] = a[w] * chain[w + 1] + g[w]
    w = torch.arange(n, device=a.device)
    u = (w + order).clamp(max=n)
    padded = torch.cat([a, a.new_ones(order)])
    factors = padded.unfold(0, order, 1)[:n]  # factors[w, k] = a[w + k] (1 past the window)
    within = torch.arange(order, device=a.device)[None, :] < (u - w)[:, None]
    products = torch.where(within, factors, torch.ones_like(factors)).prod(1)
    return chain[:n] + _bcast(products, g) * (x_above[u - 1] - chain[u])


def step_tolerance(sigma: torch.Tensor, tol1: float, tol2: float) -> torch.Tensor:
    """The stop test's tolerance per step, ``tau_i = max(tol1, tol2 * sigma_i)`` (``paratAA.solver``, step 2)."""
    return torch.clamp(tol2 * sigma, min=tol1)


def rms(r: torch.Tensor) -> torch.Tensor:
    """Root mean square over all but the first dimension: ``(n, *latent) -> (n,)``."""
    return torch.linalg.vector_norm(r.flatten(1), dim=1) / r[0].numel() ** 0.5


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(v.shape + (1,) * (like.dim() - 1))
