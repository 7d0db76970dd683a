"""Model adapters: DiT and Stable Diffusion pipelines as ParaTAA ``eps_fn`` s, schedules and decoders.

``load_dit`` / ``load_sd`` take a hub id, a local directory (an original DiT ``.pt`` for DiT) or
``"tiny"`` (tiny random-weight models of the real architectures, built offline: ``models.tiny``).
The logging filter below is installed before any of them is imported.
Only this package imports diffusers and transformers; the ``paratAA`` library does not.
"""

import logging
from importlib import import_module
from typing import Any


class _NoticeFilter(logging.Filter):
    """Drop one library notice (log records containing ``fragment``) that would otherwise open every run's output.

    - transformers: its image processors fall back to PIL without torchvision. This project
      deliberately installs no torchvision (it breaks these machines) and uses no image processor.
    - diffusers: "Couldn't connect to the Hub ... Will try to load from local cache" for every hub id
      when offline. Loading from the cache then works silently, and a model that is not cached ends
      in this package's one-line ``ModelLoadError``, which says so.
    """

    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


for _logger, _fragment in (("transformers.utils.import_utils", "requires torchvision (not installed)"),
                           ("diffusers.pipelines.pipeline_utils", "Couldn't connect to the Hub")):
    logging.getLogger(_logger).addFilter(_NoticeFilter(_fragment))

__all__ = ["DiTAdapter", "ModelLoadError", "SDAdapter", "load_dit", "load_sd"]
# Imported on first use: the entry scripts parse their flags (and answer --help) before diffusers loads.
_EXPORTS = {"DiTAdapter": ".dit", "load_dit": ".dit", "ModelLoadError": ".loading", "SDAdapter": ".sd",
            "load_sd": ".sd"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
