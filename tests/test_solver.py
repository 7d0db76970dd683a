"""The parallel solver is exact: converged, it gives the sequential sampler's trajectory."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

import paratAA
from paratAA import NonFiniteError, Schedule, sample_noise, sequential, solve
from paratAA.analytic import GaussianMixture, gaussian_mixture_problem

LATENT = (2, 4, 4)
T = 30
TIGHT = dict(tol1=1e-12, tol2=0.0)


def ddim_schedule(eta: float = 0.0, steps: int = T, spacing: str = "trailing", prediction: str = "epsilon") -> Schedule:
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing=spacing, prediction_type=prediction)
    scheduler.set_timesteps(steps)
    return Schedule.from_scheduler(scheduler, eta=eta)


def mixture_eps(schedule: Schedule, seed: int = 0):
    return gaussian_mixture_problem(LATENT, num_components=4, seed=seed, spread=1.5, std=0.2).eps_fn(schedule)


def diffusers_loop(scheduler, eps_fn, noise: torch.Tensor, eta: float) -> torch.Tensor:
    """The outside oracle: diffusers' own step() applied sequentially, same noise, float64."""
    steps = len(scheduler.timesteps)
    x = noise[:, steps].clone()
    samples = torch.arange(noise.shape[0])
    for k, t in enumerate(scheduler.timesteps):
        i = steps - 1 - k
        out = eps_fn(x, torch.full_like(samples, i), samples)
        x = scheduler.step(out, int(t), x, eta=eta, variance_noise=noise[:, i]).prev_sample
    return x


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("window, order, memory", [
    (T, 1, 1),      # FP
    (T, T, 1),      # FP+ with full order
    (T, 8, 2),      # ParaTAA
    (T, T, 3),
    (11, 4, 3),     # window smaller than T, not dividing it
    (7, 7, 2),
])
def test_converged_solve_equals_sequential_and_diffusers(eta, window, order, memory):
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    scheduler.set_timesteps(T)
    schedule = Schedule.from_scheduler(scheduler, eta=eta)
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(3, 2, T, LATENT)

    result = solve(eps_fn, schedule, noise, window_size=window, order=order, memory_size=memory, **TIGHT)
    reference = sequential(eps_fn, schedule, noise)
    assert result.converged and result.iterations <= T
    assert (result.trajectory - reference).abs().max() < 1e-10
    oracle = diffusers_loop(scheduler, eps_fn, noise, eta)
    assert (result.samples - oracle).abs().max() < 1e-4 * (1 + oracle.abs().max())


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("map_form, reanchor", [("affine", True), ("increment", False), ("increment", True),
                                                ("secant", False), ("secant", True)])
@pytest.mark.parametrize("window, order, memory", [(T, T, 1), (T, T, 2), (T, T, 4), (11, 4, 3), (7, 7, 2)])
def test_variants_converge_to_sequential(eta, map_form, reanchor, window, order, memory):
    schedule = ddim_schedule(eta=eta)
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(8, 2, T, LATENT)
    result = solve(eps_fn, schedule, noise, window_size=window, order=order, memory_size=memory, reanchor=reanchor,
                   map_form=map_form, **TIGHT)
    assert result.converged and result.iterations <= T
    assert (result.trajectory - sequential(eps_fn, schedule, noise)).abs().max() < 1e-10


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("map_form, window, memory", [("increment", T, 2), ("increment", 7, 3), ("affine", 11, 2)])
def test_denoised_initialisation_converges_to_sequential(eta, prediction, map_form, window, memory):
    schedule = ddim_schedule(eta=eta, prediction=prediction)
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(6, 2, T, LATENT)
    result = solve(eps_fn, schedule, noise, window_size=window, memory_size=memory, map_form=map_form,
                   init="denoised", **TIGHT)
    assert result.converged and result.iterations <= T
    assert (result.trajectory - sequential(eps_fn, schedule, noise)).abs().max() < 1e-10


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_denoised_coefficients_recover_the_clean_sample(prediction):
    schedule = ddim_schedule(prediction=prediction)
    abar = schedule.alphas_cumprod.view(-1, 1)
    x0, eps = torch.randn(T, 5, dtype=torch.float64), torch.randn(T, 5, dtype=torch.float64)
    x = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    out = {"epsilon": eps, "sample": x0, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0}[prediction]
    p, q = schedule.denoised_coefficients()
    torch.testing.assert_close(p.view(-1, 1) * x + q.view(-1, 1) * out, x0, rtol=0, atol=1e-10)


