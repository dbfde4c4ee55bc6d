"""Publishing bundles: what a bundle holds, and a killed publish never loses the last good one."""

from __future__ import annotations

import json
import platform
import shutil
import tarfile
from importlib.metadata import version
from typing import TYPE_CHECKING

import pytest

from pipeline.bundle import versions
from pipeline.bundle.publish import _Bundle, _write_bundle
from pipeline.errors import StageError
from pipeline.hashing import DigestState
from stages.package.device_files import requirements, runtime
from tests.fixtures.bundles import build, bundle_of, sha256

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bundle_of(build(tmp_path_factory, "unsigned"))


def test_publish_recovers_a_bundle_retired_by_a_killed_run(tmp_path: Path) -> None:
    """A run of the layout before versions, killed between its renames, left the last good
    bundle aside: it is put back, and becomes the live version behind the stable paths."""
    retired = tmp_path / ".cpu.retired.4242"
    retired.mkdir()
    (retired / "model.onnx").write_text("last good")
    (retired / "manifest.json").write_text('{"files": {"model.onnx": "x"}}')
    (tmp_path / ".cpu.staging.4242" / "cpu").mkdir(parents=True)
    (tmp_path / ".cpu.tar.gz.4242.partial").write_text("half an archive")
    versions.recover(tmp_path)
    assert (tmp_path / "cpu" / "model.onnx").read_text() == "last good"
    assert (tmp_path / "cpu").is_symlink()
    assert versions.live(tmp_path, "cpu") == "000001"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".versions", "cpu", "cpu.tar.gz", "cpu.tar.gz.sha256"]


def test_bundle_holds_model_providers_samples_requirements_and_checksums(published: Path) -> None:
    names = sorted(p.name for p in published.iterdir())
    assert {"load_model.py", "manifest.json", "model.onnx", "providers.json",
            "requirements.txt", "samples.npz", "signature.json"} <= set(names)
    assert "model.sig" not in names
    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["format"] == 3
    assert manifest["files"] == {name: sha256(published / name) for name in names
                                 if name != "manifest.json"}
    assert manifest["signing"] is None
    assert manifest["samples"]["file"] == "samples.npz"
    assert manifest["samples"]["atol"] > 0
    assert manifest["execution_providers"] == [{"name": "CPUExecutionProvider", "options": {}}]
    # every stage the bundle depends on, by its name in the recipe's graph
    stages = manifest["stages"]
    assert set(stages) == {"export", "optimize", "quantize@cpu", "validate@cpu", "package@cpu"}
    assert stages["validate@cpu"]["kind"] == "validate"
    assert stages["quantize@cpu"]["summary"]["mode"] == "static"


def test_manifest_records_the_environment_that_built_it(published: Path) -> None:
    built = json.loads((published / "manifest.json").read_text())["built_with"]
    assert built["python"] == platform.python_version()
    assert built["machine"] == platform.machine()
    assert built["cpu"]
    assert built["libraries"]["onnxruntime"] == version("onnxruntime")
    assert built["libraries"]["numpy"] == version("numpy")
    assert built["libraries"]["torch"] == version("torch")
    assert built["libraries"]["onnx"] == version("onnx")
    assert "tensorflow" in built["libraries"]


def test_requirements_pin_the_targetruntime(published: Path) -> None:
    manifest = json.loads((published / "manifest.json").read_text())
    spec = manifest["target_config"]["runtime"]
    pinned = spec["version"] or f"=={version('onnxruntime')}"  # empty: what validated
    lines = (published / "requirements.txt").read_text().splitlines()
    numpy_major = int(version("numpy").split(".")[0])
    assert [x for x in lines if not x.startswith("#")] == [
        f"{spec['distribution']}{pinned}", f"numpy>={numpy_major},<{numpy_major + 1}"]
    assert f"# validated with onnxruntime=={version('onnxruntime')}" in lines


def test_an_empty_target_version_pins_what_validated() -> None:
    validated = {"runtime": {"distribution": "onnxruntime", "version": "1.32.0"}}
    pins = runtime({"runtime": {"distribution": "onnxruntime", "version": ""}}, validated)
    assert pins["requirement"] == "onnxruntime==1.32.0"


def test_a_target_runtime_range_wins_over_the_validated_version() -> None:
    validated = {"runtime": {"distribution": "onnxruntime", "version": "1.32.0"}}
    openvino = {"runtime": {"distribution": "onnxruntime-openvino", "version": ">=1.20,<1.24"}}
    pins = runtime(openvino, validated)
    assert pins["requirement"] == "onnxruntime-openvino>=1.20,<1.24"
    assert "onnxruntime-openvino>=1.20,<1.24" in requirements("ov", pins)
    # validate fell back to the host's onnxruntime: no version of the target's was tried
    unranged = runtime({"runtime": {"distribution": "onnxruntime-gpu", "version": ""}},
                        validated)
    assert unranged["requirement"] == "onnxruntime-gpu"
    assert unranged["validated_with"] == {"distribution": "onnxruntime", "version": "1.32.0"}


def test_archive_holds_the_bundle_and_matches_its_checksum(published: Path) -> None:
    archive = published.with_name("cpu.tar.gz")
    recorded = published.with_name("cpu.tar.gz.sha256").read_text().split()
    assert recorded == [sha256(archive), "cpu.tar.gz"]
    with tarfile.open(archive) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert members == {f"cpu/{p.name}": p.read_bytes() for p in published.iterdir()}


def test_a_damaged_cache_entry_is_not_published(published: Path, tmp_path: Path) -> None:
    package = tmp_path / "package-out"
    shutil.copytree(published, package)
    manifest = json.loads((published / "manifest.json").read_text())
    (package / "manifest.json").unlink()
    (package / "model.onnx").write_bytes(b"bit rot")
    bundle = _Bundle("cpu", package, manifest)
    with pytest.raises(StageError, match=r"the files \['model.onnx'\] do not match"):
        _write_bundle(tmp_path / "recipe", bundle, DigestState(tmp_path / "state.json"), None)
    assert not (tmp_path / "recipe" / "cpu").exists()
    assert versions.numbered(tmp_path / "recipe", "cpu") == []
