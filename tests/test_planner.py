"""window_size="auto": the cost fit, the planner's choice, solve / sample(pipe) / scripts' report lines."""

import warnings

import pytest
import torch
from diffusers import DDIMScheduler

import paratAA
from paratAA import cost as cost_module
from paratAA.analytic import gaussian_mixture_problem
from paratAA.cli.flags import window_size_value
from paratAA.cli.runs import speed_fields, speed_line, summary_lines
from paratAA.cost import CostModel, cached_cost, fit_cost, measure_cost, use_timer
from paratAA.options import AUTO_WINDOW, SolverOptions
from paratAA.planner import SequentialChoiceWarning, expected_iterations, plan_window, sequential_result

pytestmark = pytest.mark.usefixtures("single_thread")


class VirtualDevice:
    """An eps_fn wrapper charging a cost curve on a virtual clock (no sleeping)."""

    def __init__(self, eps_fn, flat, knee, processes=1):
        self.eps_fn, self.flat, self.knee, self.processes, self.now = eps_fn, flat, knee, processes, 0.0

    def curve(self, rows):
        local = -(-rows // self.processes)
        return self.flat * max(1.0, local / self.knee)

    def cost_timer(self):
        return self.now

    def __call__(self, x, steps, samples):
        self.now += self.curve(x.shape[0])
        return self.eps_fn(x, steps, samples)


def test_fit_recovers_a_knee_and_a_line():
    rows = [1, 2, 8, 16, 64, 256]
    gpu = fit_cost(rows, [0.01 * max(1, r / 16) for r in rows])
    assert gpu.knee == pytest.approx(16, rel=0.05) and gpu.flat == pytest.approx(0.01, rel=1e-3)
    assert gpu.seconds(512) == pytest.approx(0.32, rel=0.02)
    cpu = fit_cost(rows, [0.002 + 0.001 * r for r in rows])
    assert cpu.slope == pytest.approx(0.001, rel=0.02) and cpu.seconds(100) == pytest.approx(0.102, rel=0.02)
    split = fit_cost([8, 64], [0.01, 0.01], processes=8)  # per-process rows: 1 and 8
    assert split.per_process_rows(64) == 8 and split.seconds(64) == pytest.approx(0.01)
    with pytest.raises(ValueError):
        fit_cost([1, 2], [0.1])


def test_measure_uses_the_injected_timer_and_counts_its_time():
    device = VirtualDevice(lambda x, s, k: x, flat=0.005, knee=8)
    model = measure_cost(device, torch.zeros(1, 4, 4), 10, 2, 20)
    assert model.knee == pytest.approx(8, rel=0.05) and model.flat == pytest.approx(0.005)
    assert model.measure_seconds == pytest.approx(device.now)  # everything it ran, warm-up included
    ladder = sorted({r for r, _ in model.measured})
    assert ladder[0] == 1 and 2 in ladder and ladder[-1] == 20


@pytest.mark.parametrize("knee", [1, 16])
def test_measuring_stops_once_the_cost_is_linear(knee):
    """Past the knee, three timings on one rising line end the ladder: the large calls are predicted."""
    device = VirtualDevice(lambda x, s, k: x, flat=0.01, knee=knee)
    model = measure_cost(device, torch.zeros(1, 4, 4), 100, 4, 400)
    timed = sorted({r for r, _ in model.measured})
    assert model.linear_reached and timed[-1] < 400 and timed[-1] > knee
    assert model.seconds(400) == pytest.approx(device.curve(400), rel=0.02)  # the skipped call, predicted
    assert model.knee == pytest.approx(knee, rel=0.1, abs=1.0)
    flat = VirtualDevice(lambda x, s, k: x, flat=0.01, knee=1000)  # never rises: the whole ladder is timed
    assert max(r for r, _ in measure_cost(flat, torch.zeros(1, 4, 4), 100, 4, 400).measured) == 400


def test_cost_is_cached_per_function_and_key():
    cost_module.clear_cache()
    device = VirtualDevice(lambda x, s, k: x, flat=0.01, knee=64)  # flat over every timed call
    latent = torch.zeros(1, 4, 4)
    first, measured = cached_cost(device, latent, 10, 2, 20)
    again, measured_again = cached_cost(device, latent, 10, 2, 20)
    assert measured and not measured_again and again is first and not first.linear_reached
    _, bigger = cached_cost(device, latent, 10, 2, 40)  # more rows than measured, all flat: measured again
    assert bigger
    linear = VirtualDevice(lambda x, s, k: x, flat=0.01, knee=4)
    model, _ = cached_cost(linear, latent, 10, 2, 20)
    assert model.linear_reached  # so it stands for larger calls: not measured again
    assert cached_cost(linear, latent, 10, 2, 400) == (model, False)
    with use_timer(lambda: 0.0):  # a context's timer: a constant clock gives the floor timings
        keyed, _ = cached_cost(lambda x, s, k: x, latent, 10, 2, 20, key="model-a")
    assert keyed.flat == pytest.approx(1e-9)


def test_planner_takes_a_big_window_below_the_knee_and_sequential_on_a_line():
    flat = CostModel(flat=0.02, offset=0.0, slope=0.02 / 256)  # a GPU: flat up to 256 rows
    plan = plan_window(flat, num_steps=50, batch=2, latent_numel=64)
    assert not plan.sequential and plan.window_size == 50
    assert plan.predicted_seconds < 0.5 * plan.sequential_seconds
    line = CostModel(flat=0.0, offset=0.0, slope=0.01)  # a saturated device: twice the rows, twice the time
    plan = plan_window(line, num_steps=50, batch=2, latent_numel=64)
    assert plan.sequential and plan.window_size is None
    assert "sequential sampler" in plan.message()
    knee16 = CostModel(flat=0.02, offset=0.0, slope=0.02 / 16)  # knee 16 rows: 8 steps of 2 samples
    plan = plan_window(knee16, num_steps=50, batch=2, latent_numel=64)
    assert not plan.sequential and 4 <= plan.window_size <= 25


def test_expected_iterations_are_monotone_and_bounded():
    counts = [expected_iterations(50, w) for w in (50, 25, 12, 6, 2, 1)]
    assert counts == sorted(counts) and counts[-1] == 50 and 7 <= counts[0] <= 10
    assert expected_iterations(50, 50, stochastic=True) > counts[0]
    # a batch waits for its slowest sample: more samples, more iterations (B = 1 and 2 alike)
    by_batch = [expected_iterations(50, 12, batch=b) for b in (1, 2, 16, 100)]
    assert by_batch[0] == by_batch[1] == counts[2] and by_batch[1] < by_batch[2] < by_batch[3] <= 50


def test_window_size_auto_option_and_flag():
    assert SolverOptions(window_size="auto").resolved(20).window_size == AUTO_WINDOW
    with pytest.raises(paratAA.OptionError):
        SolverOptions(window_size="big").resolved(20)
    assert window_size_value("auto") == "auto" and window_size_value("8") == 8
    with pytest.raises(ValueError):
        paratAA.Solver(lambda x, s, k: x, *_problem(4, 1)[1:], window_size="auto")


def _problem(num_steps, batch):
    scheduler = DDIMScheduler(clip_sample=False, timestep_spacing="trailing")
    scheduler.set_timesteps(num_steps)
    schedule = paratAA.Schedule.from_scheduler(scheduler)
    mixture = gaussian_mixture_problem((2, 4, 4), num_components=4, seed=0, spread=1.5, std=0.2)
    noise = paratAA.sample_noise(0, batch, num_steps, (2, 4, 4))
    return mixture.eps_fn(schedule), schedule, noise


def test_solve_auto_on_a_flat_device_solves_in_parallel_and_exactly():
    cost_module.clear_cache()
    eps_fn, schedule, noise = _problem(20, 2)
    device = VirtualDevice(eps_fn, flat=0.01, knee=256)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SequentialChoiceWarning)
        result = paratAA.solve(device, schedule, noise, window_size="auto", tol1=1e-7, tol2=0.0)
    assert result.method == "parallel" and result.plan.window_size == 20 and result.iterations < 20
    reference = paratAA.sequential(eps_fn, schedule, noise)
    assert (result.samples - reference[:, 0]).abs().max() < 1e-5
    assert result.sequential_source == "predicted" and result.speedup is not None
    assert result.network_seconds >= 0 and result.solver_seconds >= 0


