"""Quick modes of the benchmark entry points (tiny sizes) and the target bookkeeping of compare.py."""

import json

import pytest
import torch

from benchmarks import compare, gpu_timing, solver_overhead


def test_solver_overhead_quick_writes_table_and_json(tmp_path, capsys):
    out = tmp_path / "overhead.json"
    report = solver_overhead.main(["--quick", "--iters", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == report["rows"] and len(saved["rows"]) == 2  # windows 4 and T = 10, memory 2
    for row in saved["rows"]:
        assert row["iterations_timed"] == 2 and row["solver_ms"] > 0 and row["peak_rss_mb"] > 0
        assert row["trajectory_mb"] == pytest.approx(11 * 4 * 8 * 8 * 8 / 2**20)
    assert "| 4x8x8 | 10 | 4 | 2 |" in capsys.readouterr().out


def test_solver_overhead_rejects_bad_latent():
    with pytest.raises(SystemExit):
        solver_overhead.main(["--latents", "4x0x8"])


def test_compare_gmm_row_is_exact_and_checks_targets(tmp_path):
    out = tmp_path / "compare.json"
    report = compare.main(["--problems", "gmm", "--max_steps", "25", "--windows", "5", "--max_window", "25",
                           "--samples", "1", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert {r["window"] for r in rows} == {5, 25} and {r["num_steps"] for r in rows} == {25}
    by_method = {(r["window"], r["method"]): r for r in rows}
    assert by_method[(25, "sequential")]["max_abs_diff"] == 0
    for window in (5, 25):
        for name in ("FP", "FP+", "ParaTAA m2 K5", "ParaDiGMS tol=0.1", "ParaDiGMS tol=0.001"):
            row = by_method[(window, name if name != "ParaTAA m2 K5" else f"ParaTAA m2 K{min(20, window)}")]
            assert row["converged"] and 1 <= row["iterations"] <= 25
            assert row["max_abs_diff"] < 0.5 and len(row["residuals"]) == row["iterations"]
    assert len(report["targets"]) == 2 and all("taa_lt_fpplus_lt_fp" in t for t in report["targets"])


def _row(method, iterations, diff, window=10):
    return dict(problem="gmm", sampler="ddim", num_steps=100, window=window, method=method,
                iterations=iterations, max_abs_diff=diff)


def test_targets_bookkeeping():
    rows = [_row("FP", 60, 1e-3), _row("FP+", 20, 1e-3), _row("ParaTAA m2 K10", 7, 5e-3),
            _row("ParaDiGMS tol=0.1", 10, 1e-2), _row("ParaDiGMS tol=0.001", 12, 1e-4)]
    (check,) = compare.targets(rows)
    assert check["taa_lt_fpplus_lt_fp"] and check["ddim100_gmm_le_7_iters"]
    assert check["taa_le_0.7_paradigms@0.1"]  # 7 <= 0.7 * 10 and 5e-3 <= 1e-2
    assert not check["taa_le_0.7_paradigms@0.001"]  # larger difference than ParaDiGMS at 1e-3
    rows[2] = _row("ParaTAA m2 K10", 25, 5e-3)
    (check,) = compare.targets(rows)
    assert not check["taa_lt_fpplus_lt_fp"] and not check["ddim100_gmm_le_7_iters"]


def _accuracy_file(path, problem, iterations):
    """A benchmarks/accuracy.py JSON with one flow-matching row: ``iterations`` per method at 1e-3."""
    methods = {name: {"best": {"0.001": {"iterations": n}}} for name, n in iterations.items()}
    group = dict(problem=problem, scenario="fm-28", sampler="flow", num_steps=28, eta=0.0, window=28, methods=methods)
    path.write_text(json.dumps({"groups": [group]}))
    return path


def test_gpu_timing_counts_iterations_at_matched_accuracy(tmp_path):
    first = _accuracy_file(tmp_path / "a.json", "gmm cfg 1", {"default": 7, "ParaDiGMS": 9})
    rerun = _accuracy_file(tmp_path / "b.json", "gmm cfg 1", {"default": 4})  # a later run of the same row
    other = _accuracy_file(tmp_path / "c.json", "gmm cfg 3", {"default": 5, "ParaDiGMS": 8})
    counts = gpu_timing.matched_iteration_counts([first, rerun, other, tmp_path / "missing.json"], 1e-3)
    row = counts[("flow", "fm-28", 28, 28)]
    assert row["default"] == {"iterations": 5, "problems": ["gmm cfg 1", "gmm cfg 3"]}  # the rerun's 4, then the max
    assert row["ParaDiGMS"]["iterations"] == 9
    assert gpu_timing.matched_iteration_counts([first], 1e-2) == {}


def test_gpu_timing_tiny_cpu_smoke(tmp_path):
    counts = _accuracy_file(tmp_path / "accuracy.json", "gmm", {"default": 4, "ParaDiGMS": 9})
    report = gpu_timing.main(["--device", "cpu", "--tiny", "--models", "dit,flux", "--steps", "28", "--repeats", "1",
                              "--accuracy_json", str(counts), "--out_dir", str(tmp_path)])
    saved = json.loads((tmp_path / "gpu_timing.json").read_text())
    assert saved["smoke_run"] and saved["results"][0]["latent"] == [4, 8, 8]
    dit, flux = saved["results"]
    assert [w["window"] for w in dit["windows"]] == [1]  # no DDIM rows counted: the reference window only
    assert [(w["window"], w["scenario"]) for w in flux["windows"]] == [(1, None), (28, "fm-28")]
    row = flux["windows"][1]
    assert row["network_seconds"] > 0 and row["solver_seconds"] > 0
    assert row["default"]["iterations"] == 4 and row["ParaDiGMS"]["iterations"] == 9
    expected = 28 * flux["sequential_step_seconds"] / (4 * (row["network_seconds"] + row["solver_seconds"]))
    assert abs(row["default"]["speedup"] - expected) < 1e-9 * expected
    assert flux["guidance_rows"] == 1 and dit["guidance_rows"] == 2  # Flux-dev's guidance is embedded
    assert report["results"][0]["sequential_step_seconds"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_gpu_timing_without_cuda_says_so():
    with pytest.raises(SystemExit, match="CUDA is not available"):
        gpu_timing.main([])


def test_accuracy_sweep_reports_fewest_iterations_at_each_accuracy(tmp_path, capsys):
    from benchmarks import accuracy

    out = tmp_path / "accuracy.json"
    accuracy.main(["--problems", "gmm", "--scenarios", "ddim-25", "--windows", "T", "--samples", "1",
                   "--methods", "FP+,default,ParaDiGMS,ParaSolver", "--out", str(out)])
    [group] = json.loads(out.read_text())["groups"]
    assert group["num_steps"] == group["window"] == 25 and set(group["methods"]) == {"FP+", "default", "ParaDiGMS",
                                                                                     "ParaSolver"}
    for method in group["methods"].values():
        runs = method["runs"]
        assert runs and all(1 <= r["iterations"] <= 25 and r["converged"] for r in runs)
        for threshold, best in method["best"].items():
            reaching = [r for r in runs if r["max_abs_diff"] <= float(threshold)]
            assert (best is None) == (not reaching)
            if best is not None:
                assert best["iterations"] == min(r["iterations"] for r in reaching)
    # the default reaches 1e-3 in fewer iterations than FP+ on this problem
    best = {name: group["methods"][name]["best"]["0.001"]["iterations"] for name in ("default", "FP+")}
    assert best["default"] < best["FP+"]
    printed = capsys.readouterr().out
    assert "| gmm | ddim-25 | 25 |" in printed  # the headline row


def test_accuracy_report_of_a_missing_file_is_a_usage_error(tmp_path, capsys):
    from benchmarks import accuracy

    with pytest.raises(SystemExit) as stop:
        accuracy.main(["--report", str(tmp_path / "absent.json"), "--out", str(tmp_path / "plot.json")])
    assert stop.value.code == 2 and "--report: no such file" in capsys.readouterr().err


def test_fewest_iterations_and_monotone_violations():
    from benchmarks.accuracy import fewest_iterations, monotone_violations

    runs = [dict(tol=1e-2, iterations=5, max_abs_diff=3e-2), dict(tol=1e-3, iterations=7, max_abs_diff=8e-4),
            dict(tol=1e-4, iterations=9, max_abs_diff=2e-3), dict(tol=1e-5, iterations=12, max_abs_diff=1e-5)]
    assert fewest_iterations(runs, 1e-3)["tol"] == 1e-3 and fewest_iterations(runs, 1e-6) is None
    assert fewest_iterations(runs, 1e-4)["iterations"] == 12
    assert monotone_violations(runs) == [(1e-3, 1e-4)]


def test_accuracy_half_precision_batch_rows(tmp_path, capsys):
    """--dtype bfloat16: the float32 sequential sample is the reference, the bar and its multiples are thresholds,
    the default methods report an out-of-the-box run, and every run its per-sample iterations and distances."""
    from benchmarks import accuracy

    out = tmp_path / "half.json"
    report = accuracy.main(["--problems", "tiny-dit", "--cfg_scales", "3", "--scenarios", "ddim-25", "--windows", "T",
                            "--samples", "2", "--dtype", "bfloat16", "--methods", "default,default m2,ParaDiGMS",
                            "--rounding_realizations", "3", "--out", str(out)])
    [group] = json.loads(out.read_text())["groups"]
    assert group["dtype"] == "bfloat16" and group["bar"] > 0 and len(group["per_sample_bar"]) == 2
    # The bar over rounding: realization 0 is the row's own bar; the perturbed ones round differently.
    bars = group["rounding_bars"]
    assert len(bars) == 3 and bars[0] == group["per_sample_bar"] and bars[1] != bars[0] and bars[2] != bars[1]
    assert group["per_sample_typical_bar"] == [sorted(column)[1] for column in zip(*bars)]
    assert set(group["methods"]) == {"default", "default m2", "ParaDiGMS"}
    for name, method in group["methods"].items():
        assert {"bar x1", "bar x1.5", "bar x2", "0.001"} <= set(method["best"])
        for run in method["runs"]:
            assert len(run["per_sample_iterations"]) == len(run["per_sample_max_abs_diff"]) == 2
            assert run["iterations"] == max(run["per_sample_iterations"]) == run["iterations_spread"]["max"]
            assert run["max_abs_diff"] == pytest.approx(max(run["per_sample_max_abs_diff"]))
            assert "max_abs_diff_own_sequential" in run
        for key, best in method["best"].items():
            if key.startswith("bar") and best is not None:
                assert best["max_abs_diff"] <= float(key.split("x")[1]) * group["bar"]
        assert ("out_of_box" in method) == name.startswith("default")
    box = group["methods"]["default"]["out_of_box"]
    assert box["tol"] is None and box["stop_reasons"] and set(box["stop_reasons"]) <= {"tolerance", "floor", "safeguard"}
    assert not any(r["tol"] is None for r in group["methods"]["default"]["runs"])
    assert [t["method"] for t in report["targets"]] == ["default", "default m2"]
    assert all("a_distance" in t for t in report["targets"])  # no float32 row in the run: (a)'s ratio is absent
    box_distances = group["methods"]["default"]["out_of_box"]["per_sample_max_abs_diff"]
    assert report["targets"][0]["a_worst_over_typical_bar"] == pytest.approx(
        max(d / t for d, t in zip(box_distances, group["per_sample_typical_bar"])))
    assert "| tiny-dit cfg 3 | ddim-25 | 25 | 2 | bfloat16 |" in capsys.readouterr().out


def test_accuracy_dtype_arguments_are_checked(tmp_path):
    from benchmarks import accuracy

    with pytest.raises(SystemExit):  # the analytic problem has no network to run in half precision
        accuracy.main(["--problems", "gmm", "--dtype", "float16", "--out", str(tmp_path / "a.json")])
    with pytest.raises(SystemExit):
        accuracy.main(["--fp16", "--dtype", "bfloat16", "--out", str(tmp_path / "a.json")])
    with pytest.raises(SystemExit):
        accuracy.main(["--rounding_realizations", "0", "--out", str(tmp_path / "a.json")])
    with pytest.raises(SystemExit):  # names checked as the flag is parsed (benchmarks.arguments.comma_list)
        accuracy.main(["--methods", "default,magic", "--out", str(tmp_path / "a.json")])
    with pytest.raises(SystemExit):  # tiny-sdxl samples with its own Euler scheduler only
        accuracy.main(["--problems", "tiny-sdxl", "--scenarios", "ddim-25", "--out", str(tmp_path / "a.json")])
    assert accuracy.supports("tiny-sd3", "flow") and accuracy.supports("gmm", "flow")
    assert not accuracy.supports("digits", "flow") and accuracy.supports("tiny-sd", "dpm")


def _batch_run(tol, per_sample_iterations, distances):
    return dict(tol=tol, iterations=max(per_sample_iterations), per_sample_iterations=per_sample_iterations,
                per_sample_max_abs_diff=distances, max_abs_diff=max(distances))


def test_use_targets_bookkeeping():
    from benchmarks.accuracy import targets_table, use_targets

    def group(dtype, methods, bar=None):
        return dict(problem="digits cfg 3", scenario="ddim-50", sampler="ddim", window=50, samples=4, dtype=dtype,
                    bar=bar, methods=methods)

    f32_box = _batch_run(None, [8, 8, 9, 10], [1e-3, 1e-3, 2e-3, 2e-3])
    f32 = group("float32", {
        "default": dict(out_of_box=f32_box, best={"0.001": _batch_run(1e-3, [6, 6, 6, 13], [5e-4] * 4)}),
        "ParaDiGMS": dict(best={"0.001": _batch_run(0.05, [10] * 4, [9e-4] * 4)})})
    half_box = _batch_run(None, [9, 9, 10, 12], [0.05, 0.05, 0.05, 0.3])
    bf16 = group("bfloat16", {"default": dict(out_of_box=half_box, best={"bar x2": half_box})}, bar=0.1)
    checks = {c["dtype"]: c for c in use_targets([f32, bf16])}
    c = checks["float32"]
    assert c["b_ratio"] == pytest.approx(1.3) and not c["b_vs_paradigms"]  # the slowest sample sets the batch's
    assert c["c_iterations_spread@out_of_box"] == pytest.approx(10 / 8.5)
    assert not c["c_iterations_spread"]  # 13 > 2 x 6 at matched accuracy
    assert c["d_distance_spread"]  # 2e-3 <= 3 x 1.5e-3
    h = checks["bfloat16"]
    assert h["a_iterations_ratio"] == pytest.approx(12 / 10) and h["a_iterations"]
    assert h["a_distance_over_bar"] == pytest.approx(3.0) and not h["a_distance"]
    assert not h["d_distance_spread"] and "b_ratio" not in h  # 0.3 > 3 x 0.05; (b) is float32's
    table = targets_table(list(checks.values()))
    assert "MISSED (3.00)" in table and "met (12 / 10 = 1.20)" in table


def test_one_method_registry_serves_every_benchmark():
    """compare's grid, the paper tables and the sweeps all run ``benchmarks.methods``' configurations,
    and every registered method converges to the sequential sample."""
    from diffusers import DDIMScheduler

    import paratAA
    from benchmarks import paper_tables
    from benchmarks.methods import METHODS, PAPER_FORM, method
    from paratAA.analytic import gaussian_mixture_problem

    scheduler = DDIMScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    schedule = paratAA.Schedule.from_scheduler(scheduler)
    eps_fn = gaussian_mixture_problem((2, 4, 4), num_components=4, seed=0).eps_fn(schedule)
    noise = paratAA.sample_noise(0, 2, 10, (2, 4, 4))
    reference = paratAA.sequential(eps_fn, schedule, noise)[:, 0]
    for name, registered in METHODS.items():
        tol = 1e-9 if registered.kind == "solve" else 1e-7
        result = registered.run(eps_fn, schedule, noise, 10, tol)
        assert float((result.samples - reference).abs().max()) < 1e-6, name
        out_of_box = registered.run(eps_fn, schedule, noise, 10, None)  # each method's own default tolerance
        assert out_of_box.converged and float((out_of_box.samples - reference).abs().max()) < 0.5, name
    grid = {e.name: e for e in compare.method_grid(10, 1e-3, with_diffusers=True)}
    assert grid["ParaTAA m3 K10"].method.options == dict(order=10, memory_size=3, **PAPER_FORM)
    assert grid["ParaTAA-inc m3 K10 tol/100"].tol == pytest.approx(1e-5)
    assert grid["diffusers ParaDiGMS tol=0.1"].method is None and grid["ParaDiGMS tol=0.1"].method is METHODS["ParaDiGMS"]
    row = paper_tables.method_row("ParaTAA-m3")
    assert row.method.options == dict(METHODS["ParaTAA paper m3"].options)
    assert paper_tables.method_row("FP").method is METHODS["FP"]
    with pytest.raises(ValueError, match="unknown method"):
        paper_tables.method_row("magic")
    with pytest.raises(ValueError, match="unknown method 'magic'; choose from FP, FP\\+"):
        method("magic")
    with pytest.raises(ValueError, match="no solver options"):
        METHODS["ParaDiGMS"].variant("x", order=3)


def test_pipeline_dtypes_measures_sample_pipe_against_the_float32_pipeline(tmp_path, capsys):
    from benchmarks import pipeline_dtypes

    out = tmp_path / "dtypes.json"
    report = pipeline_dtypes.main(["--kinds", "sdxl", "--dtypes", "float32,bfloat16", "--samples", "2", "--steps", "6",
                                   "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert rows == json.loads(json.dumps(report["rows"])) and [r["dtype"] for r in rows] == ["float32", "bfloat16"]
    float32, bfloat16 = rows
    assert float32["bar"] == 0 and float32["distance_spread"]["max"] < 1e-3  # converged to pipe() in float32
    assert float32["stop_reasons"] == ["tolerance"] and float32["iterations_over_float32"] == 1
    assert bfloat16["bar"] > 0 and bfloat16["stop_reasons"] == ["floor"] and bfloat16["converged"]
    assert bfloat16["distance_over_bar"] == pytest.approx(bfloat16["distance_spread"]["max"] / bfloat16["bar"])
    assert len(bfloat16["per_sample_iterations"]) == 2 and bfloat16["iterations"] <= 6
    assert "| tiny-sdxl | bfloat16 | 2 | 6 |" in capsys.readouterr().out


def test_pipeline_dtypes_rejects_an_unknown_family(capsys):
    from benchmarks import pipeline_dtypes

    with pytest.raises(SystemExit):
        pipeline_dtypes.main(["--kinds", "sdxl,unet3"])
    assert "argument --kinds: unknown unet3; choose from sdxl, sd3, flux, dit" in capsys.readouterr().err


def test_comma_list_is_the_benchmarks_one_list_parser(capsys):
    import argparse

    from benchmarks.arguments import comma_list

    assert comma_list()("a,, b ") == ["a", "b"]
    assert comma_list(int, minimum=1)("10,25") == [10, 25]
    assert comma_list(float)("1,3.5") == [1.0, 3.5]
    for parse, text in ((comma_list(int), "10,x"), (comma_list(int, minimum=1), "0,5"), (comma_list(), " , "),
                        (comma_list(choices=("sdxl", "sd3")), "sdxl,flux")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=comma_list(int, minimum=1))
    with pytest.raises(SystemExit):
        parser.parse_args(["--windows", "10,ten"])
    assert "argument --windows: expected comma-separated int values, got '10,ten'" in capsys.readouterr().err
