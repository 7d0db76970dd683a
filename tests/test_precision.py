"""Half precision: the measured residual floor, why each sample stopped, and the warnings users get."""

from __future__ import annotations

import warnings

import pytest
import torch

import parallel_dit
from paratAA import SolverOptions, sequential, solve
from paratAA.batch import IterationRecord
from paratAA.cli.models import load_dit
from paratAA.cli.process import run_cli
from paratAA.errors import PrecisionWarning, UnconvergedWarning
from paratAA.pipelines import sample
from paratAA.pipelines.runner import class_conditioning
from paratAA.pipelines.tiny import tiny_embeddings, tiny_pipeline
from paratAA.precision import FLOOR_FACTOR, FloorProbe, _interpolate
from paratAA.solver import Solver
from paratAA.window import SlidingWindow

T = 20


@pytest.fixture(scope="module")
def digits():
    """The trained digits DiT in float32 and bfloat16, DDIM-20, guidance 3, two samples."""
    torch.manual_seed(0)
    runners = {dtype: load_dit("digits", dtype=dtype) for dtype in ("float32", "bfloat16")}
    schedule = runners["float32"].make_schedule(T)
    runners["bfloat16"].make_schedule(T)
    conditioning = class_conditioning([3, 7], 3.0)
    noise = runners["float32"].sample_noise(0, 2, T)
    return schedule, noise, {dtype: r.eps_fn(conditioning) for dtype, r in runners.items()}


def test_without_the_floor_a_bf16_network_degrades_to_sequential_and_says_so(digits):
    schedule, noise, eps = digits
    result = solve(eps["bfloat16"], schedule, noise)  # network_dtype unknown: no floor
    assert result.iterations >= T - 2
    assert "safeguard" in result.stop_reasons or "tolerance" in result.stop_reasons
    floored = solve(eps["bfloat16"], schedule, noise, network_dtype="bfloat16")
    assert floored.iterations <= 0.6 * T and set(floored.stop_reasons) == {"floor"}
    assert floored.floors.shape == (2, T) and bool((floored.floors > 0).all())


def test_the_floored_solve_stays_as_close_to_float32_as_the_bf16_sequential_sampler(digits):
    schedule, noise, eps = digits
    exact = sequential(eps["float32"], schedule, noise)[:, 0]
    bar = (sequential(eps["bfloat16"], schedule, noise)[:, 0] - exact).flatten(1).abs().max(1).values
    floored = solve(eps["bfloat16"], schedule, noise, network_dtype="bfloat16")
    distance = (floored.samples - exact).flatten(1).abs().max(1).values
    assert bool((distance <= 2 * bar).all()), (distance, bar)


def test_tolerance_zero_reproduces_the_half_precision_sequential_sampler(digits):
    schedule, noise, eps = digits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrecisionWarning)
        result = solve(eps["bfloat16"], schedule, noise, tol1=0.0, tol2=0.0, network_dtype="bfloat16")
    assert result.converged and result.iterations == T
    assert set(result.stop_reasons) == {"safeguard"}
    reference = sequential(eps["bfloat16"], schedule, noise)
    assert (result.trajectory - reference).abs().max() < 1e-12


def test_an_explicit_tolerance_wins_with_one_warning_line(digits):
    schedule, noise, eps = digits
    with pytest.warns(PrecisionWarning, match=r"tol1=1e-05, tol2=1e-05 are below the residual floor") as caught:
        result = solve(eps["bfloat16"], schedule, noise, tol1=1e-5, tol2=1e-5, network_dtype="bfloat16", max_iters=3)
    assert len([w for w in caught if w.category is PrecisionWarning]) == 1
    assert "\n" not in str(caught[0].message)
    assert "floor" not in result.stop_reasons  # the tolerance was used as given
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)  # a float32 network: nothing to warn about
        solve(eps["float32"], schedule, noise, tol1=1e-5, tol2=1e-5, network_dtype="float32", max_iters=2)