def test_denoised_initialisation_starts_on_the_sampler_with_the_clean_sample_held():
    """Steps joining the window are the sampler's steps with x0_hat fixed: for a network whose x0
    prediction is one constant, every joined step then satisfies its own equation exactly."""
    schedule = ddim_schedule(eta=1.0)
    x0 = torch.randn(1, *LATENT, dtype=torch.float64)
    abar = schedule.alphas_cumprod

    def fixed_x0_eps(x, steps, samples):
        a = abar[steps].view(-1, *([1] * len(LATENT)))
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    noise = sample_noise(2, 1, T, LATENT)
    solver = paratAA.Solver(fixed_x0_eps, schedule, noise, window_size=5, init="denoised", tol1=1e-3, tol2=0.0)
    old_lo = T - 5
    next(solver.iterate())
    new_lo = solver.records[0].frontier[0] - 5
    assert new_lo < old_lo
    x, zero = solver.trajectory[0], torch.zeros(1, dtype=torch.long)
    for j in range(new_lo, old_lo):
        expected = schedule.step(j, x[j + 1], fixed_x0_eps(x[j + 1:j + 2], zero + j, zero)[0], noise[0, j])
        torch.testing.assert_close(x[j], expected, rtol=0, atol=1e-12)


def test_defaults_are_the_recommended_method_and_exact():
    schedule = ddim_schedule(eta=0.0)
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(3, 2, T, LATENT)
    default = solve(eps_fn, schedule, noise, **TIGHT)
    spelled_out = paratAA.SolverOptions(window_size=T, order=T, memory_size=1, map_form="secant", init="denoised",
                                        freeze_factor=0.1, anderson_lambda=1e-3, reanchor=False, **TIGHT)
    explicit = solve(eps_fn, schedule, noise, spelled_out)
    assert torch.equal(default.trajectory, explicit.trajectory) and default.iterations == explicit.iterations
    assert default.records[0].windows == [(0, T)] * 2  # window_size defaults to T
    assert (default.trajectory - sequential(eps_fn, schedule, noise)).abs().max() < 1e-10


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_other_prediction_types_converge_to_sequential(prediction):
    schedule = ddim_schedule(eta=1.0, prediction=prediction)
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(0, 1, T, LATENT)
    result = solve(eps_fn, schedule, noise, window_size=T, order=T, memory_size=2, **TIGHT)
    assert (result.trajectory - sequential(eps_fn, schedule, noise)).abs().max() < 1e-10


def test_ddpm_1000_steps_converges_to_sequential():
    scheduler = DDPMScheduler(clip_sample=False)
    scheduler.set_timesteps(1000)
    schedule = Schedule.from_scheduler(scheduler)
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(0, 1, 1000, LATENT)
    result = solve(eps_fn, schedule, noise, window_size=200, order=200, memory_size=3, tol1=1e-9, tol2=0.0)
    assert result.iterations < 1000
    assert (result.samples - sequential(eps_fn, schedule, noise)[:, 0]).abs().max() < 1e-6


def test_window_one_is_sequential_step_by_step():
    schedule = ddim_schedule(eta=1.0)
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(1, 2, T, LATENT)
    reference = sequential(eps_fn, schedule, noise)
    solver = paratAA.Solver(eps_fn, schedule, noise, window_size=1, order=1, memory_size=3)
    for k, record in enumerate(solver.iterate(), start=1):
        assert record.windows == [(T - k, T - k + 1)] * 2
        assert record.frontier == [T - k] * 2
        torch.testing.assert_close(solver.trajectory[:, T - k:], reference[:, T - k:], rtol=0, atol=1e-13)
    assert solver.result().iterations == T


def naive_fixed_point(eps_fn, schedule: Schedule, noise: torch.Tensor, iterations: int) -> list[torch.Tensor]:
    """Plain FP written independently: x[i] <- F_i(x[i+1]) for all i at once, from copies of x[T]."""
    x = noise[:, T:T + 1].expand_as(noise).clone()
    iterates = []
    samples = torch.arange(noise.shape[0]).repeat_interleave(T)
    steps = torch.arange(T).repeat(noise.shape[0])
    for _ in range(iterations):
        out = eps_fn(x[:, 1:].reshape(-1, *LATENT), steps, samples).view(noise.shape[0], T, *LATENT)
        a, b, c = (v.view(1, T, 1, 1, 1) for v in (schedule.a, schedule.b, schedule.c))
        x = torch.cat([a * x[:, 1:] + b * out + c * noise[:, :T], x[:, T:]], dim=1)
        iterates.append(x)
    return iterates


def test_memory_one_order_one_is_exactly_fixed_point_iteration():
    schedule = ddim_schedule(eta=1.0)
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(2, 2, T, LATENT)
    solver = paratAA.Solver(eps_fn, schedule, noise, window_size=T, order=1, memory_size=1, tol1=0.0, tol2=0.0)
    expected = naive_fixed_point(eps_fn, schedule, noise, T)
    for _, reference in zip(solver.iterate(), expected):
        assert (solver.trajectory - reference).abs().max() < 1e-12
    assert solver.result().iterations == T


