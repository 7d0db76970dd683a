"""Test helpers shared by the multistep sampler tests: the analytic mixture as a problem, diffusers' own loop."""

from __future__ import annotations

from typing import Any

import torch

from paratAA import Schedule, sample_noise, sequential, solve
from paratAA.analytic import gaussian_mixture_problem

LATENT = (4, 8, 8)


def mixture_problem(scheduler: Any, num_steps: int) -> tuple[Schedule, Any, torch.Tensor]:
    """``(schedule, eps_fn, noise)`` of a set scheduler on the analytic mixture (exact network in its
    prediction type), two samples of noise seeded 0."""
    schedule = Schedule.from_scheduler(scheduler)
    eps_fn = gaussian_mixture_problem(LATENT, num_components=4, seed=0).eps_fn(schedule)
    return schedule, eps_fn, sample_noise(0, 2, num_steps, LATENT)


def scheduler_loop(scheduler: Any, eps_fn: Any, noise: torch.Tensor) -> torch.Tensor:
    """The final latents of diffusers' own ``step`` loop from ``noise[:, T]`` (an unstepped, set ``scheduler``)."""
    num_steps = noise.shape[1] - 1
    x, samples = noise[:, num_steps].clone(), torch.arange(noise.shape[0])
    for k, t in enumerate(scheduler.timesteps):
        out = eps_fn(x, torch.full_like(samples, num_steps - 1 - k), samples)
        x = scheduler.step(out, t, x).prev_sample.to(torch.float64)
    return x


def check_warm_start_evaluates_once(schedule: Schedule, eps_fn: Any, noise: torch.Tensor, frontier: int,
                                    above: tuple[int, ...]) -> list[torch.Tensor]:
    """A warm start on the exact trajectory with ``variation_steps=frontier`` reproduces it and evaluates each
    final step in ``above`` (whose outputs the steps below the frontier read) once, in the first call only.
    Returns the step indices of every network call."""
    reference = sequential(eps_fn, schedule, noise)
    calls = []

    def counting(x, steps, samples):
        calls.append(steps.clone())
        return eps_fn(x, steps, samples)

    result = solve(counting, schedule, noise, tol1=0.0, tol2=0.0, init_trajectory=reference,
                   variation_steps=frontier)
    assert float((result.samples - reference[:, 0]).abs().max()) < 1e-10
    for step in above:
        assert int((calls[0] == step).sum()) == noise.shape[0] and all(int((c == step).sum()) == 0 for c in calls[1:])
    assert result.evaluations == sum(len(c) for c in calls)
    return calls
