"""ParaTAA for diffusers pipelines: ``sample(pipe, **pipe_kwargs)``, a parallel drop-in for ``pipe(...)``.

```python
from paratAA.pipelines import sample
out = sample(pipe, prompt="a red cube", num_inference_steps=28, generator=torch.Generator().manual_seed(0))
out.images   # what pipe(...).images would be
out.result   # paratAA.SolveResult: iterations, evaluations, records
```

``prepare(pipe, **pipe_kwargs)`` stops the call at its first step and returns ``paratAA.solve``'s
inputs (schedule, per-row ``eps_fn``, noise) and a decoder, for callers that run the solve
themselves. One adapter per pipeline family (``families``), sharing ``base.PipelineAdapter``; ``supported()``
lists the pipelines and schedulers. Only this package imports diffusers.
"""

from .base import NetworkCall, PipelineAdapter, UnsupportedPipelineError
from .families import DiTAdapter, FluxAdapter, SD3Adapter, StableDiffusionAdapter
from .sampling import ParallelPipelineOutput, Prepared, adapter_for, prepare, sample, supported

__all__ = ["DiTAdapter", "FluxAdapter", "NetworkCall", "ParallelPipelineOutput", "PipelineAdapter", "SD3Adapter",
           "Prepared", "StableDiffusionAdapter", "UnsupportedPipelineError", "adapter_for", "prepare", "sample",
           "supported"]
