"""The residual floor of a half-precision network: what the stop rule can ask for (docs/algorithm.md, section 8).

A network run in float16 or bfloat16 sees its input rounded and returns a rounded output. The
solver's float64 iterate ``x[i+1]`` approaches the solution continuously, but the network's output
at it does not: inputs closer than one rounding unit still flip roundings and make the output jump.
Step ``i``'s first-order residual ``r_i = a x[i+1] + b out_i + ... - x[i]`` inherits those jumps
as ``b_i * (jump of out_i)`` and cannot settle below them until ``x[i+1]`` is final. A tolerance
below that floor is never met; the safeguard then finishes one step per iteration, which is
sequential sampling with the parallel overhead on top.

The floor is measured, not assumed (a formula from the output rounding alone, ``|b| u |out|``,
underestimates it 5-50x on a trained DiT, because the input rounding passes through the network's
Jacobian). In the first iteration the solve adds, to the same batched call, a few probe rows per
sample: window steps evaluated at ``x + u |x| xi`` (``u`` the dtype's unit roundoff, ``xi`` random
signs from a fixed seed, identical on every process). With ``out'`` the probe's output, the jump

    J_i = rms(out'_i - out_i)

is measured at ``PROBE_STEPS`` steps spread over the window and interpolated linearly in ``i`` for
the others (constant beyond the probed range): the jump is smooth in ``i`` (tiny SD3 in float16:
2.6e-3 at every step measured), while ``|b_i|``, known exactly, can change sharply between probed
steps (SD3's last step has ``|b| = 0.009``, the one above it 0.10; interpolating the product left
steps 1-3 at a third of their jitter). Then

    jitter_i = |b_i| J_i,       floor_i = FLOOR_FACTOR * max(jitter_i, rms_j jitter_j)   (FLOOR_FACTOR = 1.25),

each step's jitter raised to at least its root mean square over the trajectory.

The raise is for the low-noise steps, whose small ``|b_i|`` makes their own jitter small: their input
``x[i+1]`` is the sum of every update above it, so it keeps moving by the other steps' jitter until
they are final, and their residuals stall near the trajectory's typical floor, not their own (digits
DDIM-50 in bfloat16: 3.5e-3 at steps 0-4, whose own jitter is 0.4-1.6e-3; tiny SDXL: 1.5e-3 at step 2
against 2.5e-4; on digits also the middle steps 27-29). With the local floor alone those steps
finished one per iteration, by the safeguard (benchmarks/RESULTS.md, section 15). A step then
counts as converged when its residual is within the tolerance *or* within the floor
(``SampleStrategy.floor``).
"""

from __future__ import annotations

import torch

from paratAA.equations import step_tolerance
from paratAA.options import HALF_PRECISION  # the dtypes whose floor is measured (float32's is far below any tolerance)

__all__ = ["FLOOR_FACTOR", "HALF_PRECISION", "PROBE_STEPS", "UNIT_ROUNDOFF", "FloorProbe", "floor_warning"]

UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
PROBE_STEPS = 8  # probe rows per sample, in the first iteration
# Residuals within 1.25x the measured jitter count as converged. At 1 many steps hover at the floor and
# finish one per iteration; the error a looser test freezes is removed by the settling block
# (paratAA.solver, step 4; without it, 2 let a digits sample drift: RESULTS 10.2; RESULTS 17).
FLOOR_FACTOR = 1.25
_PROBE_SEED = 20240209


class FloorProbe:
    """The probe rows of the first iteration and the per-step floors they give (module docstring).

    Args:
        dtype: the network's dtype name (``HALF_PRECISION``).
        b: float64 ``(T,)``, the schedule's ``b`` (how a jump of the output reaches the residual).
    """

    def __init__(self, dtype: str, b: torch.Tensor):
        self.unit = UNIT_ROUNDOFF[dtype]
        self.b = b.abs().cpu()  # the floors are computed on the CPU (``jitter``), once per sample

    def rows(self, x: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The probe rows of one sample's evaluated rows ``(x, steps)``: ``(perturbed x, their positions)``.

        Probed are up to ``PROBE_STEPS`` rows spread evenly over the sample's rows, ends included.
        """
        count = min(PROBE_STEPS, x.shape[0])
        picked = torch.linspace(0, x.shape[0] - 1, count, dtype=torch.float64).round().long().unique()
        generator = torch.Generator().manual_seed(_PROBE_SEED)
        signs = torch.randint(0, 2, (picked.numel(), *x.shape[1:]), generator=generator, dtype=torch.int64)
        signs = (2 * signs - 1).to(device=x.device, dtype=x.dtype)
        chosen = x[picked.to(x.device)]
        return chosen + self.unit * chosen.abs() * signs, picked

    def floors(self, steps: torch.Tensor, out: torch.Tensor, picked: torch.Tensor,
               probed_out: torch.Tensor) -> torch.Tensor:
        """float64 ``(T,)``: one sample's floor per step from its probe (T = ``len(b)``).

        Args:
            steps: the sample's evaluated step indices (``rows``' ``steps``).
            out: the network's float64 outputs at those rows.
            picked: ``rows``' positions.
            probed_out: the outputs at the probe rows.
        """
        jitter = self.jitter(steps, out, picked, probed_out)
        typical = jitter.pow(2).mean().sqrt()  # the trajectory's typical floor (module docstring)
        return FLOOR_FACTOR * torch.clamp(jitter, min=float(typical)).to(out.device)

    def jitter(self, steps: torch.Tensor, out: torch.Tensor, picked: torch.Tensor,
               probed_out: torch.Tensor) -> torch.Tensor:
        """float64 ``(T,)`` on the CPU: each step's ``|b_i| J_i``, the jump interpolated (module docstring).

        Arguments as for ``floors``.
        """
        picked = picked.to(out.device)
        probed_steps = steps[picked].cpu()
        jump = (probed_out - out[picked]).flatten(1).pow(2).mean(1).sqrt().cpu()
        order = torch.argsort(probed_steps)
        everywhere = torch.arange(self.b.numel(), dtype=torch.float64)
        return self.b * _interpolate(everywhere, probed_steps[order].double(), jump[order])


def _interpolate(at: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of ``(xs, ys)`` (``xs`` increasing) at ``at``, constant beyond the ends."""
    if xs.numel() == 1:
        return ys.expand_as(at).clone()
    right = torch.searchsorted(xs, at).clamp(1, xs.numel() - 1)
    left = right - 1
    weight = ((at - xs[left]) / (xs[right] - xs[left])).clamp(0, 1)
    return ys[left] + weight * (ys[right] - ys[left])


def floor_warning(floors: torch.Tensor, sigma: torch.Tensor, tol1: float, tol2: float, dtype: str) -> str | None:
    """The one-line warning for explicit tolerances below the measured floor on most steps, else None.

    Args:
        floors: float64 ``(B, T)`` measured floors.
        sigma: float64 ``(T,)`` the steps' noise scales (``tol2``'s unit).
        tol1, tol2, dtype: the tolerances in force and the network's dtype.
    """
    tolerance = step_tolerance(sigma, tol1, tol2).to(floors.device)
    below = (tolerance < floors).double().mean()
    if below <= 0.5:
        return None
    return (f"tol1={tol1:g}, tol2={tol2:g} are below the residual floor of this {dtype} network on "
            f"{100 * float(below):.0f}% of the steps (median floor {float(floors.median()):.1e}): those steps "
            "finish one per iteration; leave the tolerances out (they then follow the floor) or run in float32")
