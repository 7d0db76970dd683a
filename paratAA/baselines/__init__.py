"""The peers ParaTAA is compared with, on the same batch loop and ``eps_fn`` contract as ``paratAA.solve``.

- ``paratAA.baselines.paradigms``: ParaDiGMS (Shih et al., NeurIPS 2023), Picard iteration over a sliding
  window with a stride tolerance, as diffusers' ``DDIMParallelScheduler`` runs it;
- ``paratAA.baselines.parasolver``: ParaSolver (Lu, Zhu, Hou, ICLR 2025), the same window with the denoised
  initialisation and sequential warm-up steps.

Both are ``paratAA.batch.SampleStrategy`` s, so iteration counts, evaluations and final distances are
measured exactly as the default method's.
"""

from paratAA.baselines.paradigms import solve_paradigms
from paratAA.baselines.parasolver import solve_parasolver

__all__ = ["solve_paradigms", "solve_parasolver"]
