"""What every pipeline adapter shares: running a diffusers pipeline call with its denoising loop solved in parallel.

How ``sample(pipe, **pipe_kwargs)`` works
-----------------------------------------
The pipeline's own ``__call__`` runs, unchanged, so everything before and after its denoising loop
is the pipeline's: input checks, prompt encoding, drawing the initial latents from ``generator``,
``set_timesteps`` (SD3's shift, Flux's ``mu`` and custom sigmas, ...), decoding and ``output_type``
handling. Two instance attributes are swapped for the duration of the call:

1. ``denoiser.forward`` (the UNet or transformer) records the network calls the pipeline makes
   for its first step (one, or two for Flux's true CFG) and answers them; later calls of the
   pipeline's loop get the first answer back without running the network.
2. ``scheduler.step``: on its first call it knows everything the parallel solve needs, the
   configured scheduler (hence the ``paratAA.Schedule``), the pipeline's initial latents
   ``x[T]`` and the recorded network calls (hence the conditioning, per sample). It solves the
   whole trajectory with ``paratAA.solve``, each iteration one batched network call made as the
   pipeline makes it (same keyword arguments, dtype and guidance, rows of the pipeline's batch
   selected per sample) in micro-batches, and from then on every ``step`` returns the solved
   ``x[0]``. The pipeline then decodes it as it always does.

So ``sample(pipe, **kw).images`` is what ``pipe(**kw).images`` gives, up to the difference
between the parallel solve's float64 trajectory and the pipeline's own float32 (or float16)
loop. A stochastic sampler's noise (DDPM, DDIM with ``eta > 0``) is drawn from the pipeline's
``generator`` exactly as its ``step`` would draw it. The first, recorded network call is one
extra evaluation of the batch (not counted in ``result.evaluations``).

An adapter subclass says, for its pipeline family: which module is the denoiser, which of its
arguments carry the latents, the timestep and per-row conditioning, how a step's timestep is fed
to the network, and how the recorded calls' outputs combine into the step's model output
(classifier-free guidance as the pipeline does it).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

import paratAA
from paratAA.errors import UnsupportedPipelineError
from paratAA.schedule import Schedule

__all__ = ["MISSING", "NetworkCall", "PipelineAdapter", "UnsupportedPipelineError", "delegate",
           "restore"]

DEFAULT_MAX_BATCH_SIZE = 64


@dataclass
class NetworkCall:
    """One call of the denoiser recorded during the pipeline's first step.

    Attributes:
        arguments: the call's arguments by parameter name (positional ones bound to their names).
        rows: the batch size of the call.
    """

    arguments: dict[str, Any]
    rows: int


def _output_tensor(output: Any) -> torch.Tensor:
    """The prediction in a denoiser's output: a tuple's first entry, ``.sample``, or the tensor."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    return output.sample


def _get_path(arguments: dict[str, Any], path: str) -> Any:
    value: Any = arguments
    for key in path.split("."):
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def _set_path(arguments: dict[str, Any], path: str, new: Any) -> None:
    *parents, last = path.split(".")
    target = arguments
    for key in parents:
        target[key] = dict(target[key])  # copy: never mutate the pipeline's own dicts
        target = target[key]
    target[last] = new


