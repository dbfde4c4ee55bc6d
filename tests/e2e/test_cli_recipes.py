"""Where recipes come from (bundled, ./recipes, --config-dir), multirun, and bad inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.cli import run_cli, run_record, statuses
from tests.fixtures.team import team_dir

pytestmark = pytest.mark.slow

def test_config_dir_recipe_builds_with_bundled_groups(tmp_path: Path) -> None:
    config_dir = team_dir(tmp_path)
    artifacts = tmp_path / "artifacts"
    result = run_cli("recipe=team_linear", f"run.artifacts_dir={artifacts}",
                     "--config-dir", str(config_dir))
    assert result.code == 0, result.stderr
    record = run_record(artifacts, "team_linear")
    assert record["ok"] is True
    assert (artifacts / "team_linear" / "cpu" / "model.onnx").is_file()


def test_recipes_folder_in_the_working_directory_is_found(tmp_path: Path) -> None:
    config_dir = team_dir(tmp_path)
    result = run_cli("--list-recipes", cwd=config_dir.parent)
    assert result.code == 0, result.stderr
    assert {"team_linear", "digits_torch", "resnet_jetson"} <= set(result.stdout.split())
    dry = run_cli("recipe=team_linear", "run.dry_run=true",
                  f"run.artifacts_dir={tmp_path / 'a'}", cwd=config_dir.parent)
    assert dry.code == 0, dry.stderr
    assert "package" in dry.stderr


def test_multirun_builds_both_digits_recipes(tmp_path: Path) -> None:
    result = run_cli("-m", "recipe=digits_torch,digits_keras", f"run.artifacts_dir={tmp_path}")
    assert result.code == 0, result.stderr
    for recipe in ("digits_torch", "digits_keras"):
        record = run_record(tmp_path, recipe)
        assert record["ok"] is True
        assert set(statuses(record).values()) <= {"ran", "cached"}
        assert record["bundles"]["cpu"].endswith(f"{recipe}/cpu")
    assert not (Path(__file__).resolve().parents[2] / "multirun").exists()


def test_pickled_checkpoint_is_refused_with_exit_3(tmp_path: Path) -> None:
    import torch

    checkpoint = tmp_path / "whole_module.pt"
    torch.save(torch.nn.Linear(2, 2), checkpoint)  # a pickled module, not a state dict
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path / 'a'}",
                     f"model.checkpoint={checkpoint}")
    assert result.code == 3, result.stderr
    assert "weights_only" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_record(tmp_path / "a", "digits_torch")["ok"] is False


def test_missing_file_is_a_recipe_error_naming_the_key(tmp_path: Path) -> None:
    result = run_cli("recipe=digits_keras", "model.path=recipes/zoo/missing.keras",
                     f"run.artifacts_dir={tmp_path}")
    assert result.code == 2
    assert "model.path: 'recipes/zoo/missing.keras' does not exist" in result.stderr


def test_readme_documents_every_bundled_recipe() -> None:
    listed = run_cli("--list-recipes").stdout.split()
    assert {"digits_keras", "digits_torch", "resnet_jetson"} <= set(listed)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "python -m pipeline recipe=resnet_jetson" in readme
    for recipe in listed:
        assert f"| `{recipe}` |" in readme, recipe
