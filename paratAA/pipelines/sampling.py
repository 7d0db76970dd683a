"""``sample(pipe, **pipe_kwargs)``: a diffusers pipeline call with its denoising loop solved by ParaTAA.

How the pipeline's call is driven is described in ``paratAA.pipelines.base``.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import time
import warnings
from dataclasses import dataclass
from typing import Any, Iterator

import torch

import paratAA
from paratAA.errors import UnconvergedWarning
from paratAA.options import AUTO_WINDOW, FULL_ORDER, RECOMMENDED, SolverOptions, merged_options, option_names
from paratAA.planner import announce
from paratAA.schedule import Schedule

from .base import MISSING, Callback, NetworkCall, PipelineAdapter, UnsupportedPipelineError, delegate, restore
from .families import ADAPTERS as _FAMILY_ADAPTERS
from .image_families import IMAGE_ADAPTERS
from .video import VIDEO_ADAPTERS

ADAPTERS = (*_FAMILY_ADAPTERS, *VIDEO_ADAPTERS, *IMAGE_ADAPTERS)

__all__ = ["ParallelPipelineOutput", "Prepared", "adapter_for", "prepare", "sample", "supported"]

@dataclass
class ParallelPipelineOutput:
    """What ``sample`` returns.

    Attributes:
        images: what ``pipe(**pipe_kwargs).images`` would be (``output_type`` as the pipeline handles
            it: PIL images, a numpy array, a tensor, or latents for ``"latent"``).
        result: the ``paratAA.SolveResult`` (iterations, evaluations, per-iteration records,
            the float64 trajectory). With ``window_size="auto"`` choosing the sequential sampler,
            ``result.method == "sequential"``: the pipeline's own loop ran unchanged (one record per
            step, the trajectory its latents).
        output: the pipeline's own return value (its output class, or a tuple with ``return_dict=False``).
    """

    images: Any
    result: paratAA.SolveResult
    output: Any

    @property
    def frames(self) -> Any:
        """The video pipelines' name for ``images``: what ``pipe(**pipe_kwargs).frames`` would be."""
        return self.images


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
        extra = adapter.suggested_arguments.get(name, "")
        raise UnsupportedPipelineError(
            f"scheduler: {scheduler} is not supported for {name}; supported: {', '.join(adapter.schedulers)}. "
            f"Switch with: from diffusers import {suggestion}; "
            f"pipe.scheduler = {suggestion}.from_config(pipe.scheduler.config{extra})")
    return adapter(pipe, max_batch_size, **options)


def split_options(options: SolverOptions | None, kwargs: dict[str, Any]) -> tuple[SolverOptions, dict[str, Any]]:
    """``options`` updated by the keyword arguments that name solver options, and the remaining keyword
    arguments (the pipeline call's own)."""
    names = set(option_names())
    given = {name: value for name, value in kwargs.items() if name in names}
    return merged_options(options, **given), {k: v for k, v in kwargs.items() if k not in names}


def _with_network_dtype(options: SolverOptions, adapter: PipelineAdapter) -> SolverOptions:
    """``options`` with ``network_dtype`` the pipeline's denoiser dtype, unless the caller set one."""
    if options.network_dtype is not None:
        return options
    return options.replace(network_dtype=str(adapter.module.dtype).removeprefix("torch."))


def _warn_if_unconverged(result: paratAA.SolveResult) -> None:
    """An ``UnconvergedWarning`` for images of an unfinished solve, or of one finished by the safeguard alone."""
    reasons = result.stop_reasons
    if "max_iters" in reasons:
        warnings.warn(f"sample(): max_iters stopped the solve after {result.iterations} iterations; "
                      f"{reasons.count('max_iters')} of {len(reasons)} images are not converged",
                      UnconvergedWarning, stacklevel=3)
    elif "safeguard" in reasons and result.iterations > 1:
        warnings.warn(f"sample(): {reasons.count('safeguard')} of {len(reasons)} samples met no tolerance test and "
                      f"were finished one step per iteration ({result.iterations} iterations, sequential sampling): "
                      "is the tolerance below what the network's precision can deliver?",
                      UnconvergedWarning, stacklevel=3)


