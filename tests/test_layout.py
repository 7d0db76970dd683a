"""The house rules that keep the code easy to change, checked on the source itself."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "paratAA"


def _modules(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _imported(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_the_library_never_imports_the_command_line_layer():
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in _imported(path) if n.startswith("paratAA.cli"))
                 for path in _modules(PACKAGE) if "cli" not in path.relative_to(PACKAGE).parts}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_command_line_layer_lives_in_its_own_subpackage():
    for name in ("argparse", "signal"):
        users = [str(p.relative_to(ROOT)) for p in _modules(PACKAGE)
                 if "cli" not in p.relative_to(PACKAGE).parts and name in _imported(p)]
        assert users == [] or name == "signal" and users == ["paratAA/errors.py"], (name, users)


def test_every_exception_class_is_defined_in_errors():
    defined = []
    for path in _modules(PACKAGE):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {ast.unparse(b) for b in node.bases}
                if any(b.endswith(("Error", "Exception", "Interrupt")) for b in bases):
                    defined.append((str(path.relative_to(ROOT)), node.name))
    assert {path for path, _ in defined} == {"paratAA/errors.py"}, defined


def test_the_flags_and_options_import_without_torch():
    code = ("import sys; import paratAA.cli.flags, paratAA.cli.process, paratAA.options, paratAA.errors; "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "False"


CITED = re.compile(r"\b((?:docs|benchmarks|models|training)/[\w./-]+\.(?:md|py|json|csv))")


@pytest.mark.parametrize("path", [*_modules(PACKAGE), *ROOT.glob("*.md"), *ROOT.glob("*.py"),
                                  *(ROOT / "docs").glob("*.md")], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_document_the_code_or_readme_cites_exists(path):
    missing = [cited for cited in CITED.findall(path.read_text()) if not (ROOT / cited).exists()]
    assert missing == []
    assert "ALGORITHM.md" not in path.read_text() or path.name == "ALGORITHM.md"
