"""ParaDiGMS baseline: exactness on an analytic denoiser and agreement with diffusers' own pipeline."""

import inspect
import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionParadigmsPipeline

from benchmarks.diffusers_paradigms import run_diffusers_paradigms, scheduler_pair
from paratAA import NonFiniteError, Schedule, sample_noise, sequential, solve
from paratAA.analytic import gaussian_mixture_problem
from paratAA.baselines.paradigms import DEFAULT_TOLERANCE, solve_paradigms
from paratAA.pipelines.runner import text_conditioning

pytestmark = pytest.mark.usefixtures("single_thread")

LATENT = (2, 4, 4)


def _gmm_problem(sampler: str, num_steps: int):
    scheduler = (DDIMScheduler(clip_sample=False) if sampler == "ddim" else DDPMScheduler(clip_sample=False))
    scheduler.set_timesteps(num_steps)
    schedule = Schedule.from_scheduler(scheduler, eta=0.0)
    gmm = gaussian_mixture_problem(LATENT, num_components=4, seed=1)
    return gmm.eps_fn(schedule), schedule, sample_noise(5, 2, num_steps, LATENT)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("window", [1, 7, 30])
def test_tolerance_zero_is_exactly_sequential(sampler, window):
    eps_fn, schedule, noise = _gmm_problem(sampler, 30)
    reference = sequential(eps_fn, schedule, noise)
    result = solve_paradigms(eps_fn, schedule, noise, window_size=window, tolerance=0.0)
    assert result.converged
    assert torch.allclose(result.trajectory, reference, rtol=0, atol=1e-10)
    assert result.iterations <= 30
    if window == 1:  # one exact step per iteration: the sequential sampler
        assert result.iterations == 30 and result.evaluations == 2 * 30


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_tolerance_trades_iterations_for_accuracy(sampler):
    eps_fn, schedule, noise = _gmm_problem(sampler, 50)
    reference = sequential(eps_fn, schedule, noise)[:, 0]
    loose = solve_paradigms(eps_fn, schedule, noise, window_size=50, tolerance=DEFAULT_TOLERANCE)
    tight = solve_paradigms(eps_fn, schedule, noise, window_size=50, tolerance=1e-6)
    error = lambda r: float((r.samples - reference).abs().max())  # noqa: E731
    assert loose.iterations < tight.iterations < 50
    assert error(tight) < 1e-5 < error(loose)


def test_batch_equals_separate_solves_and_records_add_up():
    eps_fn, schedule, noise = _gmm_problem("ddpm", 40)
    seen = []
    batch = solve_paradigms(eps_fn, schedule, noise, window_size=8, tolerance=0.05, callback=seen.append)
    for k in range(2):
        single = solve_paradigms(lambda x, s, _: eps_fn(x, s, s * 0), schedule, noise[k:k + 1],
                                 window_size=8, tolerance=0.05)
        assert torch.equal(single.samples[0], batch.samples[k])
        assert single.iterations == batch.per_sample_iterations[k]
        assert single.evaluations == batch.per_sample_evaluations[k]
    assert batch.iterations == len(batch.records) == len(seen) == max(batch.per_sample_iterations)
    assert sum(r.evaluations for r in batch.records) == batch.evaluations
    assert all(r.x0 is None for r in batch.records) and seen[-1].x0.shape == (2, *LATENT)
    assert torch.equal(seen[-1].x0, batch.samples)
    for k in range(2):
        frontiers = [40] + [r.frontier[k] for r in batch.records]
        assert all(a > b or a == b == 0 for a, b in zip(frontiers, frontiers[1:]))


def test_max_iters_stops_unconverged():
    eps_fn, schedule, noise = _gmm_problem("ddim", 20)
    result = solve_paradigms(eps_fn, schedule, noise, window_size=20, tolerance=1e-8, max_iters=2)
    assert result.iterations == 2 and not result.converged


@pytest.mark.parametrize("kwargs, name", [
    (dict(window_size=0), "window_size"), (dict(window_size=2.5), "window_size"),
    (dict(window_size=4, tolerance=-1.0), "tolerance"), (dict(window_size=4, tolerance=math.nan), "tolerance"),
    (dict(window_size=4, max_iters=0), "max_iters"),
])
def test_bad_arguments_name_themselves(kwargs, name):
    eps_fn, schedule, noise = _gmm_problem("ddim", 10)
    with pytest.raises(ValueError, match=name):
        solve_paradigms(eps_fn, schedule, noise, **kwargs)
    with pytest.raises(ValueError, match="noise"):
        solve_paradigms(eps_fn, schedule, noise[:, :5], window_size=4)


def test_non_finite_network_output_stops():
    _, schedule, noise = _gmm_problem("ddim", 10)
    with pytest.raises(NonFiniteError):
        solve_paradigms(lambda x, s, k: x * math.nan, schedule, noise, window_size=4)


def test_default_tolerance_is_diffusers_default():
    signature = inspect.signature(StableDiffusionParadigmsPipeline.__call__)
    assert signature.parameters["tolerance"].default == DEFAULT_TOLERANCE


@pytest.fixture(scope="module")
def tiny_sd():
    from paratAA.cli.models import load_text_to_image

    runner = load_text_to_image("tiny", "cpu", "float32")
    runner.make_schedule(10)
    return runner


@pytest.mark.parametrize("sampler, num_steps, window, tolerance", [
    ("ddim", 25, 8, 0.1), ("ddim", 20, 20, 0.01), ("ddpm", 20, 6, 0.1),
])
def test_reproduces_diffusers_pipeline_on_tiny_sd(tiny_sd, sampler, num_steps, window, tolerance):
    seed, cfg = 3, 4.0
    run = run_diffusers_paradigms(tiny_sd.pipe, "a cat", "", cfg, sampler, num_steps, window, tolerance, seed)
    _, ordinary = scheduler_pair(tiny_sd.pipe.scheduler.config, sampler, num_steps)
    schedule = Schedule.from_scheduler(ordinary, eta=0.0)
    eps_fn = tiny_sd.eps_fn(text_conditioning(["a cat"], [""], cfg), schedule)
    noise = sample_noise(seed, 1, num_steps, tiny_sd.latent_shape)
    ours = solve_paradigms(eps_fn, schedule, noise, window_size=window, tolerance=tolerance)
    scale = float(ours.samples.abs().max())
    assert ours.iterations == run.iterations < num_steps
    assert float((ours.samples - run.latents).abs().max()) < 1e-5 * scale  # float32 precision
    # Not trivially equal: the loose tolerance leaves a visible gap to the sequential sample.
    reference = sequential(eps_fn, schedule, noise)[:, 0]
    assert float((run.latents - reference).abs().max()) > 1e-4 * scale


def test_paradigms_and_full_order_fp_share_the_fixed_point():
    eps_fn, schedule, noise = _gmm_problem("ddim", 25)
    picard = solve_paradigms(eps_fn, schedule, noise, window_size=25, tolerance=1e-9)
    fp_plus = solve(eps_fn, schedule, noise, window_size=25, order=25, memory_size=1, tol1=1e-12, tol2=1e-12)
    assert torch.allclose(picard.samples, fp_plus.samples, rtol=0, atol=1e-7)
