"""The entry scripts' models: which pipeline families each script runs, the flags that apply to them, loading.

``parallel_dit.py`` runs ``DiTPipeline`` s, ``parallel_sd.py`` and ``parallel_sd_winit.py`` the
text-to-image families (SD 1.x/2.x, SDXL, SD3, Flux). The family comes from the model's
``model_index.json`` (``paratAA.pipelines.loading.pipeline_class``): read from a local directory
before anything heavy is imported, so flags that do not apply fail at once; fetched for a hub id
when the model loads. ``--model_path tiny`` names the script's own tiny random-weight model
(``tiny-dit`` or ``tiny-sd``); ``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux`` the others.

Both loaders return a ``paratAA.pipelines.runner.PipelineRunner``: the model-specific code is the
pipeline family adapters', the same that serves ``paratAA.pipelines.sample``. This module imports
neither torch nor diffusers at import time.
"""

from __future__ import annotations

from typing import Any

from paratAA.errors import ModelLoadError, UsageError
from paratAA.pipelines.defaults import TINY_MODEL, TINY_PREFIX
from paratAA.pipelines.loading import DIT, FLUX, SD, SD3, SDXL, load_pipeline, pipeline_class

__all__ = ["MODEL_HELP", "RUN_PREFIXES", "SCRIPT_FAMILIES", "TEXT_TO_IMAGE", "TEXT_TO_VIDEO", "check_dit_family",
           "check_text_to_image_flags", "load_dit", "load_text_to_image", "script_pipeline_class"]

# Families run by parallel_sd*.py: their prompt, negative prompt and guidance scale are the flags'.
TEXT_TO_IMAGE = (SD, SDXL, SD3, FLUX, "PixArtSigmaPipeline", "SanaPipeline", "ChromaPipeline")
TEXT_TO_VIDEO = ("WanPipeline", "LTXPipeline", "CogVideoXPipeline")
SCRIPT_FAMILIES = TEXT_TO_IMAGE + TEXT_TO_VIDEO
# The sampler each family runs with here (for messages); --sampler rebuilds the scheduler of SD and SDXL only.
SAMPLERS = {SD: "DDIM", SDXL: "Euler (EulerDiscreteScheduler)", SD3: "flow-matching Euler", FLUX: "flow-matching Euler",
            "PixArtSigmaPipeline": "DPM-Solver++ 2M", "SanaPipeline": "its shipped scheduler",
            "ChromaPipeline": "flow-matching Euler", "WanPipeline": "its shipped scheduler (UniPC)",
            "LTXPipeline": "flow-matching Euler", "CogVideoXPipeline": "its shipped DDIM"}
SAMPLER_FAMILIES = (SD, SDXL)
# Run folders start with the family's short name.
RUN_PREFIXES = {SD: "SD", SDXL: "SDXL", SD3: "SD3", FLUX: "Flux", DIT: "DiT", "PixArtSigmaPipeline": "PixArt",
                "SanaPipeline": "Sana", "ChromaPipeline": "Chroma", "WanPipeline": "Wan", "LTXPipeline": "LTX",
                "CogVideoXPipeline": "CogVideoX"}
# What the tiny pipelines are called with: the video and newer image pipelines' own defaults are full-size.
TINY_CALLS = {"tiny-wan": "video", "tiny-wan22": "video", "tiny-ltx": "video", "tiny-cogvideox": "video",
              "tiny-pixart": "image", "tiny-sana": "image"}
MODEL_HELP = ("a text-to-image or text-to-video pipeline by hub id or local directory: Stable Diffusion 1.x/2.x "
              "(DDIM), SDXL (Euler), SD3, Flux, PixArt-Sigma, Sana, Chroma, Wan, LTX-Video or CogVideoX, detected "
              "from its model_index.json; 'tiny', 'tiny-sdxl', 'tiny-sd3', 'tiny-flux', 'tiny-pixart', 'tiny-chroma', "
              "'tiny-wan', 'tiny-ltx', 'tiny-cogvideox' build tiny random-weight pipelines offline")


def _model_path(model_path: str, own_tiny: str) -> str:
    """``tiny`` is the script's own tiny model (``tiny-dit`` / ``tiny-sd``)."""
    return TINY_PREFIX + own_tiny if model_path == TINY_MODEL else model_path


def script_pipeline_class(model_path: str, own_tiny: str) -> str | None:
    """``pipeline_class`` of a script's ``--model_path`` (``own_tiny``: what ``tiny`` means there)."""
    return pipeline_class(_model_path(model_path, own_tiny))


