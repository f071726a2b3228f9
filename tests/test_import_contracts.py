"""The layers and boundaries of docs/ARCHITECTURE.md, declared as import-linter contracts in
pyproject.toml (``[tool.importlinter]``) and checked by running ``lint-imports`` (import-linter,
a ``test`` extra). This replaces the hand-written boundary test of the runtime: the contracts
see every import, including the lazy ones inside functions."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    if exe.is_file():
        return str(exe)
    found = shutil.which("lint-imports")
    if found is None:
        pytest.fail("lint-imports not found: pip install -e '.[test]' (import-linter)")
    return found


def test_import_contracts_are_kept():
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # every contract is declared and was checked (none silently dropped from the config)
    for name in ("Layers: every import goes down", "never import training",
                 "import neither the capture pipeline nor exporters", "No import cycles"):
        assert name in out, out
    assert "4 kept, 0 broken" in out, out


def test_contracts_catch_an_upward_import(tmp_path):
    """The layers contract fails on an import from a lower layer to a higher one (a copy of the
    packages with ``io`` importing ``training``)."""
    for pkg in ("ram_avatar", "gui", "exporters", "calibration"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "assets"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / "ram_avatar" / "io" / "subject.py"
    bad.write_text(bad.read_text() + "\n\ndef _bad():\n    from ram_avatar.training import run  # noqa\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)}
    proc = subprocess.run([_lint_imports(), "--no-cache"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "ram_avatar.io is not allowed to import ram_avatar.training" in out, out
