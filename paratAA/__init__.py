"""ParaTAA: parallel sampling of diffusion models with Triangular Anderson Acceleration.

Tang, Tang, Luo, Wang, Chang, "Accelerating Parallel Sampling of Diffusion Models", ICML 2024.
The sampler's whole trajectory is solved as a triangular system of nonlinear equations by
fixed-point iteration, one batched network call per iteration; converged, the result is the
sequential sampler's. Index convention: ``paratAA.schedule``; the method: ``paratAA.solver``;
the batch loop every sampler shares: ``paratAA.batch``.
"""

from paratAA.batch import EpsFn, IterationRecord, SolveResult
from paratAA.noise import sample_noise
from paratAA.schedule import Schedule, ScheduleError
from paratAA.solver import PAPER, RECOMMENDED, NonFiniteError, Solver, sequential, solve

__all__ = ["EpsFn", "IterationRecord", "NonFiniteError", "PAPER", "RECOMMENDED", "Schedule", "ScheduleError",
           "SolveResult", "Solver", "sample_noise", "sequential", "solve"]
__version__ = "0.1.0"
