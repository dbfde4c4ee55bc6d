"""House rules that keep the code small and the CLI fast (see ../shared/STYLE.md, 2.9)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages")
HEAVY = ("torch", "tensorflow", "onnx", "onnxruntime", "numpy", "tf2onnx", "sklearn",
         "ray")


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_budgets(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= 400, "files stay under 400 lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1  # type: ignore[operator]
            assert length <= 60, f"{node.name} is {length} lines"


def test_cli_start_imports_no_framework() -> None:
    # planning loads every stage kind: their modules must stay light too
    code = ("import sys, pipeline.cli, pipeline.runner, pipeline.registry as r; r.load_kinds(); "
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ruff_is_clean() -> None:
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout
