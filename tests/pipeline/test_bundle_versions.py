"""Bundle versions: one switch publishes folder, archive and checksum together, a few versions
stay for rollback, and what went live is re-read and checked."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tarfile
import threading
from typing import TYPE_CHECKING, Any

import pytest

from pipeline import faults
from pipeline.bundle import archive, verify, versions
from pipeline.bundle.publish import _Bundle, _write_bundle
from pipeline.errors import StageError
from pipeline.hashing import DigestState
from tests.fixtures.bundles import build, bundle_of
from tests.fixtures.cli import run_cli

if TYPE_CHECKING:
    from pathlib import Path

Source = tuple["Path", dict[str, Any]]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Source:
    """A real digits_torch bundle's package files (what the cache holds) and its manifest."""
    live = bundle_of(build(tmp_path_factory, "unsigned")).resolve()
    package = tmp_path_factory.mktemp("package") / "out"
    shutil.copytree(live, package)
    (package / "manifest.json").unlink()
    return package, json.loads((live / "manifest.json").read_text())


def _publish(recipe_dir: Path, source: Source, variant: int, keep: int = 3) -> None:
    """Publish the bundle as a run with ``run.keep_bundles=<variant>`` would (a new manifest,
    the same files), then prune like ``publish`` does."""
    package, manifest = source
    manifest = copy.deepcopy(manifest)
    manifest["recipe_resolved"]["run"]["keep_bundles"] = variant
    state = DigestState(recipe_dir.parent / "state.json")
    _write_bundle(recipe_dir, _Bundle("cpu", package, manifest), state, None)
    versions.prune(recipe_dir, "cpu", keep)


def _variant(recipe_dir: Path) -> int:
    manifest = json.loads((recipe_dir / "cpu" / "manifest.json").read_text())
    return manifest["recipe_resolved"]["run"]["keep_bundles"]


def _version_of_stable_paths(recipe_dir: Path) -> set[str]:
    return {(recipe_dir / m).resolve().parent.name for m in versions.members("cpu")}


def test_each_publish_is_a_version_and_keep_bundles_stay_for_rollback(
        tmp_path: Path, source: Source) -> None:
    recipe = tmp_path / "recipe"
    for variant in range(1, 6):
        _publish(recipe, source, variant, keep=3)
        assert _variant(recipe) == variant
    assert versions.numbered(recipe, "cpu") == ["000003", "000004", "000005"]
    assert versions.live(recipe, "cpu") == "000005"
    assert _version_of_stable_paths(recipe) == {"000005"}
    assert versions.rollback(recipe, "cpu") == "000004"
    assert _variant(recipe) == 4
    assert _version_of_stable_paths(recipe) == {"000004"}
    verify.bundle(recipe, "cpu")
    # the stable paths are symlinks through `current`, set once
    for member in versions.members("cpu"):
        assert os.readlink(recipe / member) == f".versions/cpu/current/{member}"


def test_pruning_never_removes_the_live_version(tmp_path: Path, source: Source) -> None:
    recipe = tmp_path / "recipe"
    for variant in range(1, 4):
        _publish(recipe, source, variant, keep=5)
    versions.rollback(recipe, "cpu", to="000001")
    assert versions.prune(recipe, "cpu", keep=1) == ["000002"]
    assert versions.numbered(recipe, "cpu") == ["000001", "000003"]
    assert _variant(recipe) == 1
    verify.bundle(recipe, "cpu")


def test_an_unchanged_bundle_is_not_rewritten(tmp_path: Path, source: Source) -> None:
    recipe = tmp_path / "recipe"
    _publish(recipe, source, 1)
    written = (recipe / "cpu.tar.gz").stat().st_mtime_ns
    _publish(recipe, source, 1)
    assert versions.numbered(recipe, "cpu") == ["000001"]
    assert (recipe / "cpu.tar.gz").stat().st_mtime_ns == written