def _iterates(solver: Solver) -> list[tuple[IterationRecord, torch.Tensor]]:
    """Every record of a solve with the trajectory right after that iteration."""
    return [(record, solver.trajectory.clone()) for record in solver.iterate()]


@pytest.mark.parametrize("window_size", [T, 6])
def test_a_block_accepted_within_the_floor_is_updated_once_more_without_holding_the_frontier(digits, window_size):
    schedule, noise, eps = digits
    steps = _iterates(Solver(eps["bfloat16"], schedule, noise, network_dtype="bfloat16", window_size=window_size))
    settled, above_a_sliding_window, settled_in, unchained = 0, 0, set(), []
    for (before, x_before), (now, x_now), (_, x_after) in zip(steps, steps[1:], steps[2:] + steps[-1:]):
        for k in range(noise.shape[0]):
            if before.windows[k] is None or now.windows[k] is None:
                continue
            block = range(before.frontier[k], before.windows[k][1])  # the steps made final by `before`
            lo, hi = now.windows[k]
            assert hi == block.start  # the frontier is where `before` left it: the block holds nothing back
            moved = (x_now[k] - x_before[k]).flatten(1).abs().amax(1)
            if bool(moved[block.start:block.stop].any()):  # the block was settled in `now`
                settled += 1
                above_a_sliding_window += lo > 0
                settled_in.add((k, now.iteration))
                assert not bool(moved[block.stop:].any())  # above it, nothing moves
                assert torch.equal(x_after[k, block.start:block.stop], x_now[k, block.start:block.stop])  # once only
            elif (k, before.iteration) in settled_in and len(block):
                unchained.append((k, now.iteration))  # `before` settled a block: its final steps must settle now
    assert settled > 0  # bfloat16 digits accept blocks within the floor
    assert not unchained  # steps made final while a block settled read its change through the map
    assert above_a_sliding_window > 0 or window_size == T  # also while the window still slides
    exact = sequential(eps["float32"], schedule, noise)[:, 0]
    bar = (sequential(eps["bfloat16"], schedule, noise)[:, 0] - exact).flatten(1).abs().max(1).values
    distance = (steps[-1][1][:, 0] - exact).flatten(1).abs().max(1).values
    assert bool((distance <= 2 * bar).all()), (distance, bar)


def test_a_settling_block_lasts_one_iteration_and_sits_right_above_the_window():
    window = SlidingWindow(size=4, frontier=10, initialized_from=10)
    assert window.updated_bounds == window.bounds == (6, 10)
    window.advance(7, settle=True)  # steps 7..9 accepted within the floor
    assert window.bounds == (3, 7) and window.updated_bounds == (3, 10)  # at most twice the window
    window.advance(6, settle=True)
    assert window.bounds == (2, 6) and window.updated_bounds == (2, 7)  # the old block is final now
    window.advance(5)
    assert window.updated_bounds == window.bounds == (1, 5)  # nothing accepted within the floor: no block
    window.advance(1)
    window.advance(0, settle=True)
    assert window.done and window.updated_bounds == (0, 0)  # a finished sample has nothing to settle


@pytest.mark.parametrize("window_size", [4, 12])
def test_a_multistep_sampler_in_bfloat16_settles_with_a_sliding_window(window_size):
    """DPM++ 2M reads two levels above each step; the settling block must keep them consistent."""
    runners = {dtype: load_dit("digits", dtype=dtype, sampler="dpm++2m") for dtype in ("float32", "bfloat16")}
    schedule = runners["float32"].make_schedule(12)
    runners["bfloat16"].make_schedule(12)
    conditioning = class_conditioning([3, 7], 3.0)
    noise = runners["float32"].sample_noise(0, 2, 12)
    eps = {dtype: runner.eps_fn(conditioning) for dtype, runner in runners.items()}
    exact = sequential(eps["float32"], schedule, noise)[:, 0]
    bar = (sequential(eps["bfloat16"], schedule, noise)[:, 0] - exact).flatten(1).abs().max(1).values
    result = solve(eps["bfloat16"], schedule, noise, window_size=window_size, network_dtype="bfloat16")
    assert result.converged and result.iterations < 12
    distance = (result.samples - exact).flatten(1).abs().max(1).values
    assert bool((distance <= 2 * bar).all()), (distance, bar)