def check_text_to_image_flags(name: str | None, *, eta: float, negative_prompt: str,
                              sampler: str | None = None) -> None:
    """Refuse a family ``parallel_sd*.py`` does not run, or flags that do not apply to it (None: not known yet).

    Raises:
        UsageError: an unsupported class, ``--sampler`` for a flow-matching pipeline, ``--eta`` > 0 for a
            sampler without it, a negative prompt for Flux.
    """
    if name is None:
        return
    if name not in SCRIPT_FAMILIES:
        hint = " (use parallel_dit.py for DiT)" if name == DIT else ""
        raise UsageError(f"--model_path: a {name} is not supported by this script{hint}; supported: "
                         f"{', '.join(SCRIPT_FAMILIES)}")
    if sampler is not None and name not in SAMPLER_FAMILIES:
        raise UsageError(f"--sampler: a {name} samples with {SAMPLERS[name]}, the scheduler it ships; "
                         f"drop --sampler (got {sampler})")
    ddim = sampler == "ddim" or (sampler is None and name == SD)
    if not ddim and eta != 0:
        used = sampler or SAMPLERS[name]
        raise UsageError(f"--eta: only DDIM has eta; this {name} samples with {used}, which is deterministic: "
                         f"drop --eta or use --sampler ddim (got {eta})")
    if name == FLUX and negative_prompt.strip():
        raise UsageError("--negative_prompt: not supported for a FluxPipeline (its guidance is embedded in the "
                         "network, set by --cfg_scale); drop --negative_prompt")


def check_dit_family(name: str | None) -> None:
    """Refuse a model ``parallel_dit.py`` does not run (None: not known yet).

    Raises:
        UsageError: a pipeline other than a ``DiTPipeline``.
    """
    if name is not None and name != DIT:
        hint = " (use parallel_sd.py for text-to-image and text-to-video pipelines)" if name in SCRIPT_FAMILIES else ""
        raise UsageError(f"--model_path: a {name} is not supported by this script{hint}; it runs a {DIT}")


def _runner(model_path: str, pipe: Any, max_batch_size: int, sampler: str | None,
            call_arguments: dict[str, Any] | None = None, **adapter_options: Any) -> Any:
    from paratAA.pipelines.base import UnsupportedPipelineError
    from paratAA.pipelines.runner import PipelineRunner

    try:
        return PipelineRunner(pipe, model_path, max_batch_size=max_batch_size, sampler=sampler,
                              call_arguments=call_arguments, **adapter_options)
    except UnsupportedPipelineError as error:  # e.g. an SDXL directory shipping a scheduler that is not supported
        raise ModelLoadError(f"model_path: {error}") from error


def load_text_to_image(model_path: str, device: Any = "cpu", dtype: str = "float32", *, eta: float = 0.0,
                       negative_prompt: str = "", sampler: str | None = None, max_batch_size: int = 64) -> Any:
    """Load ``model_path`` as ``parallel_sd*.py``'s runner, after checking the flags that depend on its family.

    Args:
        model_path: ``tiny`` / ``tiny-sdxl`` / ``tiny-sd3`` / ``tiny-flux``, a hub id or a local
            diffusers pipeline directory.
        device, dtype, max_batch_size: where and how the network runs (``dtype``: ``"float32"``,
            ``"float16"`` or ``"bfloat16"``).
        eta, negative_prompt, sampler: the script's flags, checked against the family (``sampler``:
            ``paratAA.pipelines.runner.use_sampler``).

    Returns:
        A ``PipelineRunner``.

    Raises:
        ModelLoadError: the location cannot be loaded; UsageError: a flag that does not apply.
    """
    path = _model_path(model_path, "sd")

    def check(name: str) -> None:
        check_text_to_image_flags(name, eta=eta, negative_prompt=negative_prompt, sampler=sampler)

    pipe = load_pipeline(path, device, dtype, check=check)
    return _runner(path, pipe, max_batch_size, sampler, call_arguments=_tiny_call(path))


def _tiny_call(model_path: str) -> dict[str, Any] | None:
    """The frame count and size a tiny video or newer image pipeline is called with (None: its defaults)."""
    kind = TINY_CALLS.get(model_path)
    if kind is None:
        return None
    if kind == "video":
        from paratAA.pipelines.tiny_video import TINY_VIDEO_CALL as calls
    else:
        from paratAA.pipelines.tiny_image2 import TINY_IMAGE2_CALL as calls
    return dict(calls[model_path.removeprefix(TINY_PREFIX)])


def load_dit(model_path: str, vae_path: str | None = None, device: Any = "cpu", dtype: str = "float32", *,
             guidance: str = "all", sampler: str | None = None, max_batch_size: int = 64) -> Any:
    """Load ``model_path`` as ``parallel_dit.py``'s runner (``tiny``, ``digits``, a hub id, a pipeline or
    transformer directory, an original ``.pt`` checkpoint; see ``paratAA.pipelines.loading``).

    Args:
        model_path, vae_path: the model and, optionally, the VAE replacing its own.
        device, dtype, max_batch_size: where and how the network runs (as ``load_text_to_image``).
        guidance: DiT's guidance rule (``"all"``, ``"original"``; ``paratAA.pipelines.DiTAdapter``).
        sampler: ``"ddim"`` (None: the default) or ``"dpm++2m"`` (``paratAA.pipelines.runner.use_sampler``).

    Returns:
        A ``PipelineRunner``.

    Raises:
        ModelLoadError: the location cannot be loaded; UsageError: not a DiT.
    """
    path = _model_path(model_path, "dit")
    pipe = load_pipeline(path, device, dtype, vae_path=vae_path, check=check_dit_family)
    return _runner(path, pipe, max_batch_size, sampler, guidance=guidance)
