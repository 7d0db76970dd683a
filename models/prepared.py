"""SDXL, SD3 and Flux pipelines for the entry scripts, driven through ``paratAA.pipelines.prepare``.

``PreparedPipelineAdapter`` gives the scripts what ``SDAdapter`` gives them (``make_schedule``,
``sample_noise``, ``eps_fn``, ``decode``, ``sequential_reference``), but everything model-specific
is the pipeline's own, reached through ``prepare``: prompt encoding, guidance (SDXL's and SD3's
classifier-free guidance, Flux's embedded guidance, all set by ``--cfg_scale``), the scheduler
(Euler for SDXL, flow-matching Euler for SD3 and Flux, as configured by the pipeline) and decoding.

Latents are in the pipeline's own layout (Flux: packed ``(tokens, channels)``). Sample k's ``x[T]``
is ``paratAA.noise.sample_noise``'s draw from seed ``--seed + k`` times the scheduler's
``init_noise_sigma`` (1 for flow matching), exactly what the pipeline makes of ``latents=`` that
draw; ``sequential_reference`` runs the pipeline's own ``__call__`` with it.
"""

from __future__ import annotations

from typing import Any

import PIL.Image
import torch

from paratAA import EpsFn, Schedule
from paratAA.noise import sample_noise
from paratAA.pipelines import prepare

from .adapter import place
from .loading import load_pretrained, resolve_location

__all__ = ["PreparedPipelineAdapter", "load_prepared"]

# Call arguments of the tiny pipelines: Flux's default image size is 1024 pixels and its T5 reads 512
# tokens; the tiny ones are 16x16 with 16 tokens.
TINY_CALL_ARGUMENTS = {"tiny-sdxl": {}, "tiny-sd3": {}, "tiny-flux": dict(height=16, width=16, max_sequence_length=16)}
SCHEDULE_PROMPT = "a"  # the schedule does not depend on the prompt; prepare needs one


