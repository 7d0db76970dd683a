"""The library's argument checks (issue 10): numpy numbers, bools, callables, seeds, memory, overflow."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from paratAA import NonFiniteError, Schedule, sample_noise, sequential, solve
from paratAA.analytic import gaussian_mixture_problem
from paratAA.baselines.paradigms import solve_paradigms
from paratAA.memory import device_memory, estimate_solver_memory, format_bytes
from paratAA.noise import MAX_SEED

LATENT = (2, 4, 4)
T = 12


@pytest.fixture(scope="module")
def problem():
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    scheduler.set_timesteps(T)
    schedule = Schedule.from_scheduler(scheduler)
    eps_fn = gaussian_mixture_problem(LATENT, num_components=3, seed=0).eps_fn(schedule)
    return schedule, eps_fn, sample_noise(0, 2, T, LATENT)


def test_numpy_integers_and_floats_are_accepted(problem):
    schedule, eps_fn, noise = problem
    plain = solve(eps_fn, schedule, noise, window_size=8, order=4, memory_size=2, tol1=1e-3, max_iters=20)
    numpy = solve(eps_fn, schedule, noise, window_size=np.int64(8), order=np.int32(4), memory_size=np.int64(2),
                  tol1=np.float32(1e-3), tol2=np.float64(1e-3), anderson_lambda=np.float64(1e-3),
                  max_iters=np.int64(20), reanchor=np.bool_(False))
    assert torch.equal(plain.trajectory, numpy.trajectory) and plain.iterations == numpy.iterations
    warm = solve(eps_fn, schedule, noise, window_size=8, order=4, memory_size=2, init_trajectory=plain.trajectory,
                 variation_steps=np.int64(5))
    assert all(type(f) is int for f in warm.records[0].frontier)  # JSON-ready, not numpy
    assert solve_paradigms(eps_fn, schedule, noise, window_size=np.int64(6), tolerance=np.float32(0.1)).converged


@pytest.mark.parametrize("kwargs, name", [
    (dict(window_size=True), "window_size"),
    (dict(order=True), "order"),
    (dict(memory_size=np.True_), "memory_size"),
    (dict(tol1=False), "tol1"),
    (dict(max_iters=True), "max_iters"),
    (dict(reanchor="no"), "reanchor"),
    (dict(reanchor=1), "reanchor"),
    (dict(window_size=8.0), "window_size"),
])
def test_bools_strings_and_floats_are_refused_where_they_do_not_belong(problem, kwargs, name):
    schedule, eps_fn, noise = problem
    args = {**dict(window_size=8, order=4, memory_size=2), **kwargs}
    with pytest.raises(ValueError, match=name):
        solve(eps_fn, schedule, noise, **args)


def test_a_non_callable_eps_fn_is_refused_before_any_work(problem):
    schedule, _, noise = problem
    for call in (lambda: solve("unet", schedule, noise, window_size=4, order=2, memory_size=2),
                 lambda: sequential(None, schedule, noise),
                 lambda: solve_paradigms(42, schedule, noise, window_size=4)):
        with pytest.raises(ValueError, match="eps_fn must be callable"):
            call()


@pytest.mark.parametrize("kwargs, name", [
    (dict(num_samples=-1), "num_samples"),
    (dict(num_samples=0), "num_samples"),
    (dict(seed=-1), "seed"),
    (dict(seed=MAX_SEED + 1), "seed"),
    (dict(seed=MAX_SEED, num_samples=2), "seed"),  # sample 1 would need seed 2**64
    (dict(num_steps=0), "num_steps"),
    (dict(latent_shape=(4, 0)), "latent_shape"),
])
def test_sample_noise_names_the_bad_argument(kwargs, name):
    args = {**dict(seed=0, num_samples=1, num_steps=2, latent_shape=(2,)), **kwargs}
    with pytest.raises(ValueError, match=name):
        sample_noise(**args)


def test_the_largest_seeds_work():
    noise = sample_noise(MAX_SEED - 1, 2, 2, (3,))
    assert torch.equal(noise[1], sample_noise(MAX_SEED, 1, 2, (3,))[0])  # sample k uses seed + k


def test_memory_estimate_counts_trajectories_history_and_window():
    latent = 2 * 4 * 4
    estimate = estimate_solver_memory(3, 10, latent, window_size=50, memory_size=3, kept_trajectories=1)
    entry = 8 * latent  # bytes of one float64 latent
    assert estimate.trajectories == 3 * 3 * 11 * entry  # noise, trajectory, kept warm start: T+1 latents each
    assert estimate.history == 3 * (2 * 3 * 10) * entry  # 2 m latents per window step (window capped at T)
    assert estimate.window == 3 * 8 * 10 * entry
    assert estimate_solver_memory(3, 10, latent, 50, memory_size=1).history == 0  # no TAA
    assert format_bytes(1536) == "1.5 kB" and format_bytes(20.5e9) == "20.5 GB"
    assert device_memory(torch.device("cpu")) > 2**30


@pytest.mark.parametrize("kwargs, name", [(dict(memory_size=10**7), "memory_size=10000000"),
                                          (dict(window_size=T, order=2, memory_size=10**9), "memory_size")])
def test_a_solve_that_cannot_fit_is_refused_before_allocating(problem, kwargs, name):
    schedule, eps_fn, noise = problem
    args = {**dict(window_size=8, order=4), **kwargs}
    with pytest.raises(ValueError, match=name) as error:
        solve(eps_fn, schedule, noise, **args)
    assert "TAA history" in str(error.value) and "B of memory" in str(error.value)


def test_an_overflowing_solver_state_stops_the_solve(problem):
    """Finite but huge network outputs (a guidance scale of 1e300) overflow the residuals: stop, not NaN samples."""
    schedule, _, noise = problem
    with pytest.raises(NonFiniteError, match="solver's state"):
        solve(lambda x, steps, samples: torch.full_like(x, 1e300), schedule, noise, window_size=8, order=4,
              memory_size=2)


def test_order_is_checked_against_the_window_asked_for(problem):
    """The CLI's defaults (window 100, order 100) on a short schedule: both are capped at T, not refused."""
    schedule, eps_fn, noise = problem
    capped = solve(eps_fn, schedule, noise, window_size=100, order=100, memory_size=2)
    exact = solve(eps_fn, schedule, noise, window_size=T, order=T, memory_size=2)
    assert torch.equal(capped.trajectory, exact.trajectory)
    with pytest.raises(ValueError, match="order"):
        solve(eps_fn, schedule, noise, window_size=5, order=6)