def test_archive_and_checksum_are_the_live_folder_and_reproducible(
        tmp_path: Path, source: Source) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    _publish(first, source, 7)
    _publish(second, source, 6)
    _publish(second, source, 7)  # the same bundle, written later, through another version
    folder = first / "cpu"
    with tarfile.open(first / "cpu.tar.gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert members == {f"cpu/{p.name}": p.read_bytes() for p in folder.iterdir()}
    assert (first / "cpu.tar.gz").read_bytes() == (second / "cpu.tar.gz").read_bytes()
    assert archive.recorded(first / "cpu.tar.gz.sha256") == archive.recorded(
        second / "cpu.tar.gz.sha256")


def test_a_reader_always_finds_one_complete_version(tmp_path: Path, source: Source) -> None:
    """While versions are published one after another, every look at the stable paths finds
    a folder that matches its manifest, and the archive and checksum of that same version."""
    recipe = tmp_path / "recipe"
    _publish(recipe, source, 0, keep=300)
    done, seen, problems = threading.Event(), set(), []

    def read() -> None:
        while not done.is_set():
            try:
                verify.bundle(recipe, "cpu")
                seen.add(_variant(recipe))
            except (verify.Mismatch, OSError) as exc:  # pragma: no cover - the failure
                problems.append(repr(exc))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        variant = 1
        while len(seen) < 5 and variant < 200:  # until the reader has crossed a few switches
            _publish(recipe, source, variant, keep=300)
            variant += 1
    finally:
        done.set()
        reader.join()
    assert problems == []
    assert len(seen) >= 5  # the reader did run across switches


def test_a_byte_changed_after_the_switch_fails_and_puts_the_previous_version_back(
        tmp_path: Path, source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tmp_path / "recipe"
    _publish(recipe, source, 1)

    def flip_a_byte(name: str) -> None:  # the fault hook, between the switch and the check
        if name == "publish.verify":
            model = recipe / "cpu" / "model.onnx"
            data = bytearray(model.read_bytes())
            data[len(data) // 2] ^= 0x01
            model.write_bytes(bytes(data))

    monkeypatch.setattr(faults, "point", flip_a_byte)
    with pytest.raises(StageError, match=r"cpu/model.onnx does not have the sha256.*"
                                         r"version 000001 is live again"):
        _publish(recipe, source, 2)
    assert versions.live(recipe, "cpu") == "000001"
    assert versions.numbered(recipe, "cpu") == ["000001"]  # the bad version is gone
    assert _variant(recipe) == 1
    verify.bundle(recipe, "cpu")


@pytest.mark.parametrize(("damage", "named"), [
    ("model.onnx", r"cpu/model.onnx does not have the sha256"),
    ("extra", r"cpu/extra.txt is not in manifest.json"),
    ("missing", r"cpu/signature.json is listed in manifest.json but missing"),
    ("archive", r"cpu.tar.gz has sha256 \w+, but cpu.tar.gz.sha256 states"),
])
def test_verify_names_the_file_that_differs(tmp_path: Path, source: Source, damage: str,
                                            named: str) -> None:
    recipe = tmp_path / "recipe"
    _publish(recipe, source, 1)
    folder = recipe / "cpu"
    if damage == "model.onnx":
        data = bytearray((folder / "model.onnx").read_bytes())
        data[-1] ^= 0x80
        (folder / "model.onnx").write_bytes(bytes(data))
    elif damage == "extra":
        (folder / "extra.txt").write_text("not published")
    elif damage == "missing":
        (folder / "signature.json").unlink()
    else:
        with (recipe / "cpu.tar.gz").open("ab") as handle:
            handle.write(b"\0")
    with pytest.raises(verify.Mismatch, match=named):
        verify.bundle(recipe, "cpu")


def test_recovery_clears_what_a_killed_publish_left(tmp_path: Path, source: Source) -> None:
    recipe = tmp_path / "recipe"
    _publish(recipe, source, 1)
    _publish(recipe, source, 2)
    root = versions.root(recipe, "cpu")
    (root / ".staging.4242" / "cpu").mkdir(parents=True)
    (root / ".current.4242").symlink_to("000001")
    os.replace(root / "000001", root / ".discard.000001")  # killed while discarding it
    (recipe / ".cpu.tar.gz.link.4242").symlink_to("nowhere")
    versions.recover(recipe)
    assert sorted(p.name for p in root.iterdir()) == ["000002", "current"]
    assert ".cpu.tar.gz.link.4242" not in os.listdir(recipe)
    assert _variant(recipe) == 2
    verify.bundle(recipe, "cpu")


def test_a_bundle_of_the_layout_before_versions_is_migrated(tmp_path: Path,
                                                             source: Source) -> None:
    """A real folder and archive (possibly not even of one another) become version 1, whose
    archive is made anew from the folder."""
    built, old = tmp_path / "built", tmp_path / "old"
    _publish(built, source, 1)
    old.mkdir()
    shutil.copytree(built / "cpu", old / "cpu")
    (old / "cpu.tar.gz").write_bytes(b"an archive of some other bundle")
    (old / "cpu.tar.gz.sha256").write_text("0" * 64 + "  cpu.tar.gz\n")
    before = {p.name: p.read_bytes() for p in (old / "cpu").iterdir()}
    versions.recover(old)
    assert (old / "cpu").is_symlink()
    assert versions.live(old, "cpu") == "000001"
    assert {p.name: p.read_bytes() for p in (old / "cpu").iterdir()} == before
    assert (old / "cpu.tar.gz").read_bytes() == (built / "cpu.tar.gz").read_bytes()
    verify.bundle(old, "cpu")


def test_keep_bundles_below_one_is_a_recipe_error(tmp_path: Path) -> None:
    result = run_cli("recipe=digits_torch", f"run.artifacts_dir={tmp_path}",
                     "run.progress=false", "run.keep_bundles=0")
    assert result.code == 2, result.stderr
    assert "run.keep_bundles is 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".cache" / "objects").exists()  # refused before any stage ran
