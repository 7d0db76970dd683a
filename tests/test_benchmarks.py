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
    for name, method in group["methods"].items():
        runs = method["runs"]
        assert runs and all(1 <= r["iterations"] <= 25 and r["converged"] for r in runs)
        for threshold, best in method["best"].items():
            reaching = [r for r in runs if r["max_abs_diff"] <= float(threshold)]
            assert (best is None) == (not reaching)
            if best is not None:
                assert best["iterations"] == min(r["iterations"] for r in reaching)
    # the default reaches 1e-3 in fewer iterations than FP+ on this problem
    assert group["methods"]["default"]["best"]["0.001"]["iterations"] < group["methods"]["FP+"]["best"]["0.001"]["iterations"]
    printed = capsys.readouterr().out
    assert "| gmm | ddim-25 | 25 |" in printed  # the headline row


def test_fewest_iterations_and_monotone_violations():
    from benchmarks.accuracy import fewest_iterations, monotone_violations

    runs = [dict(tol=1e-2, iterations=5, max_abs_diff=3e-2), dict(tol=1e-3, iterations=7, max_abs_diff=8e-4),
            dict(tol=1e-4, iterations=9, max_abs_diff=2e-3), dict(tol=1e-5, iterations=12, max_abs_diff=1e-5)]
    assert fewest_iterations(runs, 1e-3)["tol"] == 1e-3 and fewest_iterations(runs, 1e-6) is None
    assert fewest_iterations(runs, 1e-4)["iterations"] == 12
    assert monotone_violations(runs) == [(1e-3, 1e-4)]
