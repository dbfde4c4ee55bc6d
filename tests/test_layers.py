"""The layout keeps its layers: the engine names no stage kind, shared code imports no kind's
stage, and the files that run on a device or in an isolated runtime need only numpy and
onnxruntime."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KINDS = sorted(p.name for p in (ROOT / "stages").iterdir()
               if (p / "stage.py").is_file())


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", _python_files("pipeline"), ids=lambda p: p.name)
def test_the_engine_imports_no_stage_module(path: Path) -> None:
    offending = sorted(m for m in _imports(path) if m == "stages" or m.startswith("stages."))
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}"


@pytest.mark.parametrize("path", _python_files("stages/common"), ids=lambda p: p.name)
def test_shared_code_imports_no_kind(path: Path) -> None:
    kinds = tuple(f"stages.{kind}" for kind in KINDS)
    offending = sorted(m for m in _imports(path) if m.startswith(kinds))
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}"


@pytest.mark.parametrize("kind", KINDS)
def test_a_kind_imports_no_other_kind(kind: str) -> None:
    others = tuple(f"stages.{other}" for other in KINDS if other != kind)
    for path in sorted((ROOT / "stages" / kind).rglob("*.py")):
        offending = sorted(m for m in _imports(path) if m.startswith(others))
        assert not offending, f"{path.relative_to(ROOT)} imports {offending}"


# model_signing: imported by the loader only when --public-key asks it to verify a signature
@pytest.mark.parametrize(("path", "optional"), [
    (ROOT / "pipeline" / "bundle" / "device_loader.py", {"model_signing"}),
    (ROOT / "stages" / "common" / "ort_worker.py", set()),
], ids=["device_loader", "ort_worker"])
def test_device_side_files_need_only_numpy_and_onnxruntime(path: Path, optional: set[str]) -> None:
    allowed = {"numpy", "onnxruntime", "__future__", *sys.stdlib_module_names, *optional}
    roots = {module.split(".")[0] for module in _imports(path)}
    assert roots <= allowed, f"{path.name} imports {sorted(roots - allowed)}"
