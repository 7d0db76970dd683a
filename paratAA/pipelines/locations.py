"""Resolve a user-given model location and load diffusers/transformers components from it.

A location is a local path (a file or a directory that exists, or anything that is written like a
path: absolute, ``./``/``../``/``~`` prefixed, or ending in a checkpoint suffix) or a Hugging Face
hub repo id (``owner/name``). A path that looks local but does not exist fails at once, before any
hub look-up (which would otherwise retry for about 23 seconds when the network is down). Hub ids
are loaded through the ordinary ``from_pretrained`` machinery, so ``HF_HUB_OFFLINE=1`` and the
local cache are honoured. Every failure becomes a one-line ``ModelLoadError`` that names the
argument, the location and what was tried.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import warnings
from typing import Any

from paratAA.errors import ModelLoadError, first_line

__all__ = ["LOAD_ERRORS", "ModelLoadError", "first_line", "load_pretrained", "quiet_library_notices",
           "resolve_location"]

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
# huggingface_hub's repo-id rule: one optional "owner/" then a name of letters, digits, "-", "_", ".".
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# What from_pretrained / torch.load raise for missing, partial or malformed files (hub errors are OSErrors).
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError)


class _NoticeFilter(logging.Filter):
    """Drops the log records containing ``fragment``."""

    def __init__(self, fragment: str):
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


# Library notices that would otherwise open every run's output:
# - transformers: its image processors fall back to PIL without torchvision. This project deliberately
#   installs no torchvision (it breaks these machines) and uses no image processor.
# - diffusers: "Couldn't connect to the Hub ... Will try to load from local cache" for every hub id when
#   offline. Loading from the cache then works silently, and a model that is not cached ends in a one-line
#   ``ModelLoadError`` that says so.
# - diffusers: "There are modules in X that should be kept in float32: []" whenever a module is cast with
#   ``to(dtype)``, as ``--dtype float16/bfloat16`` does, even when the list it names is empty.
_NOTICES = {"transformers.utils.import_utils": "requires torchvision (not installed)",
            "diffusers.pipelines.pipeline_utils": "Couldn't connect to the Hub",
            "diffusers.models.modeling_utils": "should be kept in float32: []"}


def quiet_library_notices() -> None:
    """Install the filters of ``_NOTICES`` (once: repeated calls add nothing)."""
    for name, fragment in _NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoticeFilter) and f.fragment == fragment for f in logger.filters):
            logger.addFilter(_NoticeFilter(fragment))


def resolve_location(location: str, argument: str) -> tuple[str, str]:
    """Classify a model location as local or hub without touching the network.

    Args:
        location: a local file/directory path or a hub repo id.
        argument: the argument's name for error messages (e.g. ``"model_path"``).

    Returns:
        ``("local", absolute_path)`` or ``("hub", repo_id)``.

    Raises:
        ModelLoadError: an empty location or file, a local-looking path that does not exist, or a string
            that is neither an existing path nor a valid hub repo id.
    """
    if not isinstance(location, str) or not location.strip():
        raise ModelLoadError(f"{argument}: expected a local path or a hub repo id, got {location!r}")
    expanded = os.path.expanduser(location)
    if os.path.isfile(expanded) and os.path.getsize(expanded) == 0:
        raise ModelLoadError(f"{argument}: '{location}' is an empty file")
    if os.path.exists(expanded):
        return "local", os.path.abspath(expanded)
    looks_local = (
        os.path.isabs(expanded)
        or location.startswith(("./", "../", "~", ".\\", "..\\"))
        or location.lower().endswith(_CHECKPOINT_SUFFIXES)
    )
    if looks_local:
        raise ModelLoadError(f"{argument}: local path '{location}' does not exist (not tried on the hub)")
    if not _HUB_ID.fullmatch(location) or ".." in location:
        raise ModelLoadError(
            f"{argument}: '{location}' is neither an existing local path nor a valid hub repo id (owner/name)")
    return "hub", location


def load_pretrained(cls: Any, location: str, kind: str, argument: str, what: str, *, method: str = "from_pretrained",
                    **kwargs: Any) -> Any:
    """``cls.from_pretrained(location, **kwargs)`` with failures turned into ``ModelLoadError``.

    Args:
        cls: a diffusers/transformers class with ``from_pretrained``.
        location: resolved local path or hub id (see ``resolve_location``).
        kind: ``"local"`` or ``"hub"``, as returned by ``resolve_location``.
        argument: the argument's name for error messages.
        what: what is being loaded, for error messages (e.g. ``"DiT pipeline"``).
        method: the class's loading method (``"load_config"`` reads only the configuration).
        **kwargs: passed to ``from_pretrained``.

    Returns:
        The loaded object.

    Raises:
        ModelLoadError: the location could not be loaded as ``what``.
    """
    tried = "local directory" if kind == "local" else "hub repo id (HF_HUB_OFFLINE / local cache honoured)"
    try:
        with warnings.catch_warnings():
            # Recent diffusers rename torch_dtype to dtype; older versions, which pyproject allows,
            # know only torch_dtype. Keep it, without a deprecation notice on every run.
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            # diffusers' load_config passes an argument huggingface_hub has deprecated; not the user's concern.
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
            return getattr(cls, method)(location, **kwargs)
    except LOAD_ERRORS as exc:
        raise ModelLoadError(
            f"{argument}: could not load a {what} from '{location}' as a {tried}: {first_line(exc)}") from exc
