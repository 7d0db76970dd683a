"""The method configurations: the recommended default and the paper's (importable without torch).

``RECOMMENDED`` is what ``paratAA.solve`` runs with its method options left out, chosen from the
matched-accuracy benchmarks (``benchmarks/RESULTS.md``, "Matched accuracy"): on the trained digits
DiT and the Gaussian mixture it needs the fewest iterations to reach a given distance from the
sequential sample on every row measured, deterministic and stochastic, window T and T/4.

- the order-K equations in secant form with K = the window (``map_form="secant"``: the increment
  form's guess of each step's Jacobian, 1, refined by the network's secant slope),
- Triangular Anderson Acceleration with ``memory_size=2``,
- steps entering the window initialised with the predicted sample held fixed (``init="denoised"``),
- the window is the whole trajectory (``window_size`` = T),
- ``tol1 = tol2 = 1e-4``: this method moves its frontier in large blocks, and the final difference
  from the sequential sample is about the residuals accepted along the way added up, typically
  2-3 times the tolerance and up to about 12 times on the benchmark rows (``benchmarks/RESULTS.md``, "What a tolerance means"); 1e-4 lands
  within about 1e-3 of it (largest entry) on the benchmark problems.

``PAPER`` is the reference scripts' method (Tang et al. 2024): the paper's affine order-K equations,
memory 2, new steps copied from the lowest latent, tolerances 1e-3; the scripts' windows (100)
and orders (DiT 100, SD 20) are theirs (``--paper`` in the entry scripts).
"""

__all__ = ["FULL_ORDER", "PAPER", "PAPER_WINDOW", "RECOMMENDED"]

FULL_ORDER = "window"  # order = the window size: every unknown anchored on the window's top
RECOMMENDED = {"order": FULL_ORDER, "memory_size": 2, "map_form": "secant", "init": "denoised",
               "tol1": 1e-4, "tol2": 1e-4}
PAPER = {"memory_size": 2, "map_form": "affine", "init": "copy", "tol1": 1e-3, "tol2": 1e-3}
PAPER_WINDOW = 100  # the reference scripts' --window_size
