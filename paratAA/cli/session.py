"""What every entry script does between its flags and its solve: join the processes, load, check memory.

``start`` runs after every flag has been validated (``paratAA.cli.flags``); ``resolved_settings``
is what ``config.json`` records of the run beyond its flags.
"""

from __future__ import annotations

import argparse
import math
import os
from typing import TYPE_CHECKING, Any, Callable, Sequence

from paratAA.cli.flags import check_dtype, solver_options
from paratAA.cli.process import user_errors
from paratAA.options import SolverOptions
from paratAA.pipelines.defaults import is_tiny

if TYPE_CHECKING:
    import torch

    from paratAA.distributed import ProcessContext
    from paratAA.schedule import Schedule

def resolved_settings(adapter: Any, context: ProcessContext, schedule: Schedule,
                      options: SolverOptions) -> dict[str, Any]:
    """What every script's run resolved to, for ``config.json``'s ``resolved`` section.

    Args:
        adapter: the model adapter (``model_id``, ``dtype``).
        context: the process context (device).
        schedule: the sampler's schedule (its timesteps).
        options: the solver options in force (``start``'s: window capped at T, order a number).

    Returns:
        A JSON-ready dict; ``"options"`` is the options' ``repr`` and ``"solver_options"`` their fields.
    """
    return {"model_id": adapter.model_id, "max_iterations": options.max_iters, "device": str(context.device),
            "dtype": str(adapter.dtype), "timesteps": schedule.timesteps.tolist(), "options": repr(options),
            "solver_options": options.as_dict()}


def check_memory(args: argparse.Namespace, latent_shape: Sequence[int], device: torch.device,
                 kept_trajectories: int = 0) -> None:
    """Refuse flags whose solver state cannot fit the device (``paratAA.memory``), naming the costliest flag.

    Args:
        args: validated arguments (``--num_samples``, ``--timesteps``, ``--window_size``, ``--memory_size``).
        latent_shape: the model's latent shape.
        device: where the state lives.
        kept_trajectories: trajectories the script keeps besides the solve's (a warm start's).
    """
    from paratAA.memory import check_fits, estimate_solver_memory

    window = args.timesteps if args.window_size == "auto" else args.window_size  # auto: at most T
    estimate = estimate_solver_memory(args.num_samples, args.timesteps, math.prod(latent_shape), window,
                                      args.memory_size, kept_trajectories)
    culprits = {"trajectories": f"--num_samples {args.num_samples} with --timesteps {args.timesteps}",
                "history": f"--memory_size {args.memory_size} with --window_size {args.window_size}",
                "window": f"--window_size {args.window_size} with --num_samples {args.num_samples}"}
    # On a CPU every process of a launch holds its own copy in the same RAM.
    sharing = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    with user_errors(ValueError):
        check_fits(estimate, device, culprits, sharing=sharing)


def start(args: argparse.Namespace, device: torch.device, load: Callable[[torch.device], Any],
          load_error: type[Exception],
          kept_trajectories: int = 0) -> tuple[ProcessContext, Any, Schedule, SolverOptions]:
    """Join the process group, load the model, build the schedule, check that the solver's state fits.

    Call it after every flag has been validated (``validate_common`` and the script's own checks).

    Args:
        args: validated arguments (``add_common_args`` flags).
        device: ``validate_common``'s device.
        load: loads the model onto a device as a ``paratAA.pipelines.runner.PipelineRunner``
            (``paratAA.cli.models``).
        load_error: the loader's exception for a bad model location (``paratAA.pipelines.locations.ModelLoadError``).
        kept_trajectories: see ``check_memory``.

    Returns:
        The process context, the adapter, its ``--timesteps`` / ``--eta`` schedule, and the solver
        options the flags give, resolved for that schedule (window capped at T, order a number).

    Raises:
        UsageError: a model location that cannot be loaded, a step count the model's scheduler
            refuses, or flags whose state cannot fit the device.
    """
    import torch

    from paratAA.distributed import init_processes

    context = init_processes(device)
    check_dtype(args.dtype, context.device)
    if is_tiny(args.model_path) and context.device.type == "cpu":
        # Tiny models gain nothing from intra-op threads, and on a busy machine OpenMP's spinning
        # threads made them 20-50x slower (measured: 67 s -> 2.6 s for the README's tiny SD run).
        torch.set_num_threads(1)
    with user_errors(load_error):
        adapter = load(context.device)
    with user_errors(ValueError, flag="--timesteps"):
        schedule = adapter.make_schedule(args.timesteps, args.eta)
    # A multistep sampler keeps every step's output: one more trajectory's worth (paratAA.memory).
    check_memory(args, adapter.latent_shape, context.device, kept_trajectories + int(schedule.is_multistep))
    return context, adapter, schedule, solver_options(args).resolved(schedule.num_steps)