def test_solve_auto_on_a_saturated_device_runs_the_sequential_sampler_saying_so_once():
    cost_module.clear_cache()
    eps_fn, schedule, noise = _problem(12, 2)
    device = VirtualDevice(eps_fn, flat=0.01, knee=1)  # linear from one row: no window can win
    seen = []
    with pytest.warns(SequentialChoiceWarning) as caught:
        result = paratAA.solve(device, schedule, noise, window_size="auto", callback=seen.append)
    assert len([w for w in caught if issubclass(w.category, SequentialChoiceWarning)]) == 1
    assert "\n" not in str(caught[0].message) and "sequential sampler" in str(caught[0].message)
    assert result.method == "sequential" and result.stop_reasons == ["sequential"] * 2
    assert result.iterations == 12 and len(result.records) == 12 and len(seen) == 12
    assert all(seen) and result.records[-1].x0 is None  # x0 given to the callback, not kept
    assert torch.equal(result.trajectory, paratAA.sequential(eps_fn, schedule, noise))


def test_sequential_result_records_time_every_step():
    eps_fn, schedule, noise = _problem(6, 1)
    result = sequential_result(eps_fn, schedule, noise)
    assert [r.frontier[0] for r in result.records] == [5, 4, 3, 2, 1, 0] and result.records[-1].done
    assert result.seconds >= result.network_seconds + result.solver_seconds - 1e-6


