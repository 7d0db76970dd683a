"""Run-folder helpers: never overwrite, PSNR, the --max_steps convention."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from paratAA.cli.flags import max_iterations
from paratAA.cli.runs import PSNR_CAP_DB, create_run_dir, psnr_db


def test_run_folders_are_never_reused(tmp_path) -> None:
    first = create_run_dir(tmp_path / "out", "DiT-T10")
    (first / "summary.json").write_text("first")
    second = create_run_dir(tmp_path / "out", "DiT-T10")
    assert first != second and second.is_dir() and not any(second.iterdir())
    assert (first / "summary.json").read_text() == "first"


def test_psnr() -> None:
    black = Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8))
    grey = Image.fromarray(np.full((4, 4, 3), 10, dtype=np.uint8))
    assert psnr_db(black, black) == PSNR_CAP_DB
    assert math.isclose(psnr_db(black, grey), 10 * math.log10(255**2 / 100))


def test_max_steps_counts_images_including_the_start() -> None:
    assert max_iterations(None) is None
    assert max_iterations(10) == 9