class PipelineAdapter:
    """Base class: one subclass per pipeline family (see the module docstring).

    Class attributes a subclass sets:
        pipeline_classes: names of the diffusers pipeline classes it serves.
        schedulers: names of the scheduler classes it runs; ``suggested_scheduler``: per pipeline
            class, the one an error message suggests switching to; ``suggested_arguments``: per
            pipeline class, extra ``from_config`` arguments of that line (``", shift=..."``).
        denoiser: the pipeline attribute holding the network (``"unet"`` or ``"transformer"``).
        latent_argument, timestep_argument: the network's parameter names for the noisy latents
            and the timestep.
        batched_arguments: paths (``"added_cond_kwargs.text_embeds"``) of the network arguments
            whose first dimension runs over the call's rows (per-row conditioning).
        unsupported_arguments: pipeline call arguments that change the loop in a way the parallel
            solve does not reproduce, with the reason; refused when given (not None).
        initial_latents_argument: the call argument that takes ``x[T]`` (None: the pipeline draws
            its latents from ``generator`` only, as ``DiTPipeline`` does).
        placeholder_arguments: a one-sample conditioning for calls whose conditioning does not
            matter (``paratAA.pipelines.runner`` reads the schedule and latent shape with it).
    """

    pipeline_classes: tuple[str, ...] = ()
    schedulers: tuple[str, ...] = ()
    suggested_scheduler: dict[str, str] = {}
    suggested_arguments: dict[str, str] = {}
    denoiser: str = "unet"
    latent_argument: str = "sample"
    timestep_argument: str = "timestep"
    batched_arguments: tuple[str, ...] = ()
    unsupported_arguments: dict[str, str] = {
        "callback_on_step_end": "it sees the denoising loop's latents, which the parallel solve replaces; "
                                "use sample(..., callback=f), called after every parallel iteration",
        "ip_adapter_image": "IP-Adapter inputs are not supported",
        "ip_adapter_image_embeds": "IP-Adapter inputs are not supported",
    }
    initial_latents_argument: str | None = "latents"
    placeholder_arguments: dict[str, Any] = {"prompt": "a"}

    def __init__(self, pipe: Any, max_batch_size: int | None = None):
        if max_batch_size is None:
            max_batch_size = DEFAULT_MAX_BATCH_SIZE
        if not (isinstance(max_batch_size, int) and max_batch_size >= 1):
            raise ValueError(f"max_batch_size must be an int >= 1, got {max_batch_size!r}")
        self.pipe = pipe
        self.max_batch_size = max_batch_size
        self.module = getattr(pipe, self.denoiser)
        self._signature = inspect.signature(type(self.module).forward)

    # ----------------------------------------------------------------------------- what subclasses say
    def call_arguments(self, pipe_kwargs: dict[str, Any]) -> dict[str, Any]:
        """The pipeline call's arguments with the ``__call__`` signature's defaults filled in."""
        bound = inspect.signature(type(self.pipe).__call__).bind_partial(self.pipe, **pipe_kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self", None)
        arguments.update(arguments.pop("kwargs", {}) or {})
        return arguments

    def check_arguments(self, arguments: dict[str, Any]) -> None:
        """Refuse pipeline arguments the parallel solve does not reproduce (``unsupported_arguments``)."""
        for name, reason in self.unsupported_arguments.items():
            if arguments.get(name) is not None:
                raise UnsupportedPipelineError(f"{name}: not supported by paratAA.pipelines.sample ({reason})")

    @contextlib.contextmanager
    def full_call(self) -> Iterator[None]:
        """What the pipeline's own ``__call__`` needs to run to its end (``sample``; ``prepare`` stops early):
        nothing by default; a family whose call cannot finish refuses here, or supplies the missing piece
        for the call's duration."""
        yield

    def runs_as_adapted(self) -> bool:
        """Whether the pipeline's own ``__call__`` computes the model output this adapter's ``eps_fn``
        does (an adapter option that changes guidance, for example, makes it differ)."""
        return True

    def rewrite_arguments(self, arguments: dict[str, Any]) -> dict[str, Any]:
        """A recorded network call's arguments as the network is to get them (default: unchanged)."""
        return arguments

    def step_copies(self, arguments: dict[str, Any]) -> int:
        """How many copies of each sample the pipeline's ``scheduler.step`` carries (DiT: 2 with guidance)."""
        return 1

    def extra_denoisers(self) -> list[Any]:
        """Networks other than ``module`` that the pipeline's loop calls (Wan 2.2's low-noise
        ``transformer_2``): ``sample`` records and replays their calls as it does the denoiser's."""
        return []

    def schedule(self, scheduler: Any, eta: float = 0.0) -> Schedule:
        """The ``paratAA.Schedule`` of the pipeline's configured scheduler (``Schedule.from_scheduler``;
        a family shipping a scheduler class of its own, CogVideoX, maps it to one the schedule reads)."""
        return Schedule.from_scheduler(scheduler, eta=eta)

    def network_timestep(self, t: torch.Tensor, latent_dtype: torch.dtype) -> torch.Tensor:
        """The network's timestep argument for rows whose scheduler timestep is ``t`` (as the pipeline feeds it)."""
        return t

    def combine(self, outputs: list[torch.Tensor], arguments: dict[str, Any]) -> torch.Tensor:
        """The step's model output from the recorded calls' outputs, each split into its copies.

        Args:
            outputs: per recorded call, a list of ``copies`` tensors ``(n, ...)`` (e.g. the
                [unconditional, conditional] halves of a classifier-free-guidance batch).
            arguments: the pipeline call's arguments (``call_arguments``).
        """
        raise NotImplementedError

    def decode(self, latents: torch.Tensor, arguments: dict[str, Any], output_type: str) -> Any:
        """Final latents to the pipeline's images, as its call ends (``output_type`` as it handles it)."""
        if output_type == "latent":
            return latents
        with torch.no_grad():
            pixels = self.decode_pixels(latents, arguments)
        return self.pipe.image_processor.postprocess(pixels, output_type=output_type)

    def decode_pixels(self, latents: torch.Tensor, arguments: dict[str, Any]) -> torch.Tensor:
        """The VAE's image in [-1, 1] from final latents (the family's post-loop code)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------ the network
    def bind(self, args: tuple, kwargs: dict) -> NetworkCall:
        """Record a denoiser call by parameter name (``rewrite_arguments`` applied)."""
        bound = self._signature.bind(self.module, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop("self")
        for name, parameter in self._signature.parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
            elif parameter.kind is inspect.Parameter.VAR_POSITIONAL and arguments.get(name):
                raise UnsupportedPipelineError(f"{type(self.module).__name__}: extra positional network arguments")
        arguments = self.rewrite_arguments(arguments)
        latents = arguments[self.latent_argument]
        return NetworkCall(arguments=arguments, rows=int(latents.shape[0]))

    def eps_fn(self, calls: Sequence[NetworkCall], schedule: Schedule, num_samples: int,
               arguments: dict[str, Any]) -> paratAA.EpsFn:
        """``eps_fn(x, steps, samples)`` for ``paratAA.solve``: the pipeline's guided model output per row.

        Row ``r`` is the latent ``x[r]`` of sample ``samples[r]`` at step ``steps[r]``; the network
        is called with the recorded calls' arguments, their per-row conditioning taken at the
        rows of that sample, the latents ``input_scale * x`` in the network's dtype and the step's
        timestep, in micro-batches of at most ``max_batch_size`` network rows.
        """
        copies = []
        for call in calls:
            if call.rows % num_samples:
                raise UnsupportedPipelineError(
                    f"{type(self.pipe).__name__}: a network call of {call.rows} rows for {num_samples} samples")
            copies.append(call.rows // num_samples)
        template = calls[0].arguments[self.latent_argument]
        device, dtype = template.device, template.dtype
        timestep_device = calls[0].arguments[self.timestep_argument].device \
            if isinstance(calls[0].arguments[self.timestep_argument], torch.Tensor) else device
        input_scale = schedule.input_scale
        timesteps = schedule.timesteps.cpu()
        inputs_per_row = sum(copies)
        chunk = max(1, self.max_batch_size // inputs_per_row)

        @torch.no_grad()  # also outside the pipeline's own (no-grad) call: prepare's callers solve after it
        def eps(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
            if steps.numel() and not 0 <= int(steps.min()) <= int(steps.max()) < schedule.num_steps:
                raise ValueError(f"steps: indices must lie in [0, {schedule.num_steps}), the schedule's steps")
            out = torch.empty(x.shape, dtype=torch.float64, device=x.device)
            for start in range(0, x.shape[0], chunk):
                rows = slice(start, min(start + chunk, x.shape[0]))
                step_rows = steps[rows].cpu()
                xr = x[rows]
                if input_scale is not None:
                    xr = xr * input_scale.to(x.device)[steps[rows]].view(-1, *([1] * (x.dim() - 1)))
                xr = xr.to(device, dtype)
                t = self.network_timestep(timesteps[step_rows].to(timestep_device), dtype)
                sample_rows = samples[rows].to(device)
                outputs = [self._call(call, m, xr, t, sample_rows, num_samples) for call, m in zip(calls, copies)]
                out[rows] = self.combine(outputs, arguments).to(x.device, torch.float64)
            return out

        return eps

    def _call(self, call: NetworkCall, copies: int, x: torch.Tensor, t: torch.Tensor, samples: torch.Tensor,
              num_samples: int) -> list[torch.Tensor]:
        index = torch.cat([h * num_samples + samples for h in range(copies)])
        arguments = dict(call.arguments)
        arguments[self.latent_argument] = torch.cat([x] * copies)
        arguments[self.timestep_argument] = torch.cat([t] * copies)
        for path in self.batched_arguments:
            value = _get_path(call.arguments, path)
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == call.rows:
                _set_path(arguments, path, value[index.to(value.device)])
        prediction = _output_tensor(self.module(**arguments))
        return list(prediction.chunk(copies)) if copies > 1 else [prediction]


Callback = Callable[[paratAA.IterationRecord], None]


# Instance patches (the network's forward, the scheduler's step) are instance attributes set over the
# class's methods for the duration of a call; MISSING marks an object that had no instance attribute.
MISSING = object()


def delegate(original: Any, target: Any) -> Any:
    """A plain function calling ``target`` that presents ``original``'s name and signature (pipelines
    inspect them, e.g. whether ``step`` takes ``eta`` or ``generator``)."""

    @functools.wraps(original)
    def delegating(*args: Any, **kwargs: Any) -> Any:
        return target(*args, **kwargs)

    return delegating


def restore(obj: Any, name: str, saved: Any) -> None:
    """Undo an instance patch: put back the saved instance attribute, or remove the patch (``MISSING``)."""
    if saved is MISSING:
        obj.__dict__.pop(name, None)
    else:
        setattr(obj, name, saved)
