"""Every Python example of the README runs as written, offline (one that needs downloaded weights or a GPU
starts with a ``# needs: ...`` line and is only checked to compile)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples_that_run():
    assert sum(not block.startswith("# needs:") for block in BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs_as_written(index, tmp_path, monkeypatch):
    block = BLOCKS[index]
    code = compile(block, f"README.md python block {index + 1}", "exec")
    if block.startswith("# needs:"):
        return  # compiles; needs what CI does not have (its first line says what)
    monkeypatch.chdir(tmp_path)  # examples that save files save them here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exec(code, {"__name__": "__readme__"})  # noqa: S102 - the example itself is the test
    assert os.getcwd() == str(tmp_path)
