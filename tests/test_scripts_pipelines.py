"""parallel_sd.py / parallel_sd_winit.py on SDXL, SD3 and Flux (tiny offline pipelines), in-process through ``run_cli``.

The solve is driven through ``paratAA.pipelines.prepare``; ``--check_sequential`` compares with the
pipeline's own ``__call__`` from the same ``x[T]``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import parallel_sd
import parallel_sd_winit
from paratAA.cli.process import run_cli
from paratAA.pipelines.loading import pipeline_class

T = 8
TIGHT = ["--tol1", "1e-6", "--tol2", "1e-6"]


def _run(script, argv: list[str], tmp_path: Path, capsys) -> tuple[int, Path | None, str]:
    status = run_cli(script.main, [*argv, "--timesteps", str(T), *TIGHT, "--output_path", str(tmp_path / "out")])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    folder = Path(lines[-1].removeprefix("Output folder: ")) if status == 0 else None
    return status, folder, captured.err


def _check(summary: dict, num_samples: int) -> None:
    assert summary["converged"] and summary["iterations"] <= T
    assert len(summary["samples"]) == num_samples
    for sample in summary["samples"]:
        assert sample["sequential_max_abs_diff"] < 1e-4, sample  # SDXL's latents are ~14 times larger
        assert sample["sequential_psnr_db"] > 40


@pytest.mark.parametrize("model", ["tiny-sd3", "tiny-flux", "tiny-sdxl"])
def test_parallel_sd_runs_the_new_families(model, tmp_path, capsys, single_thread) -> None:
    status, run, err = _run(parallel_sd, ["--model_path", model, "--num_samples", "2", "--prompt", "a cat",
                                          "--check_sequential"], tmp_path, capsys)
    assert status == 0, err
    summary = json.loads((run / "summary.json").read_text())
    _check(summary, 2)
    assert (run / "sample_1" / "final.png").exists() and (run / "sample_0" / "step_1.png").exists()
    assert json.loads((run / "config.json").read_text())["resolved"]["model_id"] == model
    assert run.name.startswith({"tiny-sd3": "SD3-T", "tiny-flux": "Flux-T", "tiny-sdxl": "SDXL-T"}[model])


@pytest.fixture(scope="module")
def tiny_sd3_dir(tmp_path_factory) -> str:
    from paratAA.pipelines.tiny import tiny_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd3") / "pipeline"
    tiny_pipeline("sd3").save_pretrained(folder)
    return str(folder)


def test_a_saved_pipeline_is_detected_from_its_model_index(tiny_sd3_dir, tmp_path, capsys, single_thread) -> None:
    assert pipeline_class(tiny_sd3_dir) == "StableDiffusion3Pipeline"
    status, run, err = _run(parallel_sd, ["--model_path", tiny_sd3_dir, "--num_samples", "1", "--check_sequential"],
                            tmp_path, capsys)
    assert status == 0, err
    _check(json.loads((run / "summary.json").read_text()), 1)
    # Flags are checked against the detected family before anything loads.
    status, _, err = _run(parallel_sd, ["--model_path", tiny_sd3_dir, "--eta", "0.5"], tmp_path, capsys)
    assert status == 2 and "--eta" in err


def test_winit_on_sd3(tmp_path, capsys, single_thread) -> None:
    status, run, err = _run(parallel_sd_winit, ["--model_path", "tiny-sd3", "--variation_steps", str(T),
                                                "--prompt1", "a dog", "--prompt2", "a cat", "--check_sequential"],
                            tmp_path, capsys)
    assert status == 0, err
    overview = json.loads((run / "summary.json").read_text())
    for name in ("prompt1", "prompt2", "prompt2_from_scratch"):
        _check(overview[name], 1)
    assert overview["prompt2_iterations_saved"] == \
        overview["prompt2_from_scratch"]["iterations"] - overview["prompt2"]["iterations"]


FLAGS_THAT_DO_NOT_APPLY = [
    (parallel_sd, ["--model_path", "tiny-sd3", "--eta", "0.5"], "--eta"),
    (parallel_sd, ["--model_path", "tiny-flux", "--sampler", "ddim"], "--sampler"),
    (parallel_sd, ["--model_path", "tiny", "--sampler", "dpm++2m", "--eta", "0.5"], "--eta"),
    (parallel_sd, ["--model_path", "tiny-sdxl", "--eta", "1"], "--eta"),
    (parallel_sd, ["--model_path", "tiny-flux", "--negative_prompt", "a dog"], "--negative_prompt"),
    (parallel_sd_winit, ["--model_path", "tiny-flux", "--eta", "0.2"], "--eta"),
]


@pytest.mark.parametrize("script, argv, flag", FLAGS_THAT_DO_NOT_APPLY,
                         ids=[" ".join(a) for _, a, _ in FLAGS_THAT_DO_NOT_APPLY])
def test_flags_that_do_not_apply_are_one_line_errors(script, argv, flag, tmp_path, capsys) -> None:
    status, _, err = _run(script, argv, tmp_path, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and flag in lines[0] and "error" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_pipeline_the_script_does_not_run_is_named(tiny_dit_dir, tmp_path, capsys) -> None:
    status, _, err = _run(parallel_sd, ["--model_path", tiny_dit_dir], tmp_path, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "DiTPipeline" in lines[0] and "parallel_dit.py" in lines[0]


@pytest.mark.parametrize("script, argv, prefix", [
    (parallel_sd, ["--model_path", "tiny", "--num_samples", "2", "--prompt", "a cat"], "SD-dpm2m-T"),
    (parallel_sd, ["--model_path", "tiny-sdxl", "--num_samples", "1", "--prompt", "a cat"], "SDXL-dpm2m-T"),
], ids=["sd", "sdxl"])
def test_dpm_solver_sampler_matches_the_pipelines_own_loop(script, argv, prefix, tmp_path, capsys, single_thread):
    status, run, err = _run(script, [*argv, "--sampler", "dpm++2m", "--check_sequential"], tmp_path, capsys)
    assert status == 0, err
    _check(json.loads((run / "summary.json").read_text()), int(argv[argv.index("--num_samples") + 1]))
    assert run.name.startswith(prefix)
    assert json.loads((run / "config.json").read_text())["args"]["sampler"] == "dpm++2m"


def test_parallel_dit_names_a_text_to_image_pipeline(tiny_sd_dir, tmp_path, capsys) -> None:
    import parallel_dit

    status, _, err = _run(parallel_dit, ["--model_path", tiny_sd_dir], tmp_path, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "StableDiffusionPipeline" in lines[0] and "parallel_sd.py" in lines[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_hub_id_that_is_not_available_is_one_line(tmp_path, capsys) -> None:
    """A hub id's family comes from its model_index.json, fetched when it loads (offline here: not cached)."""
    status, _, err = _run(parallel_sd, ["--model_path", "nobody/no-such-pipeline"], tmp_path, capsys)
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and "model_path" in lines[0] and "model_index.json" in lines[0]


