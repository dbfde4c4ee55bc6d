"""The cache serves only what it verifies, keys follow what the build read: CLI runs on the
digits CNN (FP32 graph: export, optimize, validate, package) with real files in tmp dirs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from tests.fixtures.cli import ROOT, run_cli, run_record, statuses

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

RECIPE = ("recipe=digits_torch", "pipeline=fp32")


def _build(root: Path, *overrides: str) -> tuple[int, str]:
    # relative paths: the checkpoint's path is part of the model section, so of the key, and
    # each test builds in a copy of the cold build's folder
    result = run_cli(*RECIPE, "run.artifacts_dir=artifacts", "model.checkpoint=digits_cnn.pt",
                     *overrides, cwd=root)
    return result.code, result.stdout + result.stderr


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cold build: its artifacts, cache and checkpoint are copied by each test."""
    root = tmp_path_factory.mktemp("clean")
    shutil.copy(ROOT / "recipes" / "zoo" / "digits_cnn.pt", root / "digits_cnn.pt")
    code, output = _build(root)
    assert code == 0, output
    return root


@pytest.fixture
def copy(clean: Path, tmp_path: Path) -> Path:
    shutil.copytree(clean, tmp_path / "w", symlinks=True)
    return tmp_path / "w"


def _export_blob(root: Path) -> tuple[str, Path]:
    record = run_record(root / "artifacts", "digits_torch")
    key = next(s["key"] for s in record["stages"] if s["stage"] == "export")
    return key, root / "artifacts" / ".cache" / "objects" / key[:2] / key[2:] / "out" / "model.onnx"


def _bundle_model(root: Path) -> bytes:
    return (root / "artifacts" / "digits_torch" / "cpu" / "model.onnx").read_bytes()


def _write_in_place(path: Path, data: bytes) -> None:
    path.chmod(0o644)
    with path.open("r+b") as handle:
        handle.truncate(0)
        handle.write(data)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights: the model still loads, and is wrong
    _write_in_place(path, bytes(data))


@pytest.mark.parametrize("damage", [
    pytest.param(_flip_a_byte, id="flipped byte"),
    pytest.param(lambda p: _write_in_place(p, b""), id="zero bytes"),
    pytest.param(lambda p: p.unlink(), id="deleted blob under intact meta"),
])
def test_a_damaged_fp32_model_is_quarantined_rebuilt_and_never_shipped(
        clean: Path, copy: Path, damage) -> None:
    key, blob = _export_blob(copy)
    damage(blob)
    damaged = blob.read_bytes() if blob.exists() else None
    code, output = _build(copy, "validate.gates.max_accuracy_drop=0.03")  # a later setting changes
    assert code == 0, output
    assert f"cache entry {key[:12]} is damaged: out/model.onnx" in output
    assert "FileNotFoundError" not in output
    record = run_record(copy / "artifacts", "digits_torch")
    export = next(s for s in record["stages"] if s["stage"] == "export")
    assert export["status"] == "ran"
    assert "quarantined in" in export["note"]
    assert statuses(record)["optimize"] == "cached"  # the rebuilt export has the same bytes
    (moved,) = (copy / "artifacts" / ".cache" / "quarantine").iterdir()
    if damaged is not None:
        assert (moved / "out" / "model.onnx").read_bytes() == damaged
    assert _bundle_model(copy) == _bundle_model(clean)


def test_a_checkpoint_rewritten_in_place_with_its_mtime_restored_is_not_cached(
        clean: Path, copy: Path) -> None:
    import torch

    code, output = _build(copy)  # memoizes the checkpoint's digest under this folder's path
    assert code == 0, output
    assert statuses(run_record(copy / "artifacts", "digits_torch"))["export"] == "cached"
    checkpoint = copy / "digits_cnn.pt"
    before = checkpoint.stat()
    weights = torch.load(checkpoint, weights_only=True)
    first = next(iter(weights))
    weights[first] = weights[first] * 0.5
    (copy / "edited").mkdir()
    edited = copy / "edited" / checkpoint.name  # torch names the archive after the file
    torch.save(weights, edited)
    assert edited.stat().st_size == before.st_size  # same size, same inode, same mtime
    _write_in_place(checkpoint, edited.read_bytes())
    os.utime(checkpoint, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert checkpoint.stat().st_mtime_ns == before.st_mtime_ns
    code, output = _build(copy)
    assert code == 0, output
    assert statuses(run_record(copy / "artifacts", "digits_torch"))["export"] == "ran"
    assert _bundle_model(copy) != _bundle_model(clean)


_HOLD = """
import sys, time
from pathlib import Path
from pipeline.cache import Cache
with Cache(Path(sys.argv[1])).lock(sys.argv[2]):
    print("held", flush=True)
    time.sleep(4)
"""


def test_a_run_waiting_on_another_runs_lock_prints_the_holder(copy: Path) -> None:
    key, _ = _export_blob(copy)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(copy / "artifacts" / ".cache"),
                               key], stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout is not None
    assert holder.stdout.readline() == "held\n"
    code, output = _build(copy, "run.force=[export]")
    holder.wait(30)
    assert code == 0, output
    assert f"stage 'export' waits for cache key {key[:12]}" in output
    assert f"pid {holder.pid} on " in output


TEAM_RECIPE = """\
# @package _global_
defaults:
  - /dataset: digits
  - /target@targets.cpu: x86_cpu
  - _self_
name: team_cnn
model:
  name: team_cnn
  framework: torch
  factory: team_nets.net:build
  inputs:
    - name: pixels
      shape: [batch, 1, 8, 8]
  outputs: [logits]
"""

NET = """\
def build():
    import torch
    from torch import nn

    from team_nets.layers import head

    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), head())
"""


def test_editing_a_helper_module_the_factory_imports_rebuilds_the_export(
        tmp_path: Path) -> None:
    team = tmp_path / "team"
    (team / "recipes" / "recipe").mkdir(parents=True)
    (team / "recipes" / "recipe" / "team_cnn.yaml").write_text(TEAM_RECIPE)
    (team / "team_nets").mkdir()
    (team / "team_nets" / "__init__.py").write_text("")
    (team / "team_nets" / "net.py").write_text(NET)
    layers = team / "team_nets" / "layers.py"
    layers.write_text("from torch import nn\n\ndef head():\n    return nn.Linear(64, 10)\n")
    args = ("recipe=team_cnn", "pipeline=fp32", f"run.artifacts_dir={tmp_path / 'a'}")
    env = {"PYTHONPATH": str(team)}
    for expected in ("ran", "cached"):
        result = run_cli(*args, cwd=team, env=env)
        assert result.code == 0, result.stdout + result.stderr
        assert statuses(run_record(tmp_path / "a", "team_cnn"))["export"] == expected
    key = next(s["key"] for s in run_record(tmp_path / "a", "team_cnn")["stages"])
    meta = tmp_path / "a" / ".cache" / "objects" / key[:2] / key[2:] / "meta.json"
    assert "team_nets/layers.py" in json.loads(meta.read_text())["imports"]
    layers.write_text("from torch import nn\n\ndef head():\n"
                      "    return nn.Sequential(nn.Linear(64, 10), nn.ReLU())\n")
    result = run_cli(*args, cwd=team, env=env)
    assert result.code == 0, result.stdout + result.stderr
    assert statuses(run_record(tmp_path / "a", "team_cnn"))["export"] == "ran"
