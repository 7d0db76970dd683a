"""Model adapters: DiT and Stable Diffusion pipelines as ParaTAA ``eps_fn`` s, schedules and decoders.

``load_dit`` / ``load_sd`` take a hub id, a local directory (an original DiT ``.pt`` for DiT) or
``"tiny"`` (tiny random-weight models of the real architectures, built offline: ``models.tiny``).
Only this package imports diffusers and transformers; the ``paratAA`` library does not.
"""

import logging


class _TorchvisionFallbackFilter(logging.Filter):
    """Drop transformers' notice that its image processors fall back to PIL without torchvision.

    This project deliberately installs no torchvision (it breaks these machines) and uses no image
    processor; the notice would otherwise open every run's output, once per process.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())

from .dit import DiTAdapter, load_dit  # noqa: E402  (after the filter: importing them triggers the notice)
from .loading import ModelLoadError  # noqa: E402
from .sd import SDAdapter, load_sd  # noqa: E402

__all__ = ["DiTAdapter", "ModelLoadError", "SDAdapter", "load_dit", "load_sd"]
