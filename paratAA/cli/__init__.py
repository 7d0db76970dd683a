"""The entry scripts' layer: everything between a command line and the library. The library never imports it.

- ``flags``: the shared flags (the method's generated from ``paratAA.options.SolverOptions``) and their checks;
- ``process``: exit statuses, signals, one-line errors, which process of a launch reports;
- ``session``: joining the processes, loading the model, the memory check (``start``);
- ``models``: which pipeline families each script runs, the flags that apply to them, loading them;
- ``runs``: run folders (config, metrics, summary, latents) and the solve that records into them;
- ``images``: per-iteration images, GIFs and labelled contact sheets.

Nothing here is imported by ``import paratAA.cli``; the scripts import the submodules they need,
light ones (``flags``, ``process``) before parsing, heavy ones (torch, diffusers) after.
"""
