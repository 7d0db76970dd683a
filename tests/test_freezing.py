"""The freezing margin (``freeze_factor``, ``paratAA.solver`` step 2): while some window step is above
its tolerance, steps become final only within ``freeze_factor`` times it; once every window step is
within the tolerance the sample stops."""

from __future__ import annotations

import pytest
from diffusers import DDIMScheduler

from paratAA import Schedule, sample_noise, sequential, solve
from paratAA.analytic import gaussian_mixture_problem

T = 20
LOOSE = dict(tol1=1e-3, tol2=1e-3)


@pytest.fixture(scope="module")
def problem():
    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(T)
    schedule = Schedule.from_scheduler(scheduler)
    eps_fn = gaussian_mixture_problem((4, 8, 8), num_components=4, seed=0).eps_fn(schedule)
    noise = sample_noise(0, 3, T, (4, 8, 8))
    return schedule, eps_fn, noise, sequential(eps_fn, schedule, noise)[:, 0]


def _frontiers(result, k: int) -> list[int]:
    return [record.frontier[k] for record in result.records]


def test_no_step_freezes_by_the_tolerance_before_the_whole_window_meets_it(problem):
    schedule, eps_fn, noise, _ = problem
    never = solve(eps_fn, schedule, noise, freeze_factor=1e-300, **LOOSE)  # only the safeguard freezes steps
    for k in range(noise.shape[0]):
        moves = _frontiers(never, k)
        last = moves.index(0)
        assert moves[:last] == list(range(T - 1, T - 1 - last, -1))  # one step per iteration, the safeguard's
        assert last < T - 1  # ... until every window step is within the tolerance: then done at once
    paper_rule = solve(eps_fn, schedule, noise, freeze_factor=1.0, **LOOSE)
    moves = [_frontiers(paper_rule, k) for k in range(noise.shape[0])]
    jumps = [above - below for frontiers in moves for above, below in zip(frontiers, frontiers[1:]) if below > 0]
    assert max(jumps) > 1  # steps freeze as soon as they meet the tolerance, several in one iteration


def test_a_smaller_freeze_factor_ends_closer_to_the_sequential_sample(problem):
    schedule, eps_fn, noise, reference = problem
    distance = {}
    for factor in (1.0, 0.1):
        result = solve(eps_fn, schedule, noise, freeze_factor=factor, **LOOSE)
        assert set(result.stop_reasons) == {"tolerance"}
        distance[factor] = float((result.samples - reference).abs().max())
    assert distance[0.1] < distance[1.0] / 5


@pytest.mark.parametrize("window", [T, 6])
@pytest.mark.parametrize("factor", [0.1, 0.5, 1.0])
def test_every_freeze_factor_converges_to_the_sequential_sample(problem, window, factor):
    schedule, eps_fn, noise, reference = problem
    result = solve(eps_fn, schedule, noise, window_size=window, freeze_factor=factor, tol1=1e-10, tol2=0.0)
    assert result.converged and float((result.samples - reference).abs().max()) < 1e-8
    assert result.iterations <= T
