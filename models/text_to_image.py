"""Which text-to-image pipeline a ``--model_path`` names, and loading it for ``parallel_sd.py`` / ``parallel_sd_winit.py``.

The family comes from the pipeline's ``model_index.json`` (``_class_name``): read from a local
directory before anything heavy is imported (so flags that do not apply fail at once), fetched
for a hub id when the model loads. ``tiny``, ``tiny-sdxl``, ``tiny-sd3`` and ``tiny-flux`` name
the tiny random-weight pipelines built offline.

- ``StableDiffusionPipeline`` (SD 1.x / 2.x): ``models.sd.SDAdapter``, DDIM from the pipeline's
  scheduler configuration, as the reference scripts.
- ``StableDiffusionXLPipeline``, ``StableDiffusion3Pipeline``, ``FluxPipeline``:
  ``models.prepared.PreparedPipelineAdapter``, which drives the solve through
  ``paratAA.pipelines.prepare``: the pipeline's own prompt encoding, guidance and scheduler (Euler
  for SDXL, flow matching for SD3 and Flux).

This module imports neither torch nor diffusers at import time.
"""

from __future__ import annotations

import json
import os
from typing import Any

from paratAA.cli import UsageError

from .loading import ModelLoadError, load_pretrained, resolve_location

__all__ = ["SCRIPT_PIPELINES", "TINY_PIPELINES", "check_flags", "load_text_to_image", "pipeline_class"]

SD = "StableDiffusionPipeline"
SDXL = "StableDiffusionXLPipeline"
SD3 = "StableDiffusion3Pipeline"
FLUX = "FluxPipeline"
SCRIPT_PIPELINES = (SD, SDXL, SD3, FLUX)
TINY_PIPELINES = {"tiny": SD, "tiny-sdxl": SDXL, "tiny-sd3": SD3, "tiny-flux": FLUX}
# The scheduler each family samples with here (for messages).
SAMPLERS = {SD: "DDIM", SDXL: "Euler (EulerDiscreteScheduler)", SD3: "flow-matching Euler", FLUX: "flow-matching Euler"}


def pipeline_class(model_path: str) -> str | None:
    """The pipeline class ``model_path`` holds, without loading it; None for a hub id (known once loaded).

    Raises:
        ModelLoadError: a path that does not exist, a local path that is not a diffusers pipeline
            directory, or a ``model_index.json`` without ``_class_name``.
    """
    if model_path in TINY_PIPELINES:
        return TINY_PIPELINES[model_path]
    kind, location = resolve_location(model_path, "model_path")
    if kind == "hub":
        return None
    index = os.path.join(location, "model_index.json")
    if not os.path.isfile(index):
        raise ModelLoadError(f"model_path: '{location}' is not a diffusers pipeline directory (no model_index.json)")
    try:
        with open(index) as file:
            name = json.load(file).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelLoadError(f"model_path: could not read '{index}': {exc}") from exc
    if not isinstance(name, str):
        raise ModelLoadError(f"model_path: '{index}' names no pipeline class (_class_name)")
    return name


def check_flags(name: str | None, *, eta: float, negative_prompt: str) -> None:
    """Refuse flags that do not apply to pipeline class ``name`` (None: not known yet, nothing checked).

    Raises:
        UsageError: an unsupported class, ``--eta`` > 0 for a sampler without it, a negative prompt for Flux.
    """
    if name is None:
        return
    if name not in SCRIPT_PIPELINES:
        hint = " (use parallel_dit.py for DiT)" if name == "DiTPipeline" else ""
        raise UsageError(f"--model_path: a {name} is not supported by this script{hint}; supported: "
                         f"{', '.join(SCRIPT_PIPELINES)}")
    if name != SD and eta != 0:
        raise UsageError(f"--eta: only DDIM (Stable Diffusion 1.x/2.x) has eta; a {name} samples with "
                         f"{SAMPLERS[name]}, which is deterministic: drop --eta (got {eta})")
    if name == FLUX and negative_prompt.strip():
        raise UsageError("--negative_prompt: not supported for a FluxPipeline (its guidance is embedded in the "
                         "network, set by --cfg_scale); drop --negative_prompt")


def _hub_pipeline_class(location: str) -> str:
    """``_class_name`` of a hub id's ``model_index.json`` (HF_HUB_OFFLINE and the local cache honoured)."""
    from diffusers import DiffusionPipeline

    config = load_pretrained(DiffusionPipeline, location, "hub", "model_path", "pipeline's model_index.json",
                             method="load_config")
    name = config.get("_class_name")
    if not isinstance(name, str):
        raise ModelLoadError(f"model_path: the model_index.json of '{location}' names no pipeline class")
    return name


def load_text_to_image(model_path: str, device: Any = "cpu", fp16: bool = False, *, eta: float = 0.0,
                       negative_prompt: str = "", max_batch_size: int = 64) -> Any:
    """Load ``model_path`` as the scripts' adapter, after checking the flags that depend on its family.

    Args:
        model_path: ``tiny`` / ``tiny-sdxl`` / ``tiny-sd3`` / ``tiny-flux``, a hub id or a local
            diffusers pipeline directory.
        device, fp16, max_batch_size: where and how the networks run.
        eta, negative_prompt: the script's flags, checked against the family (``check_flags``).

    Returns:
        An ``SDAdapter`` (SD 1.x/2.x) or a ``PreparedPipelineAdapter`` (SDXL, SD3, Flux): both give
        ``make_schedule``, ``sample_noise``, ``eps_fn``, ``decode`` and ``sequential_reference``.

    Raises:
        ModelLoadError: the location cannot be loaded; UsageError: a flag that does not apply.
    """
    name = pipeline_class(model_path)
    if name is None:
        name = _hub_pipeline_class(model_path)
    check_flags(name, eta=eta, negative_prompt=negative_prompt)
    if name == SD:
        from .sd import load_sd

        return load_sd(model_path, device=device, fp16=fp16, max_batch_size=max_batch_size)
    from .prepared import load_prepared

    return load_prepared(model_path, name, device=device, fp16=fp16, max_batch_size=max_batch_size)


MODEL_HELP = ("a text-to-image pipeline by hub id or local directory: Stable Diffusion 1.x/2.x (DDIM), SDXL (Euler), "
              "SD3 or Flux (flow matching), detected from its model_index.json; 'tiny', 'tiny-sdxl', 'tiny-sd3', "
              "'tiny-flux' build tiny random-weight pipelines offline")