def test_speed_line_wording_and_summary_fields():
    assert speed_line(1.0, 2.3, device="GPU").startswith("2.3x faster than sequential on this GPU")
    assert speed_line(5.7, 1.63, device="CPU").startswith("3.5x slower than sequential on this CPU")
    assert "predicted sequential" in speed_line(1.0, 2.0, predicted=True)
    eps_fn, schedule, noise = _problem(6, 1)
    result = paratAA.solve(eps_fn, schedule, noise)
    assert speed_fields(result, "cpu") == {"method": "parallel", "network_seconds": result.network_seconds,
                                           "solver_seconds": result.solver_seconds}
    fields = speed_fields(result, "cpu", sequential_seconds=2 * result.seconds)
    assert fields["sequential_seconds"] == 2 * result.seconds and fields["speedup"] == pytest.approx(2.0)
    assert fields["sequential_source"] == "measured" and fields["speed"].startswith("2.0x faster")
    summary = {"samples": [], "speed": fields["speed"]}
    assert summary_lines(summary) == [fields["speed"]]


@pytest.mark.parametrize("knee", [1, 4096])
def test_sample_pipe_plans_by_default_and_either_way_matches_the_pipeline(knee):
    from diffusers import DDIMScheduler

    from paratAA.pipelines import sample
    from paratAA.pipelines.tiny import tiny_pipeline

    cost_module.clear_cache()
    pipe = tiny_pipeline("sd")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    kwargs = dict(prompt=["a red cube"], num_inference_steps=20, guidance_scale=4.0, output_type="latent")
    reference = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
    clock = {"now": 0.0}
    unet_forward = pipe.unet.forward

    def charged(*args, **kw):  # the denoiser charges a virtual cost curve
        sample_rows = (args[0] if args else kw["sample"]).shape[0]
        clock["now"] += 0.01 * max(1.0, sample_rows / knee)
        return unet_forward(*args, **kw)

    pipe.unet.forward = charged
    try:
        with use_timer(lambda: clock["now"]), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = sample(pipe, tol1=1e-6, tol2=0.0, **kwargs,  # no window given: sample(pipe) plans it ('auto')
                         generator=torch.Generator().manual_seed(0))
    finally:
        del pipe.unet.forward
    chose_sequential = [w for w in caught if issubclass(w.category, SequentialChoiceWarning)]
    assert out.result.method == ("sequential" if knee == 1 else "parallel")
    assert len(chose_sequential) == (1 if knee == 1 else 0)
    assert all(w.filename == __file__ for w in chose_sequential)  # said at the caller's line, not in the pipeline
    assert out.result.plan is not None and out.result.trajectory.shape[:2] == (1, 21)
    tolerance = 0.0 if knee == 1 else 1e-4  # the pipeline's own loop is bitwise the same
    assert float((out.images - reference).abs().max()) <= tolerance


@pytest.mark.parametrize("auto", [False, True])
def test_run_folder_summary_reports_seconds_against_sequential(tmp_path, capsys, auto):
    import json

    from PIL import Image

    from paratAA.cli.runs import RunFolder, print_report, run_solve

    cost_module.clear_cache()
    eps_fn, schedule, noise = _problem(8, 1)
    eps_fn = VirtualDevice(eps_fn, flat=0.01, knee=1) if auto else eps_fn  # auto: a line, so sequential
    decode = lambda latents: [Image.new("L", (4, 4)) for _ in range(latents.shape[0])]  # noqa: E731
    options = SolverOptions(window_size="auto" if auto else 8, tol1=1e-7, tol2=0.0)
    with RunFolder(tmp_path, "run") as run, warnings.catch_warnings():
        warnings.simplefilter("ignore", SequentialChoiceWarning)
        result, summary = run_solve(eps_fn, schedule, noise, options, run, decode, [{"seed": 0}], save_steps=False,
                                    sequential_fn=lambda: paratAA.sequential(eps_fn, schedule, noise)[:, 0])
        print_report(summary, run.path)
    written = json.loads((run.path / "summary.json").read_text())
    assert written["network_seconds"] == pytest.approx(result.network_seconds)
    assert written["solver_seconds"] == pytest.approx(result.solver_seconds)
    assert written["sequential_seconds"] > 0 and written["method"] == ("sequential" if auto else "parallel")
    if auto:
        assert written["planner"]["window_size"] == "sequential" and "sequential sampler" in written["speed"]
    else:
        assert written["speedup"] == pytest.approx(written["sequential_seconds"] / written["seconds"])
        assert written["sequential_source"] == "measured"
        assert " than sequential on this CPU (" in written["speed"]
    assert written["speed"] in capsys.readouterr().out


def test_scripts_flag_window_size_auto_keeps_the_order_for_the_planner():
    import argparse

    from paratAA.cli.flags import OneLineErrorParser, ReferenceDefaults, add_common_args, fit_method_defaults, solver_options

    defaults = ReferenceDefaults(timesteps=50, order=100, model_path="tiny")
    parser = OneLineErrorParser()
    add_common_args(parser, defaults)
    args = parser.parse_args(["--window_size", "auto"])
    fit_method_defaults(args, defaults)
    options = solver_options(args).resolved(args.timesteps)
    assert options.window_size == "auto" and options.order == "window"
    assert "'auto'" in SolverOptions.help("window_size")
    with pytest.raises(SystemExit):
        parser.parse_args(["--window_size", "big"])
    assert isinstance(args, argparse.Namespace)
