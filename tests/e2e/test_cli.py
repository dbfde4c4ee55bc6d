"""End to end: the CLI on the digits recipes, in subprocesses, with real models and data."""

from __future__ import annotations

import hashlib
import json
import tarfile
from typing import TYPE_CHECKING

import pytest

from tests.fixtures.cli import run_cli, run_record, statuses

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

# quantize.mode=auto: one node per INT8 candidate, then the one that chooses
NODES = ["export", "optimize", "quantize.static@cpu", "quantize.static_per_tensor@cpu",
         "quantize@cpu", "validate@cpu", "package@cpu"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits_torch built once, cold; tests below reuse its cache."""
    artifacts = tmp_path_factory.mktemp("artifacts")
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={artifacts}")
    assert result.code == 0, result.stderr
    return artifacts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cold_build_runs_every_stage_and_writes_a_bundle(built: Path) -> None:
    record = run_record(built, "digits_torch")
    assert record["ok"] is True
    assert statuses(record) == dict.fromkeys(NODES, "ran")
    bundle = built / "digits_torch" / "cpu"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["recipe"] == "digits_torch"
    assert manifest["recipe_resolved"]["model"]["framework"] == "torch"
    on_disk = {p.relative_to(bundle).as_posix(): _sha256(p)
               for p in bundle.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert on_disk == manifest["files"]
    assert {"model.onnx", "load_model.py"} <= set(on_disk)
    keys = {s["stage"]: s["key"] for s in record["stages"]}
    assert manifest["stages"]["quantize@cpu"]["key"] == keys["quantize"]
    assert manifest["stages"]["validate@cpu"]["summary"]["accuracy_drop"] <= 0.02


def test_archive_matches_its_checksum_and_the_bundle(built: Path) -> None:
    archive = built / "digits_torch" / "cpu.tar.gz"
    recorded = (built / "digits_torch" / "cpu.tar.gz.sha256").read_text().split()[0]
    assert recorded == _sha256(archive)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"cpu/model.onnx", "cpu/manifest.json"} <= names


def test_unchanged_rebuild_is_all_cached_without_frameworks(built: Path) -> None:
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={built}")
    assert result.code == 0, result.stderr
    assert statuses(run_record(built, "digits_torch")) == dict.fromkeys(NODES, "cached")
    assert result.imported == []


def test_changing_a_gate_reruns_only_validation_and_the_package_reading_it(built: Path) -> None:
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={built}",
                     "validate.gates.min_top1_agreement=0.9")
    assert result.code == 0, result.stderr
    got = statuses(run_record(built, "digits_torch"))
    # the package stage reads validate's report (a new digest); it takes a fraction of a second
    assert got == {**dict.fromkeys(NODES, "cached"), "validate@cpu": "ran", "package@cpu": "ran"}


def test_changing_calibration_reruns_quantize_and_after_not_export(built: Path) -> None:
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={built}",
                     "quantize.calibration.samples=64")
    assert result.code == 0, result.stderr
    got = statuses(run_record(built, "digits_torch"))
    assert got["export"] == got["optimize"] == "cached"
    assert got["quantize@cpu"] == got["validate@cpu"] == got["package@cpu"] == "ran"


def test_failed_gate_exits_4_and_keeps_the_last_good_bundle(built: Path) -> None:
    manifest = built / "digits_torch" / "cpu" / "manifest.json"
    before = manifest.read_text()
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={built}",
                     "validate.gates.min_cosine=1.5")
    assert result.code == 4
    assert "min_cosine" in result.stderr
    assert "Traceback" not in result.stderr
    assert manifest.read_text() == before
    record = run_record(built, "digits_torch")
    assert record["ok"] is False
    assert statuses(record)["validate@cpu"] == "failed"


def test_typo_in_a_key_exits_2_naming_the_key(built: Path) -> None:
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={built}",
                     "quantize.calibration.sampels=64")
    assert result.code == 2
    assert "quantize.calibration.sampels" in result.stderr
    assert "Did you mean 'samples'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_recipe_lists_the_choices() -> None:
    result = run_cli("recipe=digits_trch")
    assert result.code == 2
    assert "digits_torch" in result.stderr


def test_dry_run_shows_hits_and_misses_and_builds_nothing(built: Path) -> None:
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={built}", "run.dry_run=true",
                     "quantize.calibration.samples=32")
    assert result.code == 0, result.stderr
    assert "use cache" in result.stderr
    assert "run" in result.stderr
    assert result.imported == []


def test_force_reruns_the_named_stage(built: Path) -> None:
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={built}", "run.force=[optimize]")
    assert result.code == 0, result.stderr
    got = statuses(run_record(built, "digits_torch"))
    assert got["optimize"] == "ran"
    assert got["export"] == "cached"


def test_concurrent_runs_share_work_without_duplicating_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.fixtures.cli import _PROBE, ROOT

    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", _PROBE, "recipe=digits_torch",
                               f"run.artifacts_dir={tmp_path / name}", f"run.cache_dir={cache}"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for name in ("a", "b")]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
    runs = [statuses(run_record(tmp_path / name, "digits_torch")) for name in ("a", "b")]
    for node in NODES:
        assert sorted(run[node] for run in runs) == ["cached", "ran"], node


def test_a_killed_run_leaves_nothing_a_later_run_trusts(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from tests.fixtures.cli import _PROBE, ROOT

    cmd = [sys.executable, "-c", _PROBE, "recipe=digits_torch", f"run.artifacts_dir={tmp_path}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / ".cache" / "tmp"
    deadline = time.monotonic() + 120
    while not (staging.exists() and any(staging.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # in the middle of building a stage
    proc.wait()
    assert any(staging.iterdir()), "the run should have been killed while staging"
    assert not (tmp_path / "digits_torch" / "cpu").exists()
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path}")
    assert result.code == 0, result.stderr
    assert run_record(tmp_path, "digits_torch")["ok"] is True
    assert not any(staging.iterdir())


def test_qat_recovers_what_ptq_loses_on_the_fragile_recipe(tmp_path: Path) -> None:
    qat = run_cli("recipe=digits_qat", f"run.artifacts_dir={tmp_path}")
    assert qat.code == 0, qat.stderr
    manifest = json.loads((tmp_path / "digits_qat" / "cpu" / "manifest.json").read_text())
    qat_drop = manifest["stages"]["validate@cpu"]["summary"]["accuracy_drop"]
    ptq = run_cli("recipe=digits_qat", f"run.artifacts_dir={tmp_path}", "quantize.mode=static")
    assert ptq.code == 4
    measured = float(ptq.stderr.split("max_accuracy_drop: measured ")[1].split()[0])
    assert measured > 0.05
    assert qat_drop < measured / 3
    assert statuses(run_record(tmp_path, "digits_qat"))["export"] == "cached"
