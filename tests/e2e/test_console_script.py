"""The ``edgekiln`` console script is the CLI, and still is where a team's repository has a
``pipeline/`` package of its own, which Python may find before ours from that folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _edgekiln() -> str:
    found = shutil.which("edgekiln", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail("no edgekiln script beside this Python: run pip install -e . first")
    return found


def _team_repository(tmp_path: Path) -> Path:
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline" / "__init__.py").write_text('"""The team\'s own data pipeline."""\n')
    return tmp_path


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)


def test_edgekiln_works_beside_a_team_pipeline_folder(tmp_path: Path) -> None:
    team = _team_repository(tmp_path)
    listed = _run(_edgekiln(), "--list-recipes", cwd=team)
    assert listed.returncode == 0, listed.stderr
    assert {"digits_torch", "resnet_jetson"} <= set(listed.stdout.split())
    typo = _run(_edgekiln(), "recipe=digits_torh", cwd=team)
    assert typo.returncode == 2
    assert "Did you mean 'digits_torch'?" in typo.stderr


def test_edgekiln_finds_the_recipes_factories_like_python_m_pipeline(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    # export imports recipes.zoo.digits from the working directory
    built = _run(_edgekiln(), "recipe=digits_torch", "run.progress=false",
                 f"run.artifacts_dir={tmp_path}", cwd=root)
    assert built.returncode == 0, built.stderr[-2000:]
    assert (tmp_path / "digits_torch" / "cpu" / "manifest.json").is_file()