@pytest.mark.parametrize("model, prefix", [("tiny-wan", "Wan-T"), ("tiny-pixart", "PixArt-T")])
def test_parallel_sd_runs_video_and_newer_image_families(model, prefix, tmp_path, capsys, single_thread) -> None:
    from PIL import Image

    status, run, err = _run(parallel_sd, ["--model_path", model, "--num_samples", "2", "--prompt", "a cat",
                                          "--check_sequential"], tmp_path, capsys)
    assert status == 0, err
    assert run.name.startswith(prefix)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["converged"] and all(s["sequential_relative_diff"] < 1e-4 for s in summary["samples"])
    final = Image.open(run / "sample_0" / "final.png")
    sheet = Image.open(run / "contact_sheet.png")
    if model == "tiny-wan":  # a video: frame strips per iteration, the final clip as a GIF, middle frames in the sheet
        clip = Image.open(run / "sample_0" / "clip.gif")
        assert clip.n_frames == 5 and final.width > 4 * final.height
        assert sheet.width < final.width * summary["samples"][0]["iterations"]
    else:
        assert not (run / "sample_0" / "clip.gif").exists() and final.width == final.height


def test_the_sampler_flag_is_refused_for_a_video_pipeline(tmp_path, capsys) -> None:
    status, _, err = _run(parallel_sd, ["--model_path", "tiny-wan", "--sampler", "ddim"], tmp_path, capsys)
    assert status == 2 and "--sampler: a WanPipeline samples with its shipped scheduler (UniPC)" in err
