"""``sample(pipe, **pipe_kwargs)``: a diffusers pipeline call with its denoising loop solved by ParaTAA.

How the pipeline's call is driven is described in ``paratAA.pipelines.base``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch

import paratAA
from paratAA.schedule import Schedule

from .base import (MISSING, Callback, NetworkCall, PipelineAdapter, UnsupportedPipelineError, delegate, restore,
                   solver_options)
from .families import ADAPTERS

__all__ = ["ParallelPipelineOutput", "Prepared", "adapter_for", "prepare", "sample", "supported"]

@dataclass
class ParallelPipelineOutput:
    """What ``sample`` returns.

    Attributes:
        images: what ``pipe(**pipe_kwargs).images`` would be (``output_type`` as the pipeline handles
            it: PIL images, a numpy array, a tensor, or latents for ``"latent"``).
        result: the ``paratAA.SolveResult`` (iterations, evaluations, per-iteration records,
            the float64 trajectory).
        output: the pipeline's own return value (its output class, or a tuple with ``return_dict=False``).
    """

    images: Any
    result: paratAA.SolveResult
    output: Any


def supported() -> dict[str, tuple[str, ...]]:
    """Supported pipeline classes and, for each, the scheduler classes ``sample`` runs."""
    return {name: adapter.schedulers for adapter in ADAPTERS for name in adapter.pipeline_classes}


def adapter_for(pipe: Any, max_batch_size: int | None = None, **options: Any) -> PipelineAdapter:
    """The adapter of ``pipe``'s family (``options``: the family adapter's own, e.g. DiT's ``guidance``).

    Raises:
        UnsupportedPipelineError: the pipeline class, or its scheduler, is not supported; the
            message lists what is and the one line of diffusers code that switches the scheduler.
    """
    name = type(pipe).__name__
    for adapter in ADAPTERS:
        if name in adapter.pipeline_classes:
            break
    else:
        raise UnsupportedPipelineError(
            f"pipeline: {name} is not supported by paratAA.pipelines.sample; supported: "
            f"{', '.join(supported())}")
    scheduler = type(getattr(pipe, "scheduler", None)).__name__
    if scheduler not in adapter.schedulers:
        suggestion = adapter.suggested_scheduler[name]
        raise UnsupportedPipelineError(
            f"scheduler: {scheduler} is not supported for {name}; supported: {', '.join(adapter.schedulers)}. "
            f"Switch with: from diffusers import {suggestion}; "
            f"pipe.scheduler = {suggestion}.from_config(pipe.scheduler.config)")
    return adapter(pipe, max_batch_size, **options)


def sample(pipe: Any, *, window_size: int | None = None, order: int | None = None, memory_size: int | None = None,
           tol1: float | None = None, tol2: float | None = None, max_iters: int | None = None,
           callback: Callback | None = None, map_form: str | None = None, max_batch_size: int | None = None,
           accelerator: Any = None, adapter: PipelineAdapter | None = None, **pipe_kwargs: Any) -> ParallelPipelineOutput:
    """Run ``pipe(**pipe_kwargs)`` with its denoising loop solved in parallel by ParaTAA.

    A drop-in for a pipeline call: the same arguments, the same initial latents from the same
    ``generator``, the same decoding and ``output_type``; converged, the same images (up to the
    pipeline's own float32/float16 rounding). Supported: ``supported()`` (SD 1.x/2.x, SDXL, SD3,
    Flux, DiT with DDIM/DDPM, Euler or flow-matching Euler schedulers).

    Args:
        pipe: a diffusers pipeline of a supported class, on its device and dtype.
        window_size, order, memory_size, tol1, tol2, max_iters, map_form: ``paratAA.solve``'s
            options; None takes the library's recommended value.
        callback: called with every ``paratAA.IterationRecord`` as the solve goes.
        max_batch_size: most rows per network forward pass (guidance copies included); default 64
            (with ``adapter``: the adapter's own).
        accelerator: an ``accelerate.Accelerator`` to split each iteration's network rows across
            its processes (``paratAA.distributed``). Every process calls ``sample`` with the same
            arguments (the same generator seeds) and gets the same result.
        adapter: a family adapter of ``pipe`` with options of its own (``adapter_for(pipe,
            guidance="original")`` for DiT); default ``adapter_for(pipe, max_batch_size)``.
        **pipe_kwargs: the pipeline call's own arguments (``prompt`` or ``prompt_embeds``,
            ``guidance_scale``, ``num_inference_steps``, ``generator``, ``output_type``, ...).

    Returns:
        ``ParallelPipelineOutput`` with ``images``, ``result`` and the pipeline's ``output``.

    Raises:
        UnsupportedPipelineError: unsupported pipeline, scheduler, or pipeline argument (named).
        paratAA.ScheduleError: a scheduler configuration that is not affine (named).
        ValueError: a solver option out of range (named).
    """
    adapter = _adapter(pipe, adapter, max_batch_size)
    adapter.check_full_call()
    arguments = adapter.call_arguments(pipe_kwargs)
    adapter.check_arguments(arguments)
    given = dict(window_size=window_size, order=order, memory_size=memory_size, tol1=tol1, tol2=tol2,
                 max_iters=max_iters, map_form=map_form)
    run = _ParallelRun(adapter, arguments, given, callback, accelerator)
    with run.installed():
        output = pipe(**pipe_kwargs)
    if run.result is None:
        raise UnsupportedPipelineError(f"{type(pipe).__name__}: the pipeline never stepped its scheduler")
    images = output.images if hasattr(output, "images") else output[0]
    return ParallelPipelineOutput(images=images, result=run.result, output=output)


@dataclass
class Prepared:
    """A pipeline call up to its denoising loop, as ``paratAA.solve``'s inputs (``prepare``).

    Attributes:
        schedule: the pipeline's configured scheduler as a ``paratAA.Schedule``.
        eps_fn: the network as the pipeline calls it, per row (conditioning of each sample).
        noise: float64 ``(B, T+1, *latent)``: ``[:, T]`` the pipeline's initial latents, ``[:, i]``
            the noise its ``step`` would draw at step i (zeros for deterministic samplers).
        adapter: the pipeline family's adapter.
        arguments: the pipeline call's arguments, defaults filled in.
        latent_dtype: the dtype of the pipeline's latents.
        calls: the network calls recorded in the pipeline's first step.
    """

    schedule: Schedule
    eps_fn: paratAA.EpsFn
    noise: torch.Tensor
    adapter: PipelineAdapter
    arguments: dict[str, Any]
    latent_dtype: torch.dtype
    calls: list[NetworkCall]

    def eps_fn_for(self, schedule: Schedule) -> paratAA.EpsFn:
        """The network as ``eps_fn`` does it, its step indices mapped by another ``schedule``
        (timesteps and Euler's input scale) of the same model: e.g. DDPM's over DDIM's configuration."""
        return self.adapter.eps_fn(self.calls, schedule, self.noise.shape[0], self.arguments)

    def decode(self, latents: torch.Tensor, output_type: str | None = None) -> Any:
        """Final latents ``(B, *latent)`` to images, as the pipeline's call ends (``output_type``
        default: the call's)."""
        latents = latents.detach().to(self.noise.device, self.latent_dtype)
        return self.adapter.decode(latents, self.arguments, output_type or self.arguments.get("output_type", "pil"))


class _Prepared(Exception):
    """Stops a pipeline call at its first step (``prepare``)."""


def _adapter(pipe: Any, adapter: PipelineAdapter | None, max_batch_size: int | None) -> PipelineAdapter:
    if adapter is None:
        return adapter_for(pipe, max_batch_size)
    if adapter.pipe is not pipe:
        raise ValueError("adapter: an adapter of another pipeline; build it with adapter_for(pipe, ...)")
    return adapter


def prepare(pipe: Any, *, max_batch_size: int | None = None, accelerator: Any = None,
            adapter: PipelineAdapter | None = None, **pipe_kwargs: Any) -> Prepared:
    """Run ``pipe(**pipe_kwargs)`` up to its first denoising step and return the solve's inputs.

    For callers that run ``paratAA.solve`` themselves (the entry scripts: their own noise through
    ``latents=``, per-iteration images through ``Prepared.decode``). The network runs once (the
    recorded first call); the pipeline is left as it was.

    Args:
        pipe, max_batch_size, accelerator, adapter, **pipe_kwargs: as for ``sample``.

    Returns:
        The ``Prepared`` schedule, ``eps_fn``, noise and decoder.
    """
    adapter = _adapter(pipe, adapter, max_batch_size)
    arguments = adapter.call_arguments(pipe_kwargs)
    adapter.check_arguments(arguments)
    run = _ParallelRun(adapter, arguments, {}, None, accelerator)
    run.stop_after_prepare = True
    try:
        with run.installed():
            pipe(**pipe_kwargs)
    except _Prepared:
        pass
    if run.prepared is None:
        raise UnsupportedPipelineError(f"{type(pipe).__name__}: the pipeline never stepped its scheduler")
    return run.prepared


class _ParallelRun:
    """The state of one ``sample`` call: records the first step's network calls, then solves."""

    def __init__(self, adapter: PipelineAdapter, arguments: dict[str, Any], given: dict[str, Any],
                 callback: Callback | None, accelerator: Any):
        self.adapter, self.arguments, self.given, self.callback = adapter, arguments, given, callback
        self.accelerator = accelerator
        self.phase = "record"  # record -> solving -> done
        self.calls: list[NetworkCall] = []
        self.outputs: list[Any] = []
        self.replayed = 0
        self.final: torch.Tensor | None = None
        self.result: paratAA.SolveResult | None = None
        self.prepared: Prepared | None = None
        self.stop_after_prepare = False

    # ----------------------------------------------------------------------------- instance patches
    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        module, scheduler = self.adapter.module, self.adapter.pipe.scheduler
        saved_forward = module.__dict__.get("forward", MISSING)
        self._network = module.forward  # whatever forward is now (accelerate/diffusers hooks included)
        self._scheduler = scheduler
        self._saved_step = scheduler.__dict__.get("step", MISSING)
        self._scheduler_step = scheduler.step
        # Keep the originals' signatures: pipelines inspect them (e.g. whether step takes eta, generator).
        self._patched_forward = delegate(self._network, self._forward)
        self._patched_step = delegate(self._scheduler_step, self._step)
        module.forward = self._patched_forward
        scheduler.step = self._patched_step
        try:
            yield
        finally:
            restore(module, "forward", saved_forward)
            restore(scheduler, "step", self._saved_step)

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.phase == "solving":
            return self._network(*args, **kwargs)
        if self.phase == "record":
            call = self.adapter.bind(args, kwargs)
            self.calls.append(call)
            output = self._network(**call.arguments)
            self.outputs.append(output)
            return output
        # done: the pipeline's later loop iterations get the recorded answers (their step ignores them)
        output = self.outputs[self.replayed % len(self.outputs)]
        self.replayed += 1
        return output

    def _step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.phase == "record":
            self._solve(model_output, sample, kwargs)
        output = self._scheduler_step(model_output, timestep, sample, *args, **kwargs)  # keeps its counter
        final = self.final.to(sample.device, sample.dtype)
        final = torch.cat([final] * (sample.shape[0] // final.shape[0]))
        if isinstance(output, tuple):
            return (final, *output[1:])
        output.prev_sample = final
        return output

    # ---------------------------------------------------------------------------------------- solve
    def _solve(self, model_output: torch.Tensor, sample: torch.Tensor, step_kwargs: dict[str, Any]) -> None:
        self.prepared = self._prepare(model_output, sample, step_kwargs)
        if self.stop_after_prepare:
            raise _Prepared
        prepared = self.prepared
        self.phase = "solving"
        try:
            self.result = paratAA.solve(prepared.eps_fn, prepared.schedule, prepared.noise,
                                        **solver_options(self.given), callback=self.callback)
        finally:
            self.phase = "done"
        self.final = self.result.samples

    def _prepare(self, model_output: torch.Tensor, sample: torch.Tensor, step_kwargs: dict[str, Any]) -> "Prepared":
        if not self.calls:
            raise UnsupportedPipelineError(
                f"{type(self.adapter.pipe).__name__}: the pipeline stepped its scheduler without calling "
                f"its {self.adapter.denoiser}")
        scheduler = self._scheduler
        restore(scheduler, "step", self._saved_step)  # from_scheduler replays step on a copy: unpatched
        try:
            eta = step_kwargs.get("eta", 0.0) if type(scheduler).__name__ == "DDIMScheduler" else 0.0
            schedule = Schedule.from_scheduler(scheduler, eta=eta or 0.0)
        finally:
            scheduler.step = self._patched_step
        copies = self.adapter.step_copies(self.arguments)
        num_samples = sample.shape[0] // copies
        noise = torch.zeros((num_samples, schedule.num_steps + 1, *sample.shape[1:]), dtype=torch.float64,
                            device=sample.device)
        noise[:, -1] = sample[:num_samples].to(torch.float64)
        if bool((schedule.c != 0).any()):
            _replay_step_noise(noise, scheduler, model_output, step_kwargs.get("generator"))
        eps_fn = self.adapter.eps_fn(self.calls, schedule, num_samples, self.arguments)
        if self.accelerator is not None:
            from paratAA.distributed import shard_eps_fn

            eps_fn = shard_eps_fn(eps_fn, self.accelerator)
        return Prepared(schedule=schedule, eps_fn=eps_fn, noise=noise, adapter=self.adapter,
                        arguments=self.arguments, latent_dtype=sample.dtype, calls=list(self.calls))


def _replay_step_noise(noise: torch.Tensor, scheduler: Any, model_output: torch.Tensor, generator: Any) -> None:
    """Draw each step's noise from the pipeline's generator, in the order and shape its ``step`` would.

    DDIM with ``eta > 0`` draws at every step, DDPM at every step with ``t > 0``, both as
    ``randn_tensor(model_output.shape, generator, device, dtype)``.
    """
    from diffusers.utils.torch_utils import randn_tensor

    num_steps = noise.shape[1] - 1
    ddpm = type(scheduler).__name__ == "DDPMScheduler"
    for k, t in enumerate(scheduler.timesteps):
        if ddpm and not t > 0:
            continue
        z = randn_tensor(model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype)
        noise[:, num_steps - 1 - k] = z[: noise.shape[0]].to(noise.device, torch.float64)