def test_a_float32_solve_updates_only_its_window(digits):
    schedule, noise, eps = digits
    steps = _iterates(Solver(eps["float32"], schedule, noise, network_dtype="float32"))
    for (_, x_before), (now, x_now) in zip(steps, steps[1:]):
        rows = sum(hi - lo for lo, hi in filter(None, now.windows))
        assert now.evaluations == rows
        for k, window in enumerate(now.windows):
            if window is not None:
                assert torch.equal(x_now[k, window[1]:], x_before[k, window[1]:])


def test_a_max_iters_stop_is_reported_per_sample(digits):
    schedule, noise, eps = digits
    result = solve(eps["float32"], schedule, noise, max_iters=2)
    assert not result.converged and result.stop_reasons == ["max_iters", "max_iters"]


def test_sample_reads_the_pipeline_dtype_and_warns_on_unconverged_images():
    pipe = tiny_pipeline("sdxl").to(dtype=torch.bfloat16)
    kwargs = dict({k: v.to(torch.bfloat16) for k, v in tiny_embeddings("sdxl", 2).items()}, num_inference_steps=12,
                  output_type="latent", generator=torch.Generator().manual_seed(0))
    out = sample(pipe, window_size=12, **kwargs)  # fixed: the parallel solve, not the planner's choice
    assert out.result.floors is not None and set(out.result.stop_reasons) <= {"floor", "tolerance"}
    assert out.result.iterations < 12
    kwargs["generator"] = torch.Generator().manual_seed(0)
    with pytest.warns(UnconvergedWarning, match="max_iters stopped the solve after 2 iterations"):
        sample(pipe, max_iters=2, window_size=12, **kwargs)


def test_floor_probe_measures_the_output_jump_of_a_rounding_network():
    b = torch.full((10,), 0.5, dtype=torch.float64)
    probe = FloorProbe("bfloat16", b)
    x = torch.randn(10, 3, 4, 4, dtype=torch.float64)
    steps = torch.arange(10)
    perturbed, picked = probe.rows(x, steps)
    assert picked.tolist() == [0, 1, 3, 4, 5, 6, 8, 9]  # 8 rows spread over the window, ends included
    assert (perturbed - x[picked]).abs().max() <= 2.0**-8 * x.abs().max() + 1e-15
    smooth = probe.floors(steps, 2 * x, picked, 2 * perturbed)
    rounded = probe.floors(steps, (2 * x).bfloat16().double(), picked, (2 * perturbed).bfloat16().double())
    assert smooth.shape == (10,) and bool((rounded > 0).all())
    jitter = 0.5 * (2 * (perturbed - x[picked])).flatten(1).pow(2).mean(1).sqrt()  # |b| rms(jump) per probe
    local = _interpolate(torch.arange(10.0, dtype=torch.float64), picked.double(), jitter)
    torch.testing.assert_close(smooth, FLOOR_FACTOR * local.clamp(min=float(local.pow(2).mean().sqrt())))


def test_the_jump_is_interpolated_and_each_step_keeps_its_own_b():
    # SD3-like: the last step's |b| is tiny, the one above it large; steps 1-2 are not probed (T = 20).
    b = torch.tensor([0.01] + [0.1] * 19, dtype=torch.float64)
    probe = FloorProbe("bfloat16", b)
    x = torch.randn(20, 2, 4, 4, dtype=torch.float64)
    steps = torch.arange(20)
    perturbed, picked = probe.rows(x, steps)
    assert picked.tolist()[:2] == [0, 3]
    out, probed = x.bfloat16().double(), perturbed.bfloat16().double()
    jitter = probe.jitter(steps, out, picked, probed)
    jump = (probed - out[picked]).flatten(1).pow(2).mean(1).sqrt()
    between = jump[0] + (jump[1] - jump[0]) / 3  # the jump at step 1, linear between steps 0 and 3
    assert float(jitter[1]) == pytest.approx(0.1 * float(between))  # |b_1| times it, not a third of the way
    torch.testing.assert_close(jitter[picked], b[picked] * jump)
    floors = probe.floors(steps, out, picked, probed)
    torch.testing.assert_close(floors, FLOOR_FACTOR * jitter.clamp(min=float(jitter.pow(2).mean().sqrt())))


