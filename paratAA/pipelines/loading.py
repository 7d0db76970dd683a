"""A ``--model_path`` to a diffusers pipeline: which pipeline class it holds, and loading it.

A model path is one of:

- ``tiny-<kind>`` (``tiny-dit``, ``tiny-sd``, ``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux``): a tiny
  random-weight pipeline built offline (``paratAA.pipelines.tiny``);
- ``digits``, ``patches``: the small trained pixel-space DiTs in the repository's ``models/`` (``TRAINED_MODELS``);
- a local diffusers pipeline directory (``model_index.json``) or a hub repo id of one, loaded with
  the class its ``model_index.json`` names; components listed as ``[null, null]`` (a pixel-space
  DiT without VAE, an SD3 saved without T5) are left out;
- for DiT also a transformer-only directory (``config.json`` of a ``DiTTransformer2DModel``) or an
  original DiT checkpoint file (``.pt``, converted by ``dit_checkpoint``): these bring no VAE and
  get ``--vae_path`` (default ``stabilityai/sd-vae-ft-ema``, the DiT authors') and DiT's training
  schedule.

``pipeline_class`` answers without loading weights (a local path is classified from its files,
before anything heavy is imported; a hub id only once its ``model_index.json`` is fetched), so a
script can refuse flags that do not apply to the family before it loads. Every failure is a
one-line ``ModelLoadError`` naming the argument and the location (``locations``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .defaults import DEFAULT_DIT_VAE, DIT_SCHEDULER_CONFIG, MODEL_DTYPES, TRAINED_MODELS, tiny_kind, trained_model_dir
from .locations import ModelLoadError, load_pretrained, quiet_library_notices, resolve_location

__all__ = ["DIT", "FLUX", "SD", "SD3", "SDXL", "load_pipeline", "pipeline_class", "place"]

SD = "StableDiffusionPipeline"
SDXL = "StableDiffusionXLPipeline"
SD3 = "StableDiffusion3Pipeline"
FLUX = "FluxPipeline"
DIT = "DiTPipeline"
TINY_CLASSES = {"dit": DIT, "sd": SD, "sdxl": SDXL, "sd3": SD3, "flux": FLUX,
                "wan": "WanPipeline", "wan22": "WanPipeline", "ltx": "LTXPipeline", "hunyuan": "HunyuanVideoPipeline",
                "cogvideox": "CogVideoXPipeline", "qwenimage": "QwenImagePipeline", "sana": "SanaPipeline",
                "pixart": "PixArtSigmaPipeline", "chroma": "ChromaPipeline", "flux-kontext": "FluxKontextPipeline"}
_DIT_TRANSFORMER = "DiTTransformer2DModel"


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as file:
            content = json.load(file)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model_path: could not read '{path}': {exc}") from exc
    if not isinstance(content, dict):
        raise ModelLoadError(f"model_path: '{path}' is not a JSON object")
    return content


def _local_kind(location: str) -> str:
    """``"checkpoint"`` (a file), ``"pipeline"`` (``model_index.json``) or ``"transformer"`` (a DiT's ``config.json``)."""
    if os.path.isfile(location):
        return "checkpoint"
    if os.path.isfile(os.path.join(location, "model_index.json")):
        return "pipeline"
    if os.path.isfile(os.path.join(location, "config.json")):
        return "transformer"
    raise ModelLoadError(f"model_path: '{location}' is neither a diffusers pipeline directory (model_index.json) "
                         "nor a DiT transformer directory (config.json)")


def _location(model_path: str) -> tuple[str, str]:
    if model_path not in TRAINED_MODELS:
        return resolve_location(model_path, "model_path")
    folder = trained_model_dir(model_path)
    if not folder.is_dir():
        raise ModelLoadError(f"model_path: '{model_path}' is the trained model in the repository's models/{model_path}, "
                             f"not found at {folder} (an installed copy of paratAA does not ship it): run from "
                             "a checkout or pass that directory's path")
    return resolve_location(str(folder), "model_path")


@dataclass(frozen=True)
class _Source:
    """Where a non-tiny ``model_path`` points and what it holds.

    Attributes:
        where, location: ``resolve_location``'s answer (``"local"`` or ``"hub"``, the path or id).
        layout: ``"pipeline"``, ``"transformer"`` (a DiT's ``config.json``) or ``"checkpoint"`` (a file).
        name: the pipeline class; None for a hub id whose ``model_index.json`` was not fetched.
        index: a pipeline's ``model_index.json`` (None until read, and for the DiT layouts).
    """

    where: str
    location: str
    layout: str
    name: str | None
    index: dict[str, Any] | None


def _source(model_path: str, fetch_hub: bool) -> _Source:
    """Classify ``model_path`` (not a tiny name), reading a pipeline's ``model_index.json`` once: from
    disk, or for a hub id only when ``fetch_hub`` (diffusers' ``load_config``: offline mode and cache
    honoured)."""
    where, location = _location(model_path)
    layout = _local_kind(location) if where == "local" else "pipeline"
    if layout == "transformer":
        name = _read_json(os.path.join(location, "config.json")).get("_class_name")
        if name != _DIT_TRANSFORMER:
            raise ModelLoadError(f"model_path: '{location}' is not a diffusers pipeline directory (no model_index.json) "
                                 f"and its config.json is not a {_DIT_TRANSFORMER}'s (got {name!r})")
    if layout != "pipeline":
        return _Source(where, location, layout, DIT, None)
    if where == "local":
        index = _read_json(os.path.join(location, "model_index.json"))
    elif fetch_hub:
        from diffusers import DiffusionPipeline

        index = load_pretrained(DiffusionPipeline, location, "hub", "model_path", "pipeline's model_index.json",
                                method="load_config")
    else:
        return _Source(where, location, layout, None, None)
    name = index.get("_class_name")
    if not isinstance(name, str):
        raise ModelLoadError(f"model_path: the model_index.json of '{location}' names no pipeline class (_class_name)")
    return _Source(where, location, layout, name, dict(index))


def pipeline_class(model_path: str) -> str | None:
    """The diffusers pipeline class ``model_path`` holds, without loading weights; None for a hub id.

    Raises:
        ModelLoadError: a path that does not exist, a directory that is neither a pipeline nor a DiT
            transformer, or a ``model_index.json`` that names no class.
    """
    kind = tiny_kind(model_path)
    return TINY_CLASSES[kind] if kind is not None else _source(model_path, fetch_hub=False).name


def place(module: Any, device: Any, dtype: Any) -> Any:
    """Move a model or pipeline to ``device``, and cast it only if its dtype differs (diffusers warns on every cast)."""
    module = module.to(device)
    return module if module.dtype == dtype else module.to(dtype)


def load_pipeline(model_path: str, device: Any = "cpu", dtype: Any = "float32", *, vae_path: str | None = None,
                  check: Callable[[str], None] | None = None) -> Any:
    """Load ``model_path`` (see the module docstring) as a diffusers pipeline, in eval mode, progress bar off.

    Args:
        model_path: ``tiny-<kind>``, ``digits``, a hub id, a local pipeline directory, or (DiT) a
            transformer directory or an original checkpoint file.
        device: where the pipeline runs.
        dtype: the precision to load and run in: a torch dtype or its name (``"float32"``,
            ``"float16"``, ``"bfloat16"``).
        vae_path: hub id or directory of an ``AutoencoderKL`` (or of a pipeline with a ``vae``
            folder) replacing the pipeline's VAE; default: the pipeline's own (none for a
            pixel-space pipeline), ``stabilityai/sd-vae-ft-ema`` for a DiT transformer or checkpoint.
        check: called with the pipeline class name before any weights load (a script refuses a
            family it does not run, or flags that do not apply to it, by raising).

    Returns:
        The pipeline. Its scheduler is the one it ships (DiT transformers and checkpoints: DDIM of
        DiT's training schedule); ``paratAA.pipelines.runner`` chooses the sampler.

    Raises:
        ModelLoadError: the location cannot be loaded.
    """
    import diffusers
    import torch

    quiet_library_notices()
    kind = tiny_kind(model_path)
    source = None if kind is not None else _source(model_path, fetch_hub=True)
    name = TINY_CLASSES[kind] if source is None else source.name
    if check is not None:
        check(name)
    if isinstance(dtype, str) and dtype in MODEL_DTYPES:
        dtype = getattr(torch, dtype)
    if dtype not in tuple(getattr(torch, name) for name in MODEL_DTYPES):
        raise ValueError(f"dtype must be one of {MODEL_DTYPES} (or that torch dtype), got {dtype!r}")
    if source is None:
        from .tiny import tiny_pipeline

        pipe = tiny_pipeline(kind)
    else:
        if source.layout == "pipeline":
            pipe = _load_pipeline_directory(source, dtype)
        else:
            if source.layout == "checkpoint":
                from .dit_checkpoint import load_dit_checkpoint

                transformer = load_dit_checkpoint(source.location)
            else:
                transformer = load_pretrained(diffusers.DiTTransformer2DModel, source.location, source.where,
                                              "model_path", "DiT transformer", torch_dtype=dtype)
            pipe = diffusers.DiTPipeline(transformer=transformer, vae=_load_vae(vae_path or DEFAULT_DIT_VAE, dtype),
                                         scheduler=diffusers.DDIMScheduler(**DIT_SCHEDULER_CONFIG))
            vae_path = None  # used
    if vae_path is not None:
        pipe.register_modules(vae=_load_vae(vae_path, dtype))
    pipe = place(pipe, device, dtype)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_pipeline_directory(source: _Source, dtype: Any) -> Any:
    """``from_pretrained`` of a pipeline directory or hub id with the class its ``model_index.json``
    names, the components it lists as absent passed as None."""
    import diffusers

    name, location, where, index = source.name, source.location, source.where, source.index
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ModelLoadError(f"model_path: '{location}' holds a {name}, which this diffusers version does not have")
    # Components the pipeline holds none of (missing, or [null, null] in model_index.json) are passed as
    # None, which from_pretrained requires: a pixel-space DiT without VAE, an SD3 saved without its T5.
    absent = {component: None for component in cls._get_signature_keys(cls)[0]
              if not isinstance(index.get(component), (list, tuple)) or index[component][0] is None}
    if "safety_checker" in cls._get_signature_keys(cls)[0]:
        # Images are decoded by the adapters, which never call it: not loaded.
        absent.update(safety_checker=None, requires_safety_checker=False)
    from diffusers.utils import logging as diffusers_logging

    # No "Loading pipeline components" bar opening every run; the caller's setting is restored.
    bars_were_on = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        return load_pretrained(cls, location, where, "model_path", name, torch_dtype=dtype, **absent)
    finally:
        if bars_were_on:
            diffusers_logging.enable_progress_bar()


def _load_vae(vae_path: str, dtype: Any) -> Any:
    from diffusers import AutoencoderKL

    where, location = resolve_location(vae_path, "vae_path")
    subfolder = None
    if where == "local" and not os.path.isfile(os.path.join(location, "config.json")) \
            and os.path.isfile(os.path.join(location, "vae", "config.json")):
        subfolder = "vae"  # a pipeline directory: use its VAE
    return load_pretrained(AutoencoderKL, location, where, "vae_path", "VAE (AutoencoderKL)",
                           subfolder=subfolder, torch_dtype=dtype)
