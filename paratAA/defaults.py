"""The method configurations: the recommended default and the paper's (importable without torch).

``RECOMMENDED`` is what ``paratAA.solve`` runs with its method options left out, chosen from the
matched-accuracy benchmarks (``benchmarks/RESULTS.md``, "Matched accuracy"): on the trained digits
DiT and the Gaussian mixture it needs the fewest iterations to reach a given distance from the
sequential sample on every row measured, deterministic and stochastic, window T and T/4.

- the order-K equations in increment form with K = the window (``map_form="increment"``),
- Triangular Anderson Acceleration with ``memory_size=2``,
- steps entering the window initialised with the predicted sample held fixed (``init="denoised"``),
- the window is the whole trajectory (``window_size`` = T).

``PAPER`` is the reference scripts' method (Tang et al. 2024): the paper's affine order-K equations,
memory 2, new steps copied from the lowest latent; the scripts' windows (100) and orders (DiT 100,
SD 20) are theirs (``--paper`` in the entry scripts).
"""

__all__ = ["FULL_ORDER", "PAPER", "PAPER_WINDOW", "RECOMMENDED"]

FULL_ORDER = "window"  # order = the window size: every unknown anchored on the window's top
RECOMMENDED = {"order": FULL_ORDER, "memory_size": 2, "map_form": "increment", "init": "denoised"}
PAPER = {"memory_size": 2, "map_form": "affine", "init": "copy"}
PAPER_WINDOW = 100  # the reference scripts' --window_size
