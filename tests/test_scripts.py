"""The three entry scripts end to end on the tiny models (CPU), single- and multi-process, and bad input.

The successful runs are real subprocesses started together (they share the two cores) by one
module-scoped fixture; bad input is also tried in-process through ``run_cli``, which is what the
scripts' ``__main__`` calls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import parallel_dit
import parallel_sd
import parallel_sd_winit
from paratAA.cli.process import run_cli

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
T = 12
TIGHT = ["--tol1", "1e-6", "--tol2", "1e-6"]
# 3 samples x window 5 = 15 rows: not divisible by 2 processes. The paper's method: on the random-weight
# tiny DiT the increment form's guess (each step's Jacobian ~ identity) is poor, it needs T = 12 iterations.
DIT = ["parallel_dit.py", "--model_path", "tiny", "--timesteps", str(T), "--num_samples", "3",
       "--window_size", "5", "--order", "3", "--paper", *TIGHT]
ACCELERATE = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _start(command: list[str], output: Path) -> subprocess.Popen:
    python = [] if command[0].endswith("accelerate") else [sys.executable]
    env = {**ENV, "ACCELERATE_USE_CPU": "1"} if not python else ENV
    return subprocess.Popen([*python, *command, "--output_path", str(output)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, dict]:
    """Start every successful run at once; return per run its exit code, output and run folders."""
    root = tmp_path_factory.mktemp("script-runs")
    commands = {
        "dit": (DIT + ["--check_sequential"], root / "dit"),
        # Same arguments and output path as "dit", run at the same moment: a separate folder.
        "dit_2proc": (ACCELERATE + DIT, root / "dit"),
        "sd": (["parallel_sd.py", "--model_path", "tiny", "--timesteps", str(T), "--num_samples", "2",
                "--prompt", "a cat", "--negative_prompt", "a dog", "--check_sequential", *TIGHT], root / "sd"),
        "winit": (["parallel_sd_winit.py", "--model_path", "tiny", "--timesteps", str(T), "--variation_steps", str(T),
                   "--prompt1", "a dog", "--prompt2", "a cat", "--check_sequential", *TIGHT], root / "winit"),
        "bad_model": (["parallel_sd.py", "--model_path", "./no/such/model"], root / "bad"),
    }
    processes = {name: _start(command, output) for name, (command, output) in commands.items()}
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = {"returncode": process.returncode, "stdout": stdout, "stderr": stderr}
    for name, result in results.items():
        lines = result["stdout"].strip().splitlines()
        if result["returncode"] == 0:  # the last line printed names the run folder
            assert lines[-1].startswith("Output folder: "), (name, result["stdout"])
            result["dir"] = Path(lines[-1].removeprefix("Output folder: "))
    return results


def _ok(runs: dict, name: str) -> Path:
    assert runs[name]["returncode"] == 0, runs[name]["stderr"][-3000:]
    return runs[name]["dir"]


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _check_run_folder(run: Path, num_samples: int, num_steps: int, config_dir: Path | None = None) -> dict:
    """Config, metrics, images, GIF and latents are present and consistent; returns the summary
    (with the largest latent magnitude added as ``latent_scale``)."""
    config, summary = _json((config_dir or run) / "config.json"), _json(run / "summary.json")
    assert config["versions"]["torch"] == torch.__version__ and "world_size" in config
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == list(range(1, summary["iterations"] + 1))
    assert sum(m["evaluations"] for m in metrics) == summary["evaluations"]
    assert len(summary["samples"]) == num_samples
    latents = load_file(str(run / "latents.safetensors"))["samples"]
    assert latents.dtype == torch.float64 and latents.shape[0] == num_samples
    summary["latent_scale"] = float(latents.abs().max())
    for sample in summary["samples"]:
        k = sample["sample"]
        assert 1 <= sample["iterations"] <= num_steps and sample["seconds"] > 0
        steps = sorted((run / f"sample_{k}").glob("step_*.png"))
        assert len(steps) == sample["iterations"] + 1  # step_0 is the start
        final = Image.open(run / f"sample_{k}" / "final.png")
        assert final.size == Image.open(steps[0]).size and final.mode == "RGB"
        gif = Image.open(run / f"sample_{k}" / "evolution.gif")
        assert gif.n_frames == len(steps)  # one frame per step image (identical images are not merged)
        # The last step image is the decoded final sample.
        assert list(Image.open(run / f"sample_{k}" / f"step_{sample['iterations']}.png").get_flattened_data()) == \
            list(final.get_flattened_data())
    return summary


def _check_sequential(summary: dict, latent_scale: float) -> None:
    """Equal to diffusers' float32 sequential sampler up to float32 rounding (the tiny random DiT's
    latents reach hundreds)."""
    for sample in summary["samples"]:
        assert sample["sequential_max_abs_diff"] < 1e-5 * max(1.0, latent_scale)
        assert sample["sequential_psnr_db"] > 50
        assert sample["sequential_seconds"] > 0
    assert summary["sequential_max_abs_diff"] == max(s["sequential_max_abs_diff"] for s in summary["samples"])


def test_dit_matches_sequential_pipeline(runs) -> None:
    summary = _check_run_folder(_ok(runs, "dit"), num_samples=3, num_steps=T)
    assert summary["converged"] and summary["iterations"] < T
    _check_sequential(summary, summary["latent_scale"])


def test_dit_two_processes_agree_with_one(runs) -> None:
    single, multi = _ok(runs, "dit"), _ok(runs, "dit_2proc")
    assert single != multi and single.parent == multi.parent  # same arguments: two folders
    summary = _check_run_folder(multi, num_samples=3, num_steps=T)
    assert _json(multi / "config.json")["world_size"] == 2
    reference = _json(single / "summary.json")
    assert [s["iterations"] for s in summary["samples"]] == [s["iterations"] for s in reference["samples"]]
    assert [s["class_label"] for s in summary["samples"]] == [s["class_label"] for s in reference["samples"]]
    # float32 network: per-row results may differ in the last bits with the batch's composition.
    difference = load_file(str(multi / "latents.safetensors"))["samples"] - \
        load_file(str(single / "latents.safetensors"))["samples"]
    assert difference.abs().max() < 1e-5


def test_dit_max_steps_labels_and_guidance_rule(tmp_path, capsys, single_thread) -> None:
    """In-process (the script's ``main`` through ``run_cli``, as ``__main__`` does)."""
    status = run_cli(parallel_dit.main, ["--model_path", "tiny", "--timesteps", str(T), "--class_labels", "3", "7",
                                         "--guidance", "original", "--eta", "0.5", "--max_steps", "3",
                                         "--output_path", str(tmp_path)])
    stdout = capsys.readouterr().out
    assert status == 0 and "stopped by --max_steps" in stdout
    run = Path(stdout.strip().splitlines()[-1].removeprefix("Output folder: "))
    summary = _check_run_folder(run, num_samples=2, num_steps=T)
    # --max_steps 3: three images per sample including the start, i.e. two iterations.
    assert summary["iterations"] == 2 and not summary["converged"]
    assert [s["class_label"] for s in summary["samples"]] == [3, 7]
    config = _json(run / "config.json")
    assert config["args"]["guidance"] == "original" and config["resolved"]["max_iterations"] == 2


def test_sd_matches_sequential_pipeline(runs) -> None:
    summary = _check_run_folder(_ok(runs, "sd"), num_samples=2, num_steps=T)
    assert {s["negative_prompt"] for s in summary["samples"]} == {"a dog"}
    _check_sequential(summary, summary["latent_scale"])


def test_winit_reports_warm_and_scratch(runs) -> None:
    run = _ok(runs, "winit")
    overview = _json(run / "summary.json")
    for name in ("prompt1", "prompt2"):
        summary = _check_run_folder(run / name, num_samples=1, num_steps=T, config_dir=run)
        _check_sequential(summary, summary["latent_scale"])
    scratch = overview["prompt2_from_scratch"]
    _check_sequential(scratch, summary["latent_scale"])
    assert overview["prompt2"]["solved_steps"] == T  # --variation_steps T: every step re-solved
    assert (run / "prompt2_from_scratch" / "sample_0" / "final.png").exists()
    assert overview["prompt2_iterations_saved"] == scratch["iterations"] - overview["prompt2"]["iterations"]
    # Prompt 2's animation starts from prompt 1's image.
    assert list(Image.open(run / "prompt2" / "sample_0" / "step_0.png").get_flattened_data()) == \
        list(Image.open(run / "prompt1" / "sample_0" / "final.png").get_flattened_data())
    assert "from scratch" in runs["winit"]["stdout"]


def test_unknown_model_is_one_line_error(runs) -> None:
    result = runs["bad_model"]
    assert result["returncode"] == 2 and "Traceback" not in result["stderr"]
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "model_path" in lines[0]


BAD_INPUTS = [
    (parallel_dit, ["--order", "5", "--window_size", "3"], "--order"),
    (parallel_dit, ["--window_size", "0"], "--window_size"),
    (parallel_dit, ["--memory_size", "0"], "--memory_size"),
    (parallel_dit, ["--tol2", "-0.001"], "--tol2"),
    (parallel_dit, ["--eta", "1.5"], "--eta"),
    (parallel_dit, ["--max_steps", "1"], "--max_steps"),
    (parallel_dit, ["--fp16", "--dtype", "bfloat16"], "--fp16"),
    (parallel_dit, ["--class_labels", "1", "2", "--num_samples", "3"], "--class_labels"),
    (parallel_dit, ["--class_labels", "5000"], "--class_labels"),
    (parallel_dit, ["--timesteps", "5000"], "--timesteps"),
    (parallel_dit, ["--model_path", "no-such-owner/no-such-model"], "model_path"),
    (parallel_sd, ["--prompt", "  "], "--prompt"),
    (parallel_sd_winit, ["--prompt2", ""], "--prompt2"),
    (parallel_sd_winit, ["--variation_steps", "0"], "--variation_steps"),
]


@pytest.mark.parametrize("script, argv, flag", BAD_INPUTS, ids=[" ".join(a) for _, a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_flag(script, argv, flag, tmp_path, capsys) -> None:
    output = tmp_path / "out"
    status = run_cli(script.main, ["--model_path", "tiny", "--output_path", str(output), *argv])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and flag in lines[0] and "error" in lines[0]
    assert not output.exists() or not any(output.iterdir())  # no run folder was made


def test_unwritable_output_path(tmp_path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    status = run_cli(parallel_dit.main, ["--model_path", "tiny", "--output_path", str(blocker / "runs")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "--output_path" in lines[0]


def test_argparse_errors_are_one_line(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parallel_sd.build_parser().parse_args(["--timesteps", "many"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and "--timesteps" in lines[0]


def test_drawn_class_labels_do_not_depend_on_the_sample_count() -> None:
    few = parallel_dit.resolve_labels(None, 3, seed=5, num_classes=1000)
    many = parallel_dit.resolve_labels(None, 8, seed=5, num_classes=1000)
    assert many[:3] == few and len(set(many)) > 1


@pytest.mark.parametrize("paper, expected", [
    (False, dict(window_size=T, order=T, memory_size=1, map_form="secant", init="denoised", tol1=1e-4, tol2=1e-4,
                 freeze_factor=0.1, precision_floor=True)),
    (True, dict(window_size=T, order=T, memory_size=2, map_form="affine", init="copy", tol1=1e-3, tol2=1e-3,
                freeze_factor=1.0, precision_floor=False)),
])
def test_recommended_method_by_default_and_the_reference_scripts_with_paper(paper, expected, tmp_path, capsys,
                                                                            single_thread) -> None:
    argv = ["--model_path", "tiny", "--timesteps", str(T), "--num_samples", "1", "--max_steps", "2",
            "--output_path", str(tmp_path)]
    status = run_cli(parallel_dit.main, argv + (["--paper"] if paper else []))
    run = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("Output folder: "))
    config = _json(run / "config.json")
    used = config["resolved"]["solver_options"]  # the options in force: window capped at T, default tolerances
    assert status == 0 and {k: used[k] for k in expected} == expected
    assert config["args"]["window_size"] == (100 if paper else T)  # as asked


def test_paper_keeps_explicit_flags_and_fits_its_order_to_the_window(tmp_path, capsys, single_thread) -> None:
    argv = ["--model_path", "tiny", "--timesteps", str(T), "--num_samples", "1", "--max_steps", "2", "--paper",
            "--window_size", "6", "--memory_size", "3", "--output_path", str(tmp_path)]
    assert run_cli(parallel_sd.main, argv + ["--prompt", "a cat"]) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("Output folder: "))
    config_args = _json(run / "config.json")["args"]
    assert (config_args["window_size"], config_args["order"], config_args["memory_size"]) == (6, 6, 3)
    assert config_args["map_form"] == "affine" and config_args["init"] == "copy"