def adversarial_eps(x: torch.Tensor, steps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Bounded but wildly oscillating 'network': tiny input changes flip its output, so fixed-point
    and Anderson updates gain little over one exact step per iteration."""
    phase = steps.double().view(-1, *([1] * (x.dim() - 1)))
    return 2.0 * torch.sin(40.0 * x + phase) * torch.cos(15.0 * x.roll(1, dims=-1))


@pytest.mark.parametrize("window, order, memory, variant", [
    (T, T, 2, {}), (T, T, 5, {}), (10, 10, 3, {}), (T, 1, 1, {}), (T, 5, 4, {}), (T, T, 3, dict(reanchor=True)),
    (T, T, 3, dict(map_form="increment", reanchor=True)), (9, 4, 2, dict(map_form="increment")),
    (T, T, 2, dict(init="denoised")), (6, 6, 2, dict(init="denoised", map_form="increment")),
    (T, T, 2, dict(map_form="secant")), (7, 4, 3, dict(map_form="secant", reanchor=True))])
def test_never_more_than_T_iterations_even_on_an_adversarial_network(window, order, memory, variant):
    schedule = ddim_schedule(eta=1.0)
    noise = sample_noise(0, 2, T, LATENT)
    result = solve(adversarial_eps, schedule, noise, window_size=window, order=order, memory_size=memory,
                   tol1=1e-10, tol2=0.0, **variant)
    assert result.converged
    assert max(result.per_sample_iterations) <= T
    # The sequential sampler itself is chaotic here (rounding differences grow ~10x per step), so
    # compare equations, not trajectories: every step of the result satisfies x[i] = F_i(x[i+1]).
    x = result.trajectory
    samples = torch.arange(2)
    for i in range(T):
        out = adversarial_eps(x[:, i + 1], torch.full_like(samples, i), samples)
        assert (schedule.step(i, x[:, i + 1], out, noise[:, i]) - x[:, i]).abs().max() < 1e-6


@pytest.mark.parametrize("variation_steps, window", [(T, T), (12, T), (12, 5)])
def test_warm_start_from_the_exact_trajectory_converges_at_once(variation_steps, window):
    schedule = ddim_schedule(eta=1.0)
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(4, 2, T, LATENT)
    exact = sequential(eps_fn, schedule, noise)
    result = solve(eps_fn, schedule, noise, window_size=window, order=window, memory_size=2,
                   init_trajectory=exact, variation_steps=variation_steps)
    assert result.iterations == math.ceil(variation_steps / window)
    assert torch.equal(result.trajectory[:, variation_steps:], exact[:, variation_steps:])
    assert (result.trajectory - exact).abs().max() < 1e-12


def test_warm_start_from_another_prompt_reaches_that_prompts_sequential_sample_faster():
    schedule = ddim_schedule(eta=0.0)
    mixture_a = gaussian_mixture_problem(LATENT, num_components=4, seed=0, spread=1.5, std=0.2)
    shift = 0.1 * torch.randn(mixture_a.means.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    mixture_b = GaussianMixture(mixture_a.means + shift, mixture_a.stds, mixture_a.weights)  # a related prompt
    prompt_a, prompt_b = mixture_a.eps_fn(schedule), mixture_b.eps_fn(schedule)
    noise = sample_noise(5, 2, T, LATENT)
    trajectory_a = sequential(prompt_a, schedule, noise)
    settings = dict(window_size=T, order=T, memory_size=2)
    warm = solve(prompt_b, schedule, noise, init_trajectory=trajectory_a, variation_steps=T, **settings)
    cold = solve(prompt_b, schedule, noise, **settings)
    assert warm.iterations < cold.iterations
    exact = solve(prompt_b, schedule, noise, init_trajectory=trajectory_a, variation_steps=T, **settings, **TIGHT)
    assert (exact.trajectory - sequential(prompt_b, schedule, noise)).abs().max() < 1e-10
    # A partial variation keeps prompt A's noisiest steps.
    partial = solve(prompt_b, schedule, noise, init_trajectory=trajectory_a, variation_steps=10, **settings)
    assert torch.equal(partial.trajectory[:, 10:], trajectory_a[:, 10:])


def test_batch_equals_per_sample_solves_with_per_sample_conditioning():
    schedule = ddim_schedule(eta=1.0)
    models = [mixture_eps(schedule, seed=s) for s in range(3)]

    def conditioned(x, steps, samples):  # row r is denoised by the model of its sample
        return torch.cat([models[int(s)](x[r:r + 1], steps[r:r + 1], samples[r:r + 1]) for r, s in enumerate(samples)])

    noise = sample_noise(6, 3, T, LATENT)
    settings = dict(window_size=9, order=6, memory_size=3, tol1=1e-6, tol2=0.0)
    batch = solve(conditioned, schedule, noise, **settings)
    for k in range(3):
        alone = solve(models[k], schedule, noise[k:k + 1], **settings)
        assert batch.per_sample_iterations[k] == alone.iterations
        assert batch.per_sample_evaluations[k] == alone.evaluations
        assert (batch.trajectory[k] - alone.trajectory[0]).abs().max() < 1e-12
    assert batch.evaluations == sum(batch.per_sample_evaluations)
    assert batch.iterations == max(batch.per_sample_iterations)


def test_records_describe_every_iteration():
    schedule = ddim_schedule()
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(0, 2, T, LATENT)
    seen = []
    result = solve(eps_fn, schedule, noise, window_size=8, order=8, memory_size=2, callback=seen.append)
    assert [r.iteration for r in seen] == list(range(1, result.iterations + 1))
    assert sum(r.evaluations for r in seen) == result.evaluations
    assert seen[-1].done and not any(r.done for r in seen[:-1])
    assert seen[-1].frontier == [0, 0]
    torch.testing.assert_close(seen[-1].x0, result.samples)
    for before, after in zip(seen, seen[1:]):
        for k in range(2):
            if after.windows[k] is not None:
                assert after.windows[k][1] == before.frontier[k] < (before.windows[k][1])
                assert after.windows[k][1] - after.windows[k][0] <= 8
    assert all(r.network_seconds >= 0 and r.solver_seconds >= 0 for r in seen)
    assert all(r.x0 is None for r in result.records)


def test_max_iters_stops_early():
    schedule = ddim_schedule()
    result = solve(mixture_eps(schedule), schedule, sample_noise(0, 1, T, LATENT), window_size=T, order=1,
                   memory_size=1, tol1=0.0, tol2=0.0, max_iters=3)
    assert result.iterations == 3 and not result.converged


def test_nan_from_the_network_stops_the_solve():
    schedule = ddim_schedule()
    calls = []

    def breaks_on_third_call(x, steps, samples):
        calls.append(1)
        out = torch.zeros_like(x)
        return out.fill_(float("nan")) if len(calls) == 3 else out

    with pytest.raises(NonFiniteError, match="iteration 3"):
        solve(breaks_on_third_call, schedule, sample_noise(0, 1, T, LATENT), window_size=5, order=5, memory_size=2,
              tol1=0.0, tol2=0.0)
    with pytest.raises(NonFiniteError):
        sequential(lambda x, s, k: x * float("inf"), schedule, sample_noise(0, 1, T, LATENT))


@pytest.mark.parametrize("kwargs, name", [
    (dict(window_size=0), "window_size"),
    (dict(order=0), "order"),
    (dict(order=11, window_size=10), "order"),
    (dict(memory_size=0), "memory_size"),
    (dict(tol1=-1e-3), "tol1"),
    (dict(tol2=float("nan")), "tol2"),
    (dict(max_iters=0), "max_iters"),
    (dict(anderson_lambda=0.0), "anderson_lambda"),
    (dict(variation_steps=5), "variation_steps"),
    (dict(init_trajectory=torch.zeros(1, T + 1, 3)), "init_trajectory"),
    (dict(init_trajectory=torch.zeros(1, T + 1, *LATENT), variation_steps=T + 1), "variation_steps"),
    (dict(init_trajectory=torch.zeros(1, T + 1, *LATENT), variation_steps=0), "variation_steps"),
    (dict(noise=torch.zeros(1, T, *LATENT)), "noise"),
    (dict(map_form="picard"), "map_form"),
    (dict(init="zeros"), "init"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
    schedule = ddim_schedule()
    args = dict(window_size=10, order=5, memory_size=2, noise=sample_noise(0, 1, T, LATENT))
    args.update(kwargs)
    noise = args.pop("noise")
    with pytest.raises(ValueError, match=name):
        solve(mixture_eps(schedule), schedule, noise, **args)


def test_eps_fn_with_the_wrong_shape_is_reported():
    schedule = ddim_schedule()
    with pytest.raises(ValueError, match="eps_fn returned"):
        solve(lambda x, s, k: x[:, :1], schedule, sample_noise(0, 1, T, LATENT), window_size=4, order=4,
              memory_size=1)


def test_window_larger_than_T_is_capped():
    schedule = ddim_schedule()
    eps_fn = mixture_eps(schedule)
    noise = sample_noise(0, 1, T, LATENT)
    big = solve(eps_fn, schedule, noise, window_size=100, order=20, memory_size=2)
    exact = solve(eps_fn, schedule, noise, window_size=T, order=20, memory_size=2)
    assert big.iterations == exact.iterations and torch.equal(big.trajectory, exact.trajectory)
    assert big.records[0].windows == [(0, T)]