class PreparedPipelineAdapter:
    """A text-to-image diffusers pipeline (SDXL, SD3, Flux) as the entry scripts' model adapter.

    Attributes:
        model_id: what was loaded (``tiny-sd3``, a hub id or a path).
        pipe: the pipeline.
        pipeline_class: its class name.
        device, dtype, max_batch_size: where and how the network runs (rows per forward pass).
        call_arguments: further arguments of every pipeline call (e.g. ``height``, ``width``).
        schedule: the schedule of the latest ``make_schedule`` (None before).
        latent_shape: one sample's latent in the pipeline's layout (known after ``make_schedule``).
    """

    def __init__(self, model_id: str, pipe: Any, device: torch.device, dtype: torch.dtype, max_batch_size: int,
                 call_arguments: dict[str, Any] | None = None):
        self.model_id, self.pipe, self.device, self.dtype = model_id, pipe, torch.device(device), dtype
        self.pipeline_class = type(pipe).__name__
        self.max_batch_size = max_batch_size
        self.call_arguments = dict(call_arguments or {})
        self.schedule: Schedule | None = None
        self.latent_shape: tuple[int, ...] | None = None
        self._decoder: Any = None
        self._init_noise_sigma = 1.0

    def _arguments(self, prompts: list[str], negative_prompts: list[str] | None, cfg_scale: float,
                   num_steps: int) -> dict[str, Any]:
        """The pipeline call's arguments (a negative prompt only when one is not empty, so SDXL's
        ``force_zeros_for_empty_prompt`` applies as in a plain call)."""
        arguments = dict(prompt=list(prompts), guidance_scale=float(cfg_scale), num_inference_steps=num_steps,
                         output_type="pil", **self.call_arguments)
        if negative_prompts and any(n.strip() for n in negative_prompts):
            arguments["negative_prompt"] = list(negative_prompts)
        return arguments

    def _prepare(self, prompts: list[str], negative_prompts: list[str] | None, cfg_scale: float, num_steps: int,
                 latents: torch.Tensor | None = None) -> Any:
        extra = {"latents": latents} if latents is not None else {"generator": torch.Generator("cpu").manual_seed(0)}
        return prepare(self.pipe, max_batch_size=self.max_batch_size,
                       **self._arguments(prompts, negative_prompts, cfg_scale, num_steps), **extra)

    def make_schedule(self, num_steps: int, eta: float) -> Schedule:
        """The pipeline's own schedule of ``num_steps`` steps (its scheduler after ``set_timesteps``).

        Raises:
            ValueError: ``eta`` is not 0 (Euler and flow matching have none) or a bad step count.
        """
        if eta != 0:
            raise ValueError(f"eta: a {self.pipeline_class} samples deterministically; eta must be 0 (got {eta})")
        if not (isinstance(num_steps, int) and num_steps >= 1):
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        prepared = self._prepare([SCHEDULE_PROMPT], None, 1.0, num_steps)
        self.schedule, self._decoder = prepared.schedule, prepared
        self.latent_shape = tuple(prepared.noise.shape[2:])
        # SDXL's pipeline multiplies given latents by it; flow-matching schedulers have none (SD3, Flux do not scale).
        self._init_noise_sigma = float(getattr(self.pipe.scheduler, "init_noise_sigma", 1.0))
        return self.schedule

    def _bound(self) -> Schedule:
        if self.schedule is None:
            raise ValueError("schedule: call make_schedule(num_steps, eta) first")
        return self.schedule

    def sample_noise(self, seed: int, num_samples: int, num_steps: int, device: Any = None) -> torch.Tensor:
        """``paratAA.noise.sample_noise`` in the pipeline's latent layout, ``x[T]`` scaled by ``init_noise_sigma``."""
        self._bound()
        noise = sample_noise(seed, num_samples, num_steps, self.latent_shape, device=device)
        noise[:, num_steps] *= self._init_noise_sigma
        return noise

    def eps_fn(self, prompts: list[str], negative_prompts: list[str] | None, cfg_scale: float) -> EpsFn:
        """The pipeline's guided network output per row, conditioned on each sample's prompt (``prepare``'s)."""
        schedule = self._bound()
        latents = torch.zeros((len(prompts), *self.latent_shape))  # only its shape matters here
        return self._prepare(prompts, negative_prompts, cfg_scale, schedule.num_steps, latents).eps_fn

    def decode(self, latents: torch.Tensor) -> list[PIL.Image.Image]:
        """Final latents ``(n, *latent_shape)`` to PIL images, as the pipeline's call ends."""
        self._bound()
        return self._decoder.decode(latents, output_type="pil")

    def sequential_reference(self, noise: torch.Tensor, prompts: list[str], negative_prompts: list[str] | None,
                             cfg_scale: float, num_steps: int, eta: float) -> torch.Tensor:
        """Final latents of the pipeline's own ``__call__`` (its sequential loop) from the same ``x[T]``."""
        latents = (noise[:, num_steps] / self._init_noise_sigma).to(self.device, torch.float32)
        arguments = {**self._arguments(prompts, negative_prompts, cfg_scale, num_steps), "output_type": "latent"}
        return self.pipe(**arguments, latents=latents).images.to(torch.float64)


def load_prepared(model_path: str, pipeline_class: str, device: Any = "cpu", fp16: bool = False,
                  max_batch_size: int = 64) -> PreparedPipelineAdapter:
    """Load an SDXL, SD3 or Flux pipeline (``tiny-*``, hub id or directory) as a ``PreparedPipelineAdapter``.

    Raises:
        ModelLoadError: the location cannot be loaded.
    """
    import diffusers

    dtype = torch.float16 if fp16 else torch.float32
    if model_path in TINY_CALL_ARGUMENTS:
        from paratAA.pipelines.tiny import tiny_pipeline

        pipe = tiny_pipeline(model_path.removeprefix("tiny-"))
    else:
        kind, location = resolve_location(model_path, "model_path")
        cls = getattr(diffusers, pipeline_class)
        index = load_pretrained(cls, location, kind, "model_path", "pipeline's model_index.json", method="load_config")
        # Components the pipeline holds none of (missing, or [null, null] in model_index.json) are passed
        # as None, which from_pretrained requires: an SD3 saved without its T5, which SD3 allows.
        absent = {name: None for name in cls._get_signature_keys(cls)[0]
                  if not isinstance(index.get(name), (list, tuple)) or index[name][0] is None}
        pipe = load_pretrained(cls, location, kind, "model_path", pipeline_class, torch_dtype=dtype, **absent)
        pipe.set_progress_bar_config(disable=True)
    pipe = place(pipe, device, dtype)
    return PreparedPipelineAdapter(model_path, pipe, torch.device(device), dtype, max_batch_size,
                                   TINY_CALL_ARGUMENTS.get(model_path))