def test_a_low_noise_step_gets_at_least_the_trajectorys_typical_floor():
    b = torch.tensor([0.01] + [1.0] * 7, dtype=torch.float64)  # step 0: a small |b|, like an Euler sampler's last step
    probe = FloorProbe("bfloat16", b)
    x = torch.randn(8, 2, 4, 4, dtype=torch.float64)
    steps = torch.arange(8)
    perturbed, picked = probe.rows(x, steps)
    out, probed = x.bfloat16().double(), perturbed.bfloat16().double()
    floors = probe.floors(steps, out, picked, probed)
    jitter = b[picked] * (probed - out[picked]).flatten(1).pow(2).mean(1).sqrt()
    assert jitter[0] < 0.05 * jitter[1:].min()  # its own jump is tiny ...
    typical = float(jitter.pow(2).mean().sqrt())
    assert floors[0] == pytest.approx(FLOOR_FACTOR * typical)  # ... its floor is the trajectory's rms
    assert bool((floors >= FLOOR_FACTOR * typical - 1e-15).all())
    assert floors.max() == pytest.approx(FLOOR_FACTOR * float(jitter.max()))  # the largest keep their own
    assert _interpolate(torch.tensor([0.0, 1.5, 5.0]), torch.tensor([1.0, 2.0]), torch.tensor([10.0, 20.0])).tolist() \
        == [10.0, 15.0, 20.0]


def test_the_scripts_take_dtype_on_a_cpu(tmp_path, capsys):
    status = run_cli(parallel_dit.main, ["--model_path", "tiny", "--timesteps", "6", "--num_samples", "2",
                                         "--dtype", "bfloat16", "--output_path", str(tmp_path)])
    assert status == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    import json

    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["dtype"] == "torch.bfloat16"
    assert config["resolved"]["solver_options"]["network_dtype"] == "bfloat16"
    assert SolverOptions(network_dtype="bfloat16").resolved(6).precision_floor


@pytest.mark.parametrize("kind", ["sdxl", "sd3"])
def test_a_pipeline_loaded_with_torch_dtype_float16_solves_at_its_floor(tmp_path, kind):
    """What a user does: from_pretrained(..., torch_dtype=torch.float16), then sample(pipe)."""
    from diffusers import DiffusionPipeline

    from paratAA.pipelines.tiny import save_tiny_pipeline

    path = save_tiny_pipeline(kind, tmp_path / kind)
    steps, batch = 8, 2

    def call(dtype):
        return dict({k: v.to(dtype) for k, v in tiny_embeddings(kind, batch).items()}, num_inference_steps=steps,
                    output_type="latent", generator=torch.Generator().manual_seed(0))

    no_t5 = {"text_encoder_3": None, "tokenizer_3": None} if kind == "sd3" else {}  # the tiny SD3 has no T5
    reference = DiffusionPipeline.from_pretrained(path, **no_t5)(**call(torch.float32)).images.double()
    pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=torch.float16, **no_t5)
    own = pipe(**call(torch.float16)).images.double()
    out = sample(pipe, window_size=steps, **call(torch.float16))
    result = out.result
    assert result.floors is not None and set(result.stop_reasons) <= {"floor", "tolerance"} and result.converged
    assert result.iterations < steps  # not the sequential sampler in disguise
    bar = (own - reference).abs().max()
    assert 0 < (out.images.double() - reference).abs().max() <= 2 * bar  # as close as float16's own sampler
