"""Model adapters: DiT and Stable Diffusion pipelines as ParaTAA ``eps_fn`` s, schedules and decoders.

``load_dit`` / ``load_sd`` take a hub id, a local directory (an original DiT ``.pt`` for DiT) or
``"tiny"`` (tiny random-weight models of the real architectures, built offline: ``models.tiny``).
Only this package imports diffusers and transformers; the ``paratAA`` library does not.
"""

from .dit import DiTAdapter, load_dit
from .loading import ModelLoadError
from .sd import SDAdapter, load_sd

__all__ = ["DiTAdapter", "ModelLoadError", "SDAdapter", "load_dit", "load_sd"]
