"""ParaSolver baseline: exact at tolerance 0, its warm-up and initialisation, its defaults."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from paratAA import Schedule, sample_noise, sequential
from paratAA.analytic import gaussian_mixture_problem
from paratAA.baselines.paradigms import solve_paradigms
from paratAA.baselines.parasolver import DETERMINISTIC_DEFAULTS, STOCHASTIC_DEFAULTS, solve_parasolver

pytestmark = pytest.mark.usefixtures("single_thread")

LATENT = (2, 4, 4)


def _problem(sampler: str, num_steps: int, eta: float = 0.0):
    scheduler = DDIMScheduler(clip_sample=False) if sampler == "ddim" else DDPMScheduler(clip_sample=False)
    scheduler.set_timesteps(num_steps)
    schedule = Schedule.from_scheduler(scheduler, eta=eta)
    gmm = gaussian_mixture_problem(LATENT, num_components=4, seed=1)
    return gmm.eps_fn(schedule), schedule, sample_noise(5, 2, num_steps, LATENT)


@pytest.mark.parametrize("sampler, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 1.0)])
@pytest.mark.parametrize("window", [1, 7, 30])
def test_tolerance_zero_is_exactly_sequential(sampler, eta, window):
    eps_fn, schedule, noise = _problem(sampler, 30, eta)
    reference = sequential(eps_fn, schedule, noise)
    result = solve_parasolver(eps_fn, schedule, noise, window_size=window, tolerance=0.0)
    assert result.converged and result.iterations <= 30
    assert torch.allclose(result.trajectory, reference, rtol=0, atol=1e-10)


def test_warmup_steps_are_sequential_iterations_of_one_row():
    eps_fn, schedule, noise = _problem("ddim", 30)
    seen = []
    result = solve_parasolver(eps_fn, schedule, noise, window_size=10, warmup_steps=3, callback=seen.append)
    assert [r.windows for r in seen[:3]] == [[(29, 30)] * 2, [(28, 29)] * 2, [(27, 28)] * 2]
    assert seen[3].windows == [(17, 27)] * 2  # then the full window below the exact steps
    assert result.iterations == len(seen) and result.evaluations == sum(r.evaluations for r in seen)


def test_denoised_initialisation_beats_copying_on_a_small_window():
    """ParaSolver's initialisation is what distinguishes it from ParaDiGMS (same update and stride rule)."""
    eps_fn, schedule, noise = _problem("ddim", 50)
    reference = sequential(eps_fn, schedule, noise)[:, 0]
    parasolver = solve_parasolver(eps_fn, schedule, noise, window_size=10, tolerance=0.01)
    paradigms = solve_paradigms(eps_fn, schedule, noise, window_size=10, tolerance=0.01)
    error = lambda r: float((r.samples - reference).abs().max())  # noqa: E731
    assert parasolver.iterations < paradigms.iterations
    assert error(parasolver) < 1e-2 and error(paradigms) < 1e-2


@pytest.mark.parametrize("eta, defaults", [(0.0, DETERMINISTIC_DEFAULTS), (1.0, STOCHASTIC_DEFAULTS)])
def test_defaults_follow_the_authors_scripts(eta, defaults):
    eps_fn, schedule, noise = _problem("ddim", 30, eta)
    tolerance, warmup = defaults
    seen = []
    default = solve_parasolver(eps_fn, schedule, noise, window_size=8, callback=seen.append)
    explicit = solve_parasolver(eps_fn, schedule, noise, window_size=8, tolerance=tolerance, warmup_steps=warmup)
    assert torch.equal(default.trajectory, explicit.trajectory)
    assert all(r.evaluations == 2 for r in seen[:warmup]) and seen[warmup].evaluations > 2


@pytest.mark.parametrize("kwargs, name", [(dict(window_size=0), "window_size"), (dict(tolerance=-1.0), "tolerance"),
                                          (dict(warmup_steps=0), "warmup_steps"), (dict(max_iters=0), "max_iters")])
def test_bad_arguments_name_the_argument(kwargs, name):
    eps_fn, schedule, noise = _problem("ddim", 10)
    with pytest.raises(ValueError, match=name):
        solve_parasolver(eps_fn, schedule, noise, **{"window_size": 4, **kwargs})