def _check_callbacks(callback: Any, pipe_kwargs: dict[str, Any]) -> None:
    """Refuse a pipeline's legacy ``callback(step, timestep, latents)`` / ``callback_steps`` in one line.

    ``sample``'s ``callback`` is the solver's (one ``IterationRecord`` per parallel iteration); the
    pipeline's per-step callbacks would see replayed latents, not a trajectory, so none is forwarded.
    """
    if "callback_steps" in pipe_kwargs:
        raise UnsupportedPipelineError(
            "callback_steps: the pipeline's legacy step callback is not run by sample(); sample(callback=fn) calls "
            "fn(record) once per parallel iteration with a paratAA.IterationRecord (record.x0: every sample's estimate)")
    if callback is None:
        return
    if not callable(callback):
        raise ValueError(f"callback must be callable, got {type(callback).__name__}")
    try:
        inspect.signature(callback).bind(object())
    except TypeError:
        raise UnsupportedPipelineError(
            "callback: sample(callback=fn) calls fn(record) with one paratAA.IterationRecord per parallel iteration; "
            "this callback does not take one argument (a pipeline's legacy callback(step, timestep, latents)?)"
        ) from None
    except ValueError:  # no signature to inspect (a builtin): it is called as given
        pass


def sample(pipe: Any, options: SolverOptions | None = None, *, callback: Callback | None = None,
           max_batch_size: int | None = None, accelerator: Any = None, adapter: PipelineAdapter | None = None,
           **kwargs: Any) -> ParallelPipelineOutput:
    """Run ``pipe(**pipe_kwargs)`` with its denoising loop solved in parallel by ParaTAA.

    A drop-in for a pipeline call: the same arguments, the same initial latents from the same
    ``generator``, the same decoding and ``output_type``; converged, the same images (up to the
    pipeline's own float32/float16 rounding). Supported: ``supported()`` (SD 1.x/2.x, SDXL, SD3,
    Flux, DiT with DDIM/DDPM, Euler or flow-matching Euler schedulers).

    Args:
        pipe: a diffusers pipeline of a supported class, on its device and dtype.
        options: the solver's method (``paratAA.SolverOptions``; default ``paratAA.RECOMMENDED``).
            Any of its fields may also be given as a keyword argument (``tol1=1e-3``,
            ``window_size=8``, ``init="copy"``, ...), which wins over ``options``.
            The window defaults to ``"auto"`` here (``paratAA.solve``'s default is the whole
            trajectory): the network's cost on this device is measured once per process and
            pipeline, then the solve uses the window of least predicted wall-clock, or the
            pipeline's own loop runs when no window is predicted to beat it (one
            ``paratAA.planner.SequentialChoiceWarning``; on a CPU, whose cost grows with every
            row, that is the usual outcome). A number (``window_size=num_inference_steps`` for
            the whole trajectory) fixes the window and always solves in parallel.
        callback: called with every ``paratAA.IterationRecord`` as the solve goes.
        max_batch_size: most rows per network forward pass (guidance copies included); default 64
            (with ``adapter``: the adapter's own).
        accelerator: an ``accelerate.Accelerator`` to split each iteration's network rows across
            its processes (``paratAA.distributed``). Every process calls ``sample`` with the same
            arguments (the same generator seeds) and gets the same result.
        adapter: a family adapter of ``pipe`` with options of its own (``adapter_for(pipe,
            guidance="original")`` for DiT); default ``adapter_for(pipe, max_batch_size)``.
        **kwargs: the solver options above, and the pipeline call's own arguments (``prompt`` or
            ``prompt_embeds``, ``guidance_scale``, ``num_inference_steps``, ``generator``,
            ``output_type``, ...).

    Returns:
        ``ParallelPipelineOutput`` with ``images``, ``result`` and the pipeline's ``output``.

    Raises:
        UnsupportedPipelineError: unsupported pipeline, scheduler, or pipeline argument (named).
        paratAA.ScheduleError: a scheduler configuration that is not affine (named).
        ValueError: a solver option out of range (named).
    """
    options, pipe_kwargs = split_options(options, kwargs)
    if options.window_size is None:  # the caller fixed no window: plan it for this device
        options = options.replace(window_size=AUTO_WINDOW)
    _check_callbacks(callback, pipe_kwargs)
    adapter = _adapter(pipe, adapter, max_batch_size)
    options = _with_network_dtype(options, adapter)
    arguments = adapter.call_arguments(pipe_kwargs)
    adapter.check_arguments(arguments)
    run = _ParallelRun(adapter, arguments, options, callback, accelerator)
    with adapter.full_call(), run.installed():
        output = pipe(**pipe_kwargs)
    if run.result is None:
        raise UnsupportedPipelineError(f"{type(pipe).__name__}: the pipeline never stepped its scheduler")
    _warn_if_unconverged(run.result)
    if run.result.plan is not None:  # the sequential choice, said at the caller's line (not inside the pipeline)
        announce(run.result.plan, stacklevel=3)
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
        options: the solver options to solve with (``prepare``'s).
    """

    schedule: Schedule
    eps_fn: paratAA.EpsFn
    noise: torch.Tensor
    adapter: PipelineAdapter
    arguments: dict[str, Any]
    latent_dtype: torch.dtype
    calls: list[NetworkCall]
    options: SolverOptions = RECOMMENDED

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


def prepare(pipe: Any, options: SolverOptions | None = None, *, max_batch_size: int | None = None,
            accelerator: Any = None, adapter: PipelineAdapter | None = None, **kwargs: Any) -> Prepared:
    """Run ``pipe(**pipe_kwargs)`` up to its first denoising step and return the solve's inputs.

    For callers that run ``paratAA.solve`` themselves (the entry scripts: their own noise through
    ``latents=``, per-iteration images through ``Prepared.decode``). The network runs once (the
    recorded first call); the pipeline is left as it was.

    Args:
        pipe, options, max_batch_size, accelerator, adapter, **kwargs: as for ``sample``.

    Returns:
        The ``Prepared`` schedule, ``eps_fn``, noise, decoder and solver options:
        ``paratAA.solve(p.eps_fn, p.schedule, p.noise, p.options)`` is what ``sample`` solves.
    """
    options, pipe_kwargs = split_options(options, kwargs)
    adapter = _adapter(pipe, adapter, max_batch_size)
    options = _with_network_dtype(options, adapter)
    arguments = adapter.call_arguments(pipe_kwargs)
    adapter.check_arguments(arguments)
    run = _ParallelRun(adapter, arguments, options, None, accelerator)
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

    def __init__(self, adapter: PipelineAdapter, arguments: dict[str, Any], options: SolverOptions,
                 callback: Callback | None, accelerator: Any):
        self.adapter, self.arguments, self.options, self.callback = adapter, arguments, options, callback
        self.accelerator = accelerator
        self.phase = "record"  # record -> solving -> done, or record -> passthrough (the pipeline's own loop)
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
        # Other networks of the loop (Wan 2.2's transformer_2) are recorded and replayed alike.
        extras = [(extra, extra.__dict__.get("forward", MISSING)) for extra in self.adapter.extra_denoisers()]
        for extra, _ in extras:
            extra.forward = delegate(extra.forward, functools.partial(self._forward_of, extra.forward))
        try:
            yield
        finally:
            restore(module, "forward", saved_forward)
            restore(scheduler, "step", self._saved_step)
            for extra, saved in extras:
                restore(extra, "forward", saved)

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._forward_of(self._network, *args, **kwargs)

    def _forward_of(self, network: Any, *args: Any, **kwargs: Any) -> Any:
        if self.phase == "passthrough":
            start = time.perf_counter()
            output = network(*args, **kwargs)
            self._passthrough_network += time.perf_counter() - start
            return output
        if self.phase == "solving":
            return network(*args, **kwargs)
        if self.phase == "record":
            call = self.adapter.bind(args, kwargs)
            self.calls.append(call)
            output = network(**call.arguments)
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
        if self.phase == "passthrough":
            self._record_sequential_step(output)
            return output
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
            options, plan = prepared.options, None
            if options.window_size == AUTO_WINDOW:
                options, plan = self._planned(prepared)
            if plan is not None and plan.sequential:
                self._start_passthrough(plan)
                return
            self.result = paratAA.solve(prepared.eps_fn, prepared.schedule, prepared.noise, options,
                                        callback=self.callback)
            if plan is not None:
                self.result.plan, self.result.sequential_seconds = plan, plan.sequential_seconds
                self.result.sequential_source = "predicted"
        finally:
            if self.phase == "solving":
                self.phase = "done"
        self.final = self.result.samples

    # ------------------------------------------------------------------ window_size="auto" (paratAA.planner)
    def _planned(self, prepared: "Prepared") -> tuple[SolverOptions, Any]:
        """The options with the planner's window, and its plan (the network's cost measured once per
        process and pipeline: keyed by the denoiser, the guidance copies and the adapter's batch size)."""
        from paratAA.planner import choose

        key = ("pipeline", id(self.adapter.module), type(self.adapter.pipe).__name__,
               self.adapter.step_copies(self.arguments), getattr(self.adapter, "max_batch_size", None))
        processes = 1 if self.accelerator is None else int(self.accelerator.num_processes)
        prepared.options.resolved(prepared.schedule.num_steps)  # the other options' errors first
        plan = choose(prepared.eps_fn, prepared.schedule, prepared.noise, key=key, processes=processes)
        window = plan.window_size or prepared.schedule.num_steps
        order = prepared.options.order
        order = order if order == FULL_ORDER else min(int(order), window)
        return prepared.options.replace(window_size=window, order=order), plan

    def _start_passthrough(self, plan: Any) -> None:
        """Let the pipeline's own loop run from its first step on (its result becomes a sequential SolveResult)."""
        for generator, state in getattr(self, "_generator_states", []):
            generator.set_state(state)
        self.phase = "passthrough"
        self._plan = plan
        self._passthrough_network = 0.0
        self._passthrough_start = self._last_step_end = time.perf_counter()
        self._passthrough_records: list[paratAA.IterationRecord] = []
        noise = self.prepared.noise
        self._trajectory = noise.clone()
        self._next_step = noise.shape[1] - 2  # the step whose output the next scheduler step gives

    def _record_sequential_step(self, output: Any) -> None:
        latents = output[0] if isinstance(output, tuple) else output.prev_sample
        batch, i = self._trajectory.shape[0], self._next_step
        if i < 0:  # a pipeline stepping beyond its schedule: nothing more to record
            return
        self._trajectory[:, i] = latents[:batch].to(self._trajectory.device, torch.float64)
        now = time.perf_counter()
        network, self._passthrough_network = self._passthrough_network, 0.0
        record = paratAA.IterationRecord(
            iteration=len(self._passthrough_records) + 1, windows=[(i, i + 1)] * batch, evaluations=batch,
            max_residual=[0.0] * batch, frontier=[i] * batch, network_seconds=network,
            solver_seconds=max(0.0, now - self._last_step_end - network), x0=self._trajectory[:, i].clone(),
            done=i == 0)
        if self.callback is not None:
            self.callback(record)
        record.x0 = None
        self._passthrough_records.append(record)
        self._last_step_end = now
        self._next_step = i - 1
        if i == 0:
            self._finish_passthrough()

    def _finish_passthrough(self) -> None:
        num_steps, batch = self._trajectory.shape[1] - 1, self._trajectory.shape[0]
        self.result = paratAA.SolveResult(
            trajectory=self._trajectory, iterations=num_steps, evaluations=num_steps * batch,
            per_sample_iterations=[num_steps] * batch, per_sample_evaluations=[num_steps] * batch, converged=True,
            seconds=time.perf_counter() - self._passthrough_start, records=list(self._passthrough_records),
            stop_reasons=["sequential"] * batch, method="sequential", plan=self._plan,
            sequential_seconds=self._plan.sequential_seconds, sequential_source="predicted")

    def _prepare(self, model_output: torch.Tensor, sample: torch.Tensor, step_kwargs: dict[str, Any]) -> "Prepared":
        if not self.calls:
            raise UnsupportedPipelineError(
                f"{type(self.adapter.pipe).__name__}: the pipeline stepped its scheduler without calling "
                f"its {self.adapter.denoiser}")
        scheduler = self._scheduler
        restore(scheduler, "step", self._saved_step)  # from_scheduler replays step on a copy: unpatched
        try:
            eta = step_kwargs.get("eta", 0.0) if type(scheduler).__name__ == "DDIMScheduler" else 0.0
            schedule = self.adapter.schedule(scheduler, eta=eta or 0.0)
        finally:
            scheduler.step = self._patched_step
        copies = self.adapter.step_copies(self.arguments)
        num_samples = sample.shape[0] // copies
        noise = torch.zeros((num_samples, schedule.num_steps + 1, *sample.shape[1:]), dtype=torch.float64,
                            device=sample.device)
        noise[:, -1] = sample[:num_samples].to(torch.float64)
        if bool((schedule.c != 0).any()):
            # kept so that a sequential choice (window_size="auto") lets the pipeline draw the same noise
            self._generator_states = _generator_states(step_kwargs.get("generator"))
            _replay_step_noise(noise, scheduler, model_output, step_kwargs.get("generator"))
        eps_fn = self.adapter.eps_fn(self.calls, schedule, num_samples, self.arguments)
        if self.accelerator is not None:
            from paratAA.distributed import shard_eps_fn

            eps_fn = shard_eps_fn(eps_fn, self.accelerator)
        return Prepared(schedule=schedule, eps_fn=eps_fn, noise=noise, adapter=self.adapter,
                        arguments=self.arguments, latent_dtype=sample.dtype, calls=list(self.calls),
                        options=self.options)


def _generator_states(generator: Any) -> list[tuple[torch.Generator, torch.Tensor]]:
    """``(generator, state)`` of the call's generator(s) (None, one, or a list), to restore later."""
    generators = generator if isinstance(generator, (list, tuple)) else [generator]
    return [(g, g.get_state()) for g in generators if isinstance(g, torch.Generator)]


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
