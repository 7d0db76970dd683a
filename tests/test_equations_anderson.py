"""Order-K maps and the TAA history, against direct (slow, obvious) computations."""

import pytest
import torch

from paratAA.anderson import TriangularAnderson
from paratAA.equations import first_order_residual, increment_map, order_k_map


def brute_force_order_k(x_above, a, g, order):
    """F^K_w by unrolling the recurrence from x[u] down to step w, one step at a time."""
    n = a.shape[0]
    result = []
    for w in range(n):
        u = min(w + order, n)
        value = x_above[u - 1]
        for p in range(u - 1, w - 1, -1):
            value = a[p] * value + g[p]
        result.append(value)
    return torch.stack(result)


@pytest.mark.parametrize("order", [1, 2, 5, 17, 40])
@pytest.mark.parametrize("a_range", [(1.0, 1.2), (0.3, 1.0), (1e-6, 3.0)])  # the last one forces the fallback
def test_order_k_map_equals_brute_force(order, a_range):
    gen = torch.Generator().manual_seed(order)
    n = 17
    low, high = a_range
    a = low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)
    x_above = torch.randn(n, 3, 2, generator=gen, dtype=torch.float64)
    g = torch.randn(n, 3, 2, generator=gen, dtype=torch.float64)
    expected = brute_force_order_k(x_above, a, g, order)
    torch.testing.assert_close(order_k_map(x_above, a, g, order), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", [1, 3, 17, 40])
def test_increment_map_equals_the_telescoping_sum(order):
    gen = torch.Generator().manual_seed(order)
    n = 17
    a = 1 + torch.rand(n, generator=gen, dtype=torch.float64)
    x_above, g = (torch.randn(n, 3, 2, generator=gen, dtype=torch.float64) for _ in range(2))
    expected = []
    for w in range(n):
        u = min(w + order, n)
        expected.append(x_above[u - 1] + sum((a[p] - 1) * x_above[p] + g[p] for p in range(w, u)))
    torch.testing.assert_close(increment_map(x_above, a, g, order), torch.stack(expected), rtol=1e-12, atol=1e-12)
    if order == 1:  # order 1: both forms are the first-order map
        torch.testing.assert_close(increment_map(x_above, a, g, 1), order_k_map(x_above, a, g, 1))


def test_order_one_map_is_the_first_order_residual_plus_x():
    gen = torch.Generator().manual_seed(0)
    x_window, x_above, g = (torch.randn(6, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    a = torch.rand(6, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(order_k_map(x_above, a, g, 1) - x_window, first_order_residual(x_window, x_above, a, g))


def anderson_step(x, r, dx_columns, dr_columns, lam):
    """Textbook Anderson (type II) for a single step with the given difference columns."""
    dX, dR = torch.stack(dx_columns, 1), torch.stack(dr_columns, 1)  # (d, m)
    gamma = torch.linalg.solve(dR.T @ dR + lam * torch.eye(dR.shape[1], dtype=x.dtype), dR.T @ r)
    return x + r - (dX + dR) @ gamma


def test_a_single_step_uses_its_newest_differences():
    gen = torch.Generator().manual_seed(0)
    memory, lam = 3, 1e-3
    taa = TriangularAnderson(capacity=4, latent_shape=(5,), memory_size=memory, regularization=lam,
                             device=torch.device("cpu"))
    taa.forget(2, 3)
    xs, rs = [], []
    for k in range(6):
        x = torch.randn(1, 5, generator=gen, dtype=torch.float64)
        r = torch.randn(1, 5, generator=gen, dtype=torch.float64)
        xs.append(x[0]), rs.append(r[0])
        new = taa.update(2, 3, x, r, plain_from=1)
        newest = min(k, memory - 1)
        if newest == 0:
            expected = x[0] + r[0]  # nothing to accelerate with yet
        else:
            dx = [xs[j] - xs[j - 1] for j in range(k, k - newest, -1)]
            dr = [rs[j] - rs[j - 1] for j in range(k, k - newest, -1)]
            expected = anderson_step(x[0], r[0], dx, dr, lam)
        torch.testing.assert_close(new[0], expected, rtol=1e-10, atol=1e-12)


def test_triangular_sums_and_a_late_joiner_and_the_safeguard():
    """Three steps; the lowest joined one iteration later. Checks sums over s >= i, masks, plain_from."""
    gen = torch.Generator().manual_seed(1)
    lam = 1e-3
    taa = TriangularAnderson(capacity=3, latent_shape=(4,), memory_size=3, regularization=lam,
                             device=torch.device("cpu"))
    history_x = {i: [] for i in range(3)}
    history_r = {i: [] for i in range(3)}
    taa.forget(1, 3)
    for k in range(4):
        lo = 1 if k == 0 else 0
        if k == 1:
            taa.forget(0, 1)
        x = torch.randn(3 - lo, 4, generator=gen, dtype=torch.float64)
        r = torch.randn(3 - lo, 4, generator=gen, dtype=torch.float64)
        for w, i in enumerate(range(lo, 3)):
            history_x[i].append(x[w])
            history_r[i].append(r[w])
        new = taa.update(lo, 3, x, r, plain_from=2 - lo)  # step 2 is the highest unconverged

        def columns(i, count):
            return ([history_x[i][-j] - history_x[i][-j - 1] for j in range(1, count + 1)],
                    [history_r[i][-j] - history_r[i][-j - 1] for j in range(1, count + 1)])

        for w, i in enumerate(range(lo, 3)):
            count = min(len(history_x[i]) - 1, 2)
            if i == 2 or count == 0:
                torch.testing.assert_close(new[w], x[w] + r[w])
                continue
            gram = lam * torch.eye(count, dtype=torch.float64)
            rhs = torch.zeros(count, dtype=torch.float64)
            for s in range(i, 3):
                _, dr = columns(s, count)
                dR = torch.stack(dr, 1)
                gram = gram + dR.T @ dR
                rhs = rhs + dR.T @ history_r[s][-1]
            dx, dr = columns(i, count)
            gamma = torch.linalg.solve(gram, rhs)
            expected = x[w] + r[w] - (torch.stack(dx, 1) + torch.stack(dr, 1)) @ gamma
            torch.testing.assert_close(new[w], expected, rtol=1e-10, atol=1e-12)


def test_reanchoring_removes_the_change_inherited_from_the_plain_step():
    """With reanchor_a, step i < i* drops A(i, i*-1) (dX_{i*} + dR_{i*}) gamma_i from its correction."""
    gen = torch.Generator().manual_seed(2)
    n, top = 4, 2
    a = 1 + torch.rand(n, generator=gen, dtype=torch.float64)
    histories = [TriangularAnderson(capacity=n, latent_shape=(3,), memory_size=3, regularization=1e-3,
                                    device=torch.device("cpu")) for _ in range(2)]
    for taa in histories:
        taa.forget(0, n)
    for _ in range(3):
        x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        r = torch.randn(n, 3, generator=gen, dtype=torch.float64)
        plain = histories[0].update(0, n, x, r, plain_from=top)
        anchored = histories[1].update(0, n, x, r, plain_from=top, reanchor_a=a)
    torch.testing.assert_close(anchored[top:], plain[top:])  # at and above i*: the plain update either way
    dx, dr = histories[0]._dx[top], histories[0]._dr[top]  # (columns, 3): step i*'s differences
    for i in range(top):
        # Recover gamma_i from the plain correction, then check the re-anchored one.
        own = histories[0]._dx[i] + histories[0]._dr[i]
        gamma = torch.linalg.lstsq(own.T, (x[i] + r[i] - plain[i]).unsqueeze(1)).solution.squeeze(1)
        carried = torch.prod(a[i:top])
        expected = plain[i] + carried * ((dx + dr).T @ gamma)
        torch.testing.assert_close(anchored[i], expected, rtol=1e-9, atol=1e-10)


def test_carried_map_spans_the_affine_and_increment_forms_and_the_secant_slope():
    from paratAA.equations import SECANT_CLAMP, carried_map, increment_map, order_k_map, secant_carry

    gen = torch.Generator().manual_seed(0)
    n = 9
    x_above = torch.randn(n, 3, 2, generator=gen, dtype=torch.float64)
    a = 1 + 0.1 * torch.rand(n, generator=gen, dtype=torch.float64)
    g = torch.randn(n, 3, 2, generator=gen, dtype=torch.float64)
    for order in (1, 4, n):
        torch.testing.assert_close(carried_map(x_above, a, g, order, a), order_k_map(x_above, a, g, order))
        torch.testing.assert_close(carried_map(x_above, a, g, order, torch.ones_like(a)),
                                   increment_map(x_above, a, g, order))
    # a network linear along the change, out = k x: the secant slope is k, the carry a + b k (clamped)
    b = -0.05 * torch.ones(n, dtype=torch.float64)
    dx = torch.randn(n, 3, 2, generator=gen, dtype=torch.float64)
    known = torch.tensor([True] * (n - 1) + [False])
    carry = secant_carry(a, b, dx, 2.0 * dx, known)
    torch.testing.assert_close(carry[:-1], (a + 2.0 * b)[:-1])
    assert carry[-1] == 1.0  # no previous iterate: the increment form's guess
    assert secant_carry(a, b, dx, -100.0 * dx, known)[:-1].eq(SECANT_CLAMP[1]).all()  # clamped above
    assert secant_carry(a, b, dx, 100.0 * dx, known)[:-1].eq(SECANT_CLAMP[0]).all()  # and below
