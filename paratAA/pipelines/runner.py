"""``PipelineRunner``: a loaded diffusers pipeline as the inputs of ``paratAA.solve``, for the entry scripts.

The scripts (and the benchmarks) own the noise and the solve: per-sample noise from
``paratAA.noise.sample_noise`` (sample k from seed ``--seed + k``, whatever the batch or process
count), their own tolerances, windows, warm starts and run folders. What is model-specific comes
from the pipeline through ``paratAA.pipelines.prepare`` and its family adapter, the same code that
serves ``sample(pipe, ...)``: prompt encoding, guidance as the pipeline does it, the network
called in its dtype and in micro-batches, the scheduler's configuration, decoding.

The sampler (``use_sampler``): SD 1.x/2.x and DiT sample with DDIM as the reference scripts do,
built from the pipeline's scheduler configuration (SD: no clipping; DiT: DiT's respacing,
``defaults.DIT_DDIM``), so ``--eta`` applies; SDXL, SD3 and Flux keep the scheduler they ship
(Euler, flow-matching Euler: deterministic). ``sampler="ddim"``, ``"dpm++2m"`` (DPM-Solver++ 2M)
or ``"unipc"`` (UniPC) builds that one instead (not for the flow-matching pipelines).

Conditioning is the pipeline call's own arguments, one entry per sample: ``text_conditioning`` /
``class_conditioning`` build them.

The sequential oracle (``sequential_reference``) is the pipeline's own ``__call__`` started from
the same ``x[T]`` where it can be (deterministic sampling, float32, and the family adapter saying
the pipeline computes what its ``eps_fn`` does), else a loop over diffusers' own
``scheduler.step`` in float64 with the same network calls.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator
from typing import Any

import torch

from paratAA import EpsFn, Schedule
from paratAA.noise import sample_noise
from paratAA.pipelines.defaults import SAMPLERS

from .base import MISSING, delegate, restore
from .defaults import DIT_DDIM
from .sampling import Prepared, adapter_for, prepare

__all__ = ["SAMPLERS", "PipelineRunner", "class_conditioning", "dit_guidance_scale", "text_conditioning",
           "use_sampler"]

# DDIM over a pipeline's scheduler configuration, with these overrides per pipeline class.
_DDIM_OVERRIDES = {"StableDiffusionPipeline": dict(clip_sample=False), "DiTPipeline": DIT_DDIM,
                   "StableDiffusionXLPipeline": dict(clip_sample=False)}
_OWN_SCHEDULER_ONLY = ("StableDiffusion3Pipeline", "FluxPipeline")  # flow matching: the shipped scheduler


def use_sampler(pipe: Any, sampler: str | None) -> None:
    """Give ``pipe`` the scheduler ``sampler`` names, built from its scheduler configuration.

    ``"ddim"``: DDIM (SD: no clipping; DiT: DiT's respacing, ``defaults.DIT_DDIM``); ``"dpm++2m"``:
    DPM-Solver++ 2M (``DPMSolverMultistepScheduler``); ``"unipc"``: UniPC (``UniPCMultistepScheduler``,
    diffusers' defaults: bh2, order 2, corrector on); None: DDIM for SD 1.x/2.x and DiT, as the
    reference scripts, the shipped scheduler otherwise.

    Raises:
        ValueError: an unknown sampler, or one a flow-matching pipeline (SD3, Flux) cannot take.
    """
    name = type(pipe).__name__
    if sampler is None:
        sampler = "ddim" if name in ("StableDiffusionPipeline", "DiTPipeline") else None
    if sampler is None:
        return
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS} or None, got {sampler!r}")
    if name in _OWN_SCHEDULER_ONLY:
        raise ValueError(f"sampler: a {name} samples with flow-matching Euler, the scheduler it ships; "
                         f"{sampler} does not apply")
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    config = pipe.scheduler.config
    if sampler == "ddim":
        pipe.scheduler = DDIMScheduler.from_config(config, **_DDIM_OVERRIDES.get(name, {}))
    elif sampler == "unipc":
        pipe.scheduler = UniPCMultistepScheduler.from_config(config)
    else:
        pipe.scheduler = DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)


def _scale(guidance_scale: float) -> float:
    if isinstance(guidance_scale, bool) or not (isinstance(guidance_scale, (int, float))
                                                and math.isfinite(guidance_scale)):
        raise ValueError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    return float(guidance_scale)


def _texts(name: str, texts: Any, count: int | None = None) -> list[str]:
    if isinstance(texts, str) or not texts or not all(isinstance(t, str) for t in texts) \
            or (count is not None and len(texts) != count):
        size = "a non-empty list" if count is None else f"a list of {count}"
        raise ValueError(f"{name}: expected {size} strings, one per sample, got {texts!r}")
    return list(texts)


def text_conditioning(prompts: list[str], negative_prompts: list[str] | None, guidance_scale: float) -> dict[str, Any]:
    """A text-to-image call's conditioning: one prompt (and negative prompt, None or ``[]`` for
    empty ones) per sample. The negative prompts are passed only when one is not empty, so that
    SDXL's ``force_zeros_for_empty_prompt`` applies as in a plain call (SD: ``""`` either way).

    Raises:
        ValueError: not lists of strings of one length, or a guidance scale that is not a finite number.
    """
    conditioning: dict[str, Any] = {"prompt": _texts("prompts", prompts), "guidance_scale": _scale(guidance_scale)}
    if negative_prompts is not None and (isinstance(negative_prompts, str) or len(negative_prompts)):
        negative_prompts = _texts("negative_prompts", negative_prompts, len(prompts))
        if any(n.strip() for n in negative_prompts):
            conditioning["negative_prompt"] = negative_prompts
    return conditioning


def class_conditioning(class_labels: Any, guidance_scale: float) -> dict[str, Any]:
    """A ``DiTPipeline`` call's conditioning: one integer class label per sample (range checked by the
    adapter against the model).

    Raises:
        ValueError: labels that are not a 1-D integer sequence, or a guidance scale that is not finite.
    """
    labels = torch.as_tensor(class_labels)
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"class_labels: expected a 1-D integer tensor or list, got {class_labels!r}")
    return {"class_labels": labels.tolist(), "guidance_scale": _scale(guidance_scale)}


def dit_guidance_scale(guidance_scale: float, num_classes: int) -> float:
    """The guidance scale a DiT is sampled with by the scripts and benchmarks: ``guidance_scale``, except
    for a one-class model (``models/patches``), which is unconditional: guiding it against its null
    class means nothing, so 1."""
    return guidance_scale if num_classes > 1 else 1.0


class PipelineRunner:
    """A diffusers pipeline as ``make_schedule``, ``sample_noise``, ``eps_fn``, ``decode`` and ``sequential_reference``.

    Attributes:
        pipe: the pipeline, its scheduler set by ``use_sampler`` (module docstring).
        adapter: its family adapter (``paratAA.pipelines.families``).
        model_id: what was loaded (``tiny-sd3``, a hub id or a path), for run records.
        pipeline_class: the pipeline's class name.
        device, dtype: where and in which dtype the network runs.
        call_arguments: further arguments of every pipeline call (the tiny Flux's image size, ...).
        schedule: the latest ``make_schedule`` result (None before the first call).
        latent_shape: one sample's latent in the pipeline's layout (Flux: packed tokens), known
            after ``make_schedule``.
    """

    def __init__(self, pipe: Any, model_id: str, *, max_batch_size: int = 64,
                 call_arguments: dict[str, Any] | None = None, sampler: str | None = None, **adapter_options: Any):
        self.pipe, self.model_id = pipe, model_id
        self.pipeline_class = type(pipe).__name__
        use_sampler(pipe, sampler)
        self.adapter = adapter_for(pipe, max_batch_size, **adapter_options)
        self.device, self.dtype = self.adapter.module.device, self.adapter.module.dtype
        self.call_arguments = dict(call_arguments or {})
        self.schedule: Schedule | None = None
        self.latent_shape: tuple[int, ...] | None = None
        self._decoder: Prepared | None = None
        self._init_noise_sigma = 1.0

    @property
    def max_batch_size(self) -> int:
        """Most rows per network forward pass (guidance copies included)."""
        return self.adapter.max_batch_size

    # ------------------------------------------------------------------------------------ schedule
    def _prepare(self, conditioning: dict[str, Any], num_steps: int) -> Prepared:
        # The pipeline draws (unused) initial latents from this generator; the solve gets the caller's noise.
        return prepare(self.pipe, adapter=self.adapter, **self.call_arguments, **conditioning,
                       num_inference_steps=num_steps, output_type="pil",
                       generator=torch.Generator("cpu").manual_seed(0))

    def make_schedule(self, num_steps: int, eta: float = 0.0) -> Schedule:
        """The sampler's float64 schedule of ``num_steps`` steps; also remembered as ``self.schedule``.

        Raises:
            ValueError: a bad step count, or ``eta`` > 0 for a deterministic sampler (Euler, flow matching).
            paratAA.ScheduleError: a step count the scheduler cannot take.
        """
        if not (isinstance(num_steps, int) and not isinstance(num_steps, bool) and num_steps >= 1):
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        ddim = type(self.pipe.scheduler).__name__ == "DDIMScheduler"
        if eta != 0 and not ddim:
            raise ValueError(f"eta: a {self.pipeline_class} samples with {type(self.pipe.scheduler).__name__}, "
                             f"which is deterministic; eta must be 0 (got {eta})")
        prepared = self._prepare(self.adapter.placeholder_arguments, num_steps)
        # The pipeline's call set the scheduler to num_steps; DDIM's eta is not a pipeline argument everywhere.
        schedule = prepared.schedule if eta == 0 else Schedule.from_scheduler(self.pipe.scheduler, eta=eta)
        self.schedule, self._decoder = schedule, prepared
        self.latent_shape = tuple(prepared.noise.shape[2:])
        # SDXL's pipeline multiplies given latents by it; DDIM and flow matching have 1.
        self._init_noise_sigma = float(getattr(self.pipe.scheduler, "init_noise_sigma", 1.0))
        return schedule

    def _bound(self) -> Schedule:
        if self.schedule is None:
            raise ValueError("schedule: call make_schedule(num_steps, eta) first")
        return self.schedule

    def sample_noise(self, seed: int, num_samples: int, num_steps: int, device: Any = None) -> torch.Tensor:
        """``paratAA.noise.sample_noise`` in the pipeline's latent layout, ``x[T]`` scaled by ``init_noise_sigma``.

        Returns:
            float64 ``(num_samples, num_steps + 1, *latent_shape)``; ``[:, num_steps]`` is ``x[T]``.
        """
        self._bound()
        noise = sample_noise(seed, num_samples, num_steps, self.latent_shape, device=device)
        noise[:, num_steps] *= self._init_noise_sigma
        return noise

    # ------------------------------------------------------------------------------------- network
    def eps_fn(self, conditioning: dict[str, Any], schedule: Schedule | None = None) -> EpsFn:
        """``eps_fn(x, steps, samples)``: the pipeline's guided model output, row ``r`` conditioned on
        sample ``samples[r]``'s entry of ``conditioning``, at step ``steps[r]`` of ``schedule``.

        Args:
            conditioning: the pipeline call's conditioning arguments, one entry per sample
                (``text_conditioning``, ``class_conditioning``); the pipeline checks them.
            schedule: the schedule whose steps the rows name (default: the latest ``make_schedule``;
                another one, e.g. DDPM's over the same configuration, for benchmarks).
        """
        prepared = self._prepare(conditioning, (schedule or self._bound()).num_steps)
        return prepared.eps_fn if schedule is None else prepared.eps_fn_for(schedule)

    def decode(self, latents: torch.Tensor) -> list[Any]:
        """Final latents ``(n, *latent_shape)`` to PIL images, as the pipeline's call ends (a video
        pipeline's: per sample, the list of its frames)."""
        self._bound()
        if tuple(latents.shape[1:]) != self.latent_shape:
            raise ValueError(f"latents: expected shape (n, {', '.join(map(str, self.latent_shape))}), "
                             f"got {tuple(latents.shape)}")
        images: list[Any] = []
        for start in range(0, latents.shape[0], self.max_batch_size):
            images.extend(self._decoder.decode(latents[start:start + self.max_batch_size], output_type="pil"))
        return images

    # --------------------------------------------------------------------------------------- oracle
    def sequential_reference(self, noise: torch.Tensor, conditioning: dict[str, Any], eta: float = 0.0, *,
                             seed: int | None = None) -> torch.Tensor:
        """Final latents of diffusers' own sequential sampler from the same noise (an outside oracle).

        Which sampler runs:

        - the pipeline's own ``__call__`` when ``eta == 0``, the network is float32 (in float16
          the pipeline would round ``x[T]``), the family adapter computes what the pipeline does
          (not DiT's ``guidance="original"``, not a DiT without VAE or with other than 1000
          classes), and ``x[T]`` can be handed to it: as ``latents=`` (divided by
          ``init_noise_sigma``, which the pipeline multiplies back), or for ``DiTPipeline``, which
          draws its own, through per-sample generators seeded ``seed + k``, the draw
          ``sample_noise`` makes (checked: a mismatch is a ``ValueError``);
        - otherwise a loop over diffusers' ``scheduler.step(out, t, x)`` (DDIM: ``eta=eta,
          variance_noise=z_i``) in float64, with ``eps_fn(conditioning)`` as the network.

        Args:
            noise: float64 ``(B, T+1, *latent_shape)`` from ``sample_noise``, T the latest schedule's.
            conditioning: as for ``eps_fn``, one entry per sample.
            eta: DDIM eta.
            seed: the seed ``noise`` was drawn with (``DiTPipeline``'s own call needs it).

        Returns:
            float64 ``(B, *latent_shape)`` final latents (before decoding), on the network's device.
        """
        num_steps = self._bound().num_steps
        expected = (num_steps + 1, *self.latent_shape)
        if noise.dim() != len(expected) + 1 or tuple(noise.shape[1:]) != expected:
            raise ValueError(f"noise: expected shape (B, {', '.join(map(str, expected))}) for the latest schedule, "
                             f"got {tuple(noise.shape)}")
        by_pipeline = (eta == 0 and self.dtype == torch.float32 and self.adapter.runs_as_adapted()
                       and (self.adapter.initial_latents_argument is not None or seed is not None))
        if by_pipeline:
            return self._pipeline_call(noise, conditioning, seed)
        return self._scheduler_loop(noise, conditioning, eta)

    def _pipeline_call(self, noise: torch.Tensor, conditioning: dict[str, Any], seed: int | None) -> torch.Tensor:
        num_samples, num_steps = noise.shape[0], noise.shape[1] - 1
        arguments = {**self.call_arguments, **conditioning, "num_inference_steps": num_steps, "output_type": "latent"}
        latent_argument = self.adapter.initial_latents_argument
        if latent_argument is not None:
            arguments[latent_argument] = (noise[:, num_steps] / self._init_noise_sigma).to(self.device, torch.float32)
        else:
            arguments["generator"] = [torch.Generator("cpu").manual_seed(seed + k) for k in range(num_samples)]
            for k in range(num_samples):
                start = torch.randn((1, *self.latent_shape), generator=torch.Generator("cpu").manual_seed(seed + k))
                if not torch.equal(start[0].to(torch.float64), noise[k, num_steps].cpu()):
                    raise ValueError(f"seed: noise[{k}, T] was not drawn with seed {seed} + {k} "
                                     "(paratAA.noise.sample_noise)")
        with _last_step_recorded(self.pipe.scheduler) as last:
            self.pipe(**arguments)
        # DiT steps its guided batch as [samples, copies]: the first rows are the samples.
        return last["prev_sample"][:num_samples].to(torch.float64)

    def _scheduler_loop(self, noise: torch.Tensor, conditioning: dict[str, Any], eta: float) -> torch.Tensor:
        """Sequential sampling with diffusers' own ``step``: step ``i`` (``timesteps[i]`` increasing) is
        the scheduler's iteration ``T - 1 - i`` and uses ``noise[:, i]``."""
        num_steps = noise.shape[1] - 1
        eps_fn = self._prepare(conditioning, num_steps).eps_fn
        scheduler = copy.deepcopy(self.pipe.scheduler)  # set to num_steps by that call, never stepped
        x = noise[:, num_steps].to(self.device, torch.float64)
        samples = torch.arange(x.shape[0], device=self.device)
        ddim = type(scheduler).__name__ == "DDIMScheduler"
        for k, t in enumerate(scheduler.timesteps):
            i = num_steps - 1 - k
            out = eps_fn(x, torch.full_like(samples, i), samples).to(torch.float64)
            extra = {"eta": eta, "variance_noise": noise[:, i].to(self.device, torch.float64) if eta > 0 else None} \
                if ddim else {}
            x = scheduler.step(out, t, x, **extra).prev_sample.to(torch.float64)
        return x


@contextlib.contextmanager
def _last_step_recorded(scheduler: Any) -> Iterator[dict[str, torch.Tensor]]:
    """Record the ``prev_sample`` of the scheduler's latest ``step`` (``DiTPipeline`` returns decoded images only)."""
    saved = scheduler.__dict__.get("step", MISSING)
    original = scheduler.step
    last: dict[str, torch.Tensor] = {}

    def step(*args: Any, **kwargs: Any) -> Any:
        output = original(*args, **kwargs)
        last["prev_sample"] = output[0] if isinstance(output, tuple) else output.prev_sample
        return output

    scheduler.step = delegate(original, step)
    try:
        yield last
    finally:
        restore(scheduler, "step", saved)
