"""The options object: presets, keyword arguments over it, one validation for the library and the scripts."""

from __future__ import annotations

import argparse
from dataclasses import fields

import pytest
import torch

import paratAA
from paratAA import PAPER, RECOMMENDED, SolverOptions, solve
from paratAA.analytic import gaussian_mixture_problem
from paratAA.cli.flags import ReferenceDefaults, add_solver_args, fit_method_defaults, solver_options
from paratAA.errors import OptionError
from paratAA.noise import sample_noise
from paratAA.schedule import Schedule

T = 12


@pytest.fixture(scope="module")
def problem():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(T)
    schedule = Schedule.from_scheduler(scheduler)
    mixture = gaussian_mixture_problem((8,), num_components=3, seed=0, spread=1.5, std=0.2)
    return mixture.eps_fn(schedule), schedule, sample_noise(0, 3, T, (8,))


def test_presets_are_instances_with_the_documented_values():
    assert isinstance(RECOMMENDED, SolverOptions) and RECOMMENDED == SolverOptions()
    assert (RECOMMENDED.map_form, RECOMMENDED.init, RECOMMENDED.memory_size, RECOMMENDED.freeze_factor) == (
        "secant", "denoised", None, 0.1)
    assert RECOMMENDED.resolved(T).memory_size == 1  # the default rule: no Anderson memory ...
    for dtype in ("float16", "bfloat16"):  # ... but memory 2 for a half-precision network
        assert RECOMMENDED.replace(network_dtype=dtype).resolved(T).memory_size == 2
    assert RECOMMENDED.replace(network_dtype="bfloat16", memory_size=1).resolved(T).memory_size == 1
    resolved = RECOMMENDED.resolved(T)
    assert (resolved.tol1, resolved.tol2, resolved.precision_floor) == (1e-4, 1e-4, True)  # the default rule
    assert RECOMMENDED.replace(tol1=1e-5).resolved(T).precision_floor is False  # an explicit tolerance wins
    assert PAPER.resolved(T).precision_floor is False
    assert (PAPER.map_form, PAPER.init, PAPER.window_size, PAPER.memory_size, PAPER.tol1, PAPER.tol2,
            PAPER.freeze_factor) == ("affine", "copy", 100, 2, 1e-3, 1e-3, 1.0)
    assert "map_form='affine'" in repr(PAPER)  # the repr is what config.json records


def test_keywords_win_over_the_options_object_and_none_keeps_it(problem):
    eps_fn, schedule, noise = problem
    by_object = solve(eps_fn, schedule, noise, PAPER.replace(window_size=4, order=2, tol1=1e-7, tol2=1e-7))
    by_keywords = solve(eps_fn, schedule, noise, window_size=4, order=2, memory_size=2, map_form="affine", init="copy",
                        freeze_factor=1.0, tol1=1e-7, tol2=1e-7)
    mixed = solve(eps_fn, schedule, noise, PAPER, window_size=4, order=2, tol1=1e-7, tol2=1e-7, init=None)
    assert by_object.iterations == by_keywords.iterations == mixed.iterations
    assert torch.equal(by_object.trajectory, by_keywords.trajectory)
    assert torch.equal(by_object.trajectory, mixed.trajectory)
    default = solve(eps_fn, schedule, noise, tol1=1e-7, tol2=1e-7)
    assert default.iterations != by_object.iterations or not torch.equal(default.trajectory, by_object.trajectory)


def test_resolved_caps_the_window_and_makes_the_order_a_number():
    resolved = PAPER.resolved(num_steps=T)
    assert (resolved.window_size, resolved.order) == (T, T)
    assert SolverOptions(window_size=5, order=3).resolved(T).order == 3


@pytest.mark.parametrize("change, name", [
    (dict(window_size=0), "window_size"), (dict(order=7, window_size=6), "order"), (dict(memory_size=0), "memory_size"),
    (dict(tol1=-1.0), "tol1"), (dict(tol2=float("nan")), "tol2"), (dict(anderson_lambda=0.0), "anderson_lambda"),
    (dict(map_form="newton"), "map_form"), (dict(init="zeros"), "init"), (dict(reanchor="no"), "reanchor"),
    (dict(max_iters=0), "max_iters"), (dict(freeze_factor=0.0), "freeze_factor"), (dict(freeze_factor=1.5), "freeze_factor"),
    (dict(freeze_factor="0.1"), "freeze_factor"),
])
def test_a_bad_option_names_itself(change, name):
    with pytest.raises(OptionError, match=name) as error:
        SolverOptions(**change).resolved(T)
    assert error.value.option == name
    with pytest.raises(OptionError, match=f"--{name}"):  # the scripts' wording
        SolverOptions(**change).resolved(T, flag=lambda n: f"--{n}")


def test_unknown_option_and_wrong_options_type_are_clear_errors(problem):
    eps_fn, schedule, noise = problem
    with pytest.raises(OptionError, match="unknown solver option 'windowsize'"):
        solve(eps_fn, schedule, noise, windowsize=3)
    with pytest.raises(ValueError, match="options must be a paratAA.SolverOptions"):
        solve(eps_fn, schedule, noise, {"window_size": 3})
    assert isinstance(OptionError("x", "y"), paratAA.errors.ParaTAAError)


def test_the_scripts_flags_are_generated_from_the_options_and_give_them_back():
    parser = argparse.ArgumentParser()
    add_solver_args(parser, ReferenceDefaults(timesteps=T, order=20, model_path="tiny"))
    flags = {action.dest for action in parser._actions}
    generated = {f.name for f in fields(SolverOptions) if f.metadata["flag"]}
    assert generated <= flags and "max_iters" not in flags  # the scripts' cap is --max_steps
    args = parser.parse_args(["--tol1", "1e-3", "--map_form", "increment", "--reanchor"])
    args.timesteps, args.max_steps, args.dtype = T, 5, "float32"
    fit_method_defaults(args, ReferenceDefaults(timesteps=T, order=20, model_path="tiny"))
    options = solver_options(args)
    assert options == RECOMMENDED.replace(window_size=T, order=T, tol1=1e-3, map_form="increment", reanchor=True,
                                          max_iters=4, network_dtype="float32")
    paper = parser.parse_args(["--paper", "--init", "denoised"])
    paper.timesteps, paper.max_steps, paper.dtype = T, None, "bfloat16"
    fit_method_defaults(paper, ReferenceDefaults(timesteps=T, order=20, model_path="tiny"))
    assert solver_options(paper) == PAPER.replace(order=20, init="denoised", network_dtype="bfloat16")
