"""Recipe values cannot run code on the build host: the CLI refuses a factory from the standard
library at plan time (exit 3), before anything imports it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.fixtures.cli import ROOT, run_cli

if TYPE_CHECKING:
    from pathlib import Path

CHECKPOINT = f"model.checkpoint={ROOT / 'recipes/zoo/digits_cnn.pt'}"


@pytest.mark.parametrize(("key", "factory", "extra"), [
    ("model.factory", "os:system", ()),
    ("model.factory", "subprocess:Popen", ()),
    ("dataset.factory", "os:system", ("dataset.kind=callable",)),
])
def test_a_factory_naming_a_command_runner_is_refused_before_it_runs(
        tmp_path: Path, key: str, factory: str, extra: tuple[str, ...]) -> None:
    section = key.split(".", maxsplit=1)[0]
    result = run_cli("recipe=digits_torch", f"{key}={factory}", *extra, CHECKPOINT,
                     f"+{section}.factory_kwargs.command=touch X", "run.progress=false",
                     f"run.artifacts_dir={tmp_path / 'artifacts'}", cwd=tmp_path)
    assert result.code == 3, result.stderr
    assert f"bad input: {key} '{factory}'" in result.stderr
    assert "standard library" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "X").exists()
    assert result.imported == []  # refused at plan time: no framework was even loaded


def test_an_installed_package_runs_only_when_the_recipe_trusts_it(tmp_path: Path) -> None:
    # numpy:ones is importable from site-packages but is not the team's code
    result = run_cli("recipe=digits_torch", "model.factory=numpy:ones", CHECKPOINT,
                     "run.dry_run=true", f"run.artifacts_dir={tmp_path / 'artifacts'}",
                     cwd=tmp_path)
    assert result.code == 3, result.stderr
    assert "add 'numpy' to model.trusted_packages" in result.stderr
    trusted = run_cli("recipe=digits_torch", "model.factory=numpy:ones", CHECKPOINT,
                      "model.trusted_packages=[numpy]", "run.dry_run=true",
                      f"run.artifacts_dir={tmp_path / 'artifacts'}", cwd=tmp_path)
    assert trusted.code == 0, trusted.stderr
