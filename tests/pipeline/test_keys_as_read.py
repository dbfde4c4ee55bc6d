"""Keys from content as read: sources re-read around the build, factory imports re-checked."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from pipeline.cache import Cache
from pipeline.errors import StageError
from pipeline.executor import run
from pipeline.plan import Node, Plan
from pipeline.registry import StageContext, StageSpec
from tests.pipeline.test_executor import Recorder

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import pytest


def _export_plan(fn: Callable[[StageContext], dict[str, Any]], sources: dict[str, str]) -> Plan:
    spec = StageSpec(kind="export", fn=fn, sources=tuple(sources))
    node = Node("export", "export", spec, None, {"setting": 1}, {}, sources)
    return Plan("toy", {}, ("cpu",), {"export": node}, frozenset())


def _copy_of(checkpoint: Path) -> Callable[[StageContext], dict[str, Any]]:
    def export(ctx: StageContext) -> dict[str, Any]:
        (ctx.out / "model.bin").write_bytes(checkpoint.read_bytes())
        return {}
    return export


def _entries(cache_root: Path) -> list[Path]:
    return list((cache_root / "objects").glob("*/*")) if (cache_root / "objects").exists() else []


def test_a_checkpoint_rewritten_while_the_stage_runs_fails_and_caches_nothing(
        tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights v1")

    def export(ctx: StageContext) -> dict[str, Any]:
        (ctx.out / "model.bin").write_bytes(checkpoint.read_bytes())
        checkpoint.write_bytes(b"weights v2")  # a training job saving its next epoch
        return {}

    plan = _export_plan(export, {"model.checkpoint": str(checkpoint)})
    result = run(plan, Cache(tmp_path / "c"), jobs=1, display=Recorder())["export"]
    assert result.status == "failed"
    assert isinstance(result.error, StageError)
    assert str(result.error) == (f"stage 'export': model.checkpoint {checkpoint} changed while "
                                 "export ran; nothing was cached.")
    assert _entries(tmp_path / "c") == []
    assert list((tmp_path / "c" / "tmp").iterdir()) == []


def test_a_checkpoint_replaced_by_another_thread_during_the_build_is_caught(
        tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights v1")
    started = threading.Event()

    def export(ctx: StageContext) -> dict[str, Any]:
        data = checkpoint.read_bytes()
        started.set()
        time.sleep(0.5)  # a long export; the replacement lands meanwhile
        (ctx.out / "model.bin").write_bytes(data)
        return {}

    def replace_it() -> None:
        started.wait(10)
        replacement = tmp_path / "model.pt.new"
        replacement.write_bytes(b"weights v2")
        replacement.replace(checkpoint)

    other = threading.Thread(target=replace_it)
    other.start()
    plan = _export_plan(export, {"model.checkpoint": str(checkpoint)})
    result = run(plan, Cache(tmp_path / "c"), jobs=1, display=Recorder())["export"]
    other.join()
    assert result.status == "failed"
    assert "changed while export ran; nothing was cached" in str(result.error)
    assert _entries(tmp_path / "c") == []


def test_a_directory_source_with_a_file_touched_during_the_build_is_caught(
        tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.png").write_bytes(b"png")

    def validate(ctx: StageContext) -> dict[str, Any]:
        (images / "b.png").write_bytes(b"new sample")
        (ctx.out / "report.json").write_text("{}")
        return {}

    plan = _export_plan(validate, {"dataset.path": str(images)})
    result = run(plan, Cache(tmp_path / "c"), jobs=1, display=Recorder())["export"]
    assert result.status == "failed"
    assert f"dataset.path {images} changed while export ran" in str(result.error)


def test_an_unchanged_source_builds_and_is_cached_next_time(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights v1")
    plan = _export_plan(_copy_of(checkpoint), {"model.checkpoint": str(checkpoint)})
    assert run(plan, Cache(tmp_path / "c"), 1, Recorder())["export"].status == "ran"
    assert run(plan, Cache(tmp_path / "c"), 1, Recorder())["export"].status == "cached"


def _team_tree(root: Path) -> Path:
    team = root / "team_nets"
    team.mkdir()
    (team / "__init__.py").write_text("")
    (team / "net.py").write_text("from team_nets.layers import WIDTH\n"
                                 "def build():\n    return WIDTH\n")
    (team / "layers.py").write_text("WIDTH = 64\n")
    return team


def test_a_helper_module_the_factory_imports_is_recorded_and_rechecked(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    team = _team_tree(tmp_path)

    def export(ctx: StageContext) -> dict[str, Any]:
        from importlib import import_module

        width = import_module("team_nets.net").build()
        (ctx.out / "model.bin").write_text(str(width))
        return {}

    plan = _export_plan(export, {"model.factory": "team_nets.net:build"})
    try:
        first = run(plan, Cache(tmp_path / "c"), 1, Recorder())["export"]
        meta = json.loads((first.entry.path / "meta.json").read_text())  # type: ignore[union-attr]
        assert set(meta["imports"]) == {"team_nets/__init__.py", "team_nets/net.py",
                                        "team_nets/layers.py"}
        assert run(plan, Cache(tmp_path / "c"), 1, Recorder())["export"].status == "cached"
        (team / "layers.py").write_text("WIDTH = 128\n")
        again = run(plan, Cache(tmp_path / "c"), 1, Recorder())["export"]
    finally:
        for name in [n for n in sys.modules if n.startswith("team_nets")]:
            del sys.modules[name]
    assert again.status == "ran"
    assert again.key == first.key  # the same key: the depfile decides, as ninja's does


def test_a_damaged_upstream_entry_is_rebuilt_with_a_note(tmp_path: Path) -> None:
    from tests.pipeline.test_executor import _plan

    first = run(_plan(Recorder()), Cache(tmp_path), jobs=1, display=Recorder())
    blob = first["a"].entry.out / "value.txt"  # type: ignore[union-attr]
    blob.chmod(0o644)
    blob.write_text("X")
    recorder = Recorder()
    again = run(_plan(recorder), Cache(tmp_path), jobs=1, display=recorder)
    assert recorder.calls == ["a"]  # the same bytes again: b, c and d stay cached
    assert again["a"].status == "ran"
    assert "quarantined in" in (again["a"].note or "")
    assert (again["d"].entry.out / "value.txt").read_text() == "abacd"  # type: ignore[union-attr]
    assert len(list((tmp_path / "quarantine").iterdir())) == 1


def test_a_checkpoint_changed_while_the_run_waits_for_the_lock_is_not_built(
        tmp_path: Path) -> None:
    from pipeline.hashing import DigestState
    from pipeline.keys import cache_key, key_payload

    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"weights v1")
    plan = _export_plan(_copy_of(checkpoint), {"model.checkpoint": str(checkpoint)})
    key = cache_key(key_payload(plan.nodes["export"], {}, DigestState(tmp_path / "s.json")))
    results: dict[str, Any] = {}
    waiting = threading.Event()

    class Waiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "waits for cache key" in record.getMessage():
                waiting.set()

    handler = Waiting()
    logging.getLogger("pipeline.cache").addHandler(handler)
    try:
        with Cache(tmp_path / "c").lock(key):  # another run is building this key
            runner = threading.Thread(target=lambda: results.update(
                run(plan, Cache(tmp_path / "c"), jobs=1, display=Recorder())))
            runner.start()
            assert waiting.wait(30)  # the run has its key and waits for the lock
            checkpoint.write_bytes(b"weights v2")
        runner.join(30)
    finally:
        logging.getLogger("pipeline.cache").removeHandler(handler)
    result = results["export"]
    assert result.status == "failed"
    assert str(result.error) == (f"stage 'export': model.checkpoint {checkpoint} changed after "
                                 "the run computed export's cache key; nothing was cached. "
                                 "Run again.")
    assert _entries(tmp_path / "c") == []
