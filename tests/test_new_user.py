"""What a new user tripped over, each case as they met it (issue: one house)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from diffusers import LMSDiscreteScheduler
from PIL import Image

import parallel_dit
from paratAA.cli.images import contact_sheet, sample_label
from paratAA.cli.process import run_cli
from paratAA.errors import UnsupportedPipelineError
from paratAA.pipelines import sample
from paratAA.pipelines.tiny import tiny_embeddings, tiny_pipeline

STEPS = 4


def test_a_pipelines_legacy_callback_is_refused_in_one_line():
    pipe = tiny_pipeline("sdxl")
    kwargs = dict(**tiny_embeddings("sdxl", 1), num_inference_steps=STEPS, output_type="latent")
    with pytest.raises(UnsupportedPipelineError, match="^callback_steps: ") as error:
        sample(pipe, callback=lambda record: None, callback_steps=1, **kwargs)
    assert "\n" not in str(error.value)
    with pytest.raises(UnsupportedPipelineError, match="^callback: .*legacy callback") as error:
        sample(pipe, callback=lambda step, timestep, latents: None, **kwargs)
    seen = []
    sample(pipe, callback=seen.append, **kwargs)  # the solver's callback: one record per iteration
    assert seen and seen[-1].done


@pytest.mark.parametrize("kind", ["sd", "sdxl", "dit"])
def test_the_suggested_scheduler_switch_works_as_printed(kind):
    pipe = tiny_pipeline(kind)
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    kwargs = {"dit": dict(class_labels=[1, 2]), "sd": dict(prompt=["a red cube", "the dog"]),
              "sdxl": tiny_embeddings("sdxl", 2)}[kind]
    kwargs.update(num_inference_steps=STEPS, output_type="latent", generator=torch.Generator().manual_seed(0))
    with pytest.raises(UnsupportedPipelineError) as error:
        sample(pipe, **kwargs)
    line = re.search(r"Switch with: (.*)$", str(error.value)).group(1)
    exec(line, {"pipe": pipe})  # noqa: S102 - the line the message tells the user to run
    out = sample(pipe, tol1=1e-7, tol2=1e-7, window_size=STEPS, **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(0)
    expected = pipe(**kwargs).images
    difference = np.abs(np.asarray(out.images, dtype=np.float64) - np.asarray(expected, dtype=np.float64)).max()
    assert out.result.converged and difference < 1e-3


def test_contact_sheet_labels_rows_and_columns_and_fills_finished_rows():
    white, black = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    rows = [[black, black, black], [black, white]]  # sample 1 converged after one iteration
    plain = contact_sheet(rows, min_size=16)
    labelled = contact_sheet(rows, min_size=16, row_labels=["class 3, seed 0", "class 4, seed 1"],
                             column_labels=["start", "it 1", "it 2"])
    assert labelled.width > plain.width and labelled.height > plain.height  # room for the labels
    cells = np.asarray(plain, dtype=np.int64)
    last_cell = cells[18:34, 36:52]  # row 1, column 2: was blank (white background) before
    assert last_cell.mean() < 0.6 * 255, "a converged sample's later cells repeat its final image, dimmed"
    assert sample_label({"seed": 7, "class_label": 3}) == "class 3, seed 7"
    assert sample_label({"seed": 0, "prompt": "a photo of an astronaut riding a horse"}).endswith("seed 0")


def test_run_folder_and_config_record_the_window_and_order_used(tmp_path, capsys):
    status = run_cli(parallel_dit.main, ["--model_path", "tiny", "--timesteps", "4", "--window_size", "500",
                                         "--num_samples", "1", "--output_path", str(tmp_path), "--check_sequential"])
    assert status == 0
    (run,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert "-w4-o4-" in run.name  # capped at T, not the requested 500
    resolved = json.loads((run / "config.json").read_text())["resolved"]
    assert resolved["solver_options"]["window_size"] == 4 and resolved["solver_options"]["order"] == 4
    assert "window_size=4" in resolved["options"]
    out = capsys.readouterr().out
    assert re.search(r"max \|diff\| \S+ \(\S+ of the sample's largest entry\)", out)
    sample_summary = json.loads((run / "summary.json").read_text())["samples"][0]
    assert 0 <= sample_summary["sequential_relative_diff"] <= sample_summary["sequential_max_abs_diff"] / 1e-3
    assert sample_summary["converged"] and sample_summary["stop_reason"] in ("tolerance", "safeguard")  # T = 4
    assert (run / "contact_sheet.png").exists()


def test_tiny_flux_is_tiny_as_called_with_its_defaults():
    pipe = tiny_pipeline("flux")
    image = pipe(prompt="a red cube", num_inference_steps=2, output_type="pil").images[0]
    assert image.size == (16, 16)
