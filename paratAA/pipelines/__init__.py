"""ParaTAA for diffusers pipelines: ``sample(pipe, **pipe_kwargs)``, a parallel drop-in for ``pipe(...)``.

```python
from paratAA.pipelines import sample
out = sample(pipe, prompt="a red cube", num_inference_steps=28, generator=torch.Generator().manual_seed(0))
out.images   # what pipe(...).images would be
out.result   # paratAA.SolveResult: iterations, evaluations, records
```

``prepare(pipe, **pipe_kwargs)`` stops the call at its first step and returns ``paratAA.solve``'s
inputs (schedule, per-row ``eps_fn``, noise) and a decoder, for callers that run the solve
themselves. One adapter per pipeline family (``families``), sharing ``base.PipelineAdapter``;
``supported()`` lists the pipelines and schedulers.

The modules, each with one job:

- ``base``, ``families``, ``sampling``: the family adapters and ``sample`` / ``prepare``.
- ``runner``: ``PipelineRunner``, a loaded pipeline as the solver's inputs for the entry scripts
  and benchmarks (DDIM for SD 1.x/2.x and DiT as the reference scripts, per-sample noise, the
  pipeline's own call or diffusers' step loop as the sequential oracle).
- ``loading`` (and ``locations``, ``dit_checkpoint``): a ``--model_path`` (hub id, directory,
  original DiT checkpoint, ``tiny*``, ``digits``) to a diffusers pipeline, failures as one-line
  ``ModelLoadError`` s.
- ``tiny``: tiny random-weight pipelines of every family, offline; ``defaults``: default locations.
- ``video`` (Wan 2.1/2.2, LTX-Video, HunyuanVideo, CogVideoX) and ``image_families`` (Qwen-Image,
  Sana, PixArt-Sigma, Chroma, FLUX.1 Kontext): the adapters of the video and newer image families;
  ``tiny_video``, ``tiny_image2``: their tiny pipelines (``tiny.tiny_pipeline("wan")``, ...).

Only this package imports diffusers and transformers; its names are imported on first use, so that
``defaults``, ``locations`` and ``loading`` stay light for the scripts' flag parsing.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "NetworkCall": ".base", "PipelineAdapter": ".base", "UnsupportedPipelineError": ".base",
    "DiTAdapter": ".families", "FluxAdapter": ".families", "SD3Adapter": ".families",
    "StableDiffusionAdapter": ".families",
    "ParallelPipelineOutput": ".sampling", "Prepared": ".sampling", "adapter_for": ".sampling",
    "prepare": ".sampling", "sample": ".sampling", "supported": ".sampling",
    "PipelineRunner": ".runner", "ModelLoadError": ".locations", "load_pipeline": ".loading",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
