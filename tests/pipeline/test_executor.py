"""The executor on small real stage functions: ordering, parallelism, failure, resume."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from pipeline.cache import Cache
from pipeline.errors import GateError
from pipeline.executor import NodeResult, run
from pipeline.plan import Node, Plan
from pipeline.registry import StageContext, StageSpec

if TYPE_CHECKING:
    from pathlib import Path


class Recorder:
    """A display that remembers what happened, and stage functions that write real files."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.active: set[str] = set()
        self.overlaps: list[tuple[str, ...]] = []
        self.calls: list[str] = []

    def started(self, node: Node) -> None: ...
    def status(self, node: Node, message: str) -> None: ...
    def finished(self, result: NodeResult) -> None: ...

    def stage(self, name: str, fail: bool = False, crash: bool = False):
        def fn(ctx: StageContext) -> dict[str, Any]:
            with self.lock:
                self.calls.append(name)
                self.active.add(name)
                self.overlaps.append(tuple(sorted(self.active)))
            time.sleep(0.2)
            with self.lock:
                self.active.discard(name)
            if fail:
                raise GateError("min_cosine: measured 0.5 < threshold 0.9")
            if crash:
                raise ValueError(f"{name} crashed")
            upstream = "".join((p / "value.txt").read_text() for p in ctx.inputs.values())
            (ctx.out / "value.txt").write_text(upstream + name)
            return {"wrote": name}
        return fn


def _plan(recorder: Recorder, fail: str = "", exclusive: str = "", crash: str = "") -> Plan:
    """a -> (b, c) -> d, where b and c are independent."""
    edges = {"a": {}, "b": {"in": "a"}, "c": {"in": "a"}, "d": {"x": "b", "y": "c"}}
    nodes = {}
    for name, upstream in edges.items():
        spec = StageSpec(kind=name, fn=recorder.stage(name, fail=name == fail,
                                                      crash=name == crash),
                         inputs=tuple(upstream), reads=(), exclusive=name == exclusive)
        nodes[name] = Node(name, name, spec, None, {"setting": 1}, upstream, {})
    return Plan("toy", {}, ("cpu",), nodes, frozenset())


def test_runs_in_dependency_order_and_in_parallel(tmp_path: Path) -> None:
    recorder = Recorder()
    results = run(_plan(recorder), Cache(tmp_path), jobs=2, display=recorder)
    assert [r.status for r in results.values()] == ["ran"] * 4
    assert recorder.calls[0] == "a"
    assert recorder.calls[-1] == "d"
    assert ("b", "c") in recorder.overlaps
    assert (results["d"].entry.out / "value.txt").read_text() == "abacd"  # type: ignore[union-attr]


def test_exclusive_stage_never_overlaps(tmp_path: Path) -> None:
    recorder = Recorder()
    run(_plan(recorder, exclusive="b"), Cache(tmp_path), jobs=2, display=recorder)
    assert not [o for o in recorder.overlaps if "b" in o and len(o) > 1]


def test_second_run_is_all_cached_with_the_same_keys(tmp_path: Path) -> None:
    first = run(_plan(Recorder()), Cache(tmp_path), jobs=2, display=Recorder())
    recorder = Recorder()
    second = run(_plan(recorder), Cache(tmp_path), jobs=2, display=recorder)
    assert recorder.calls == []
    assert [r.status for r in second.values()] == ["cached"] * 4
    assert [r.key for r in second.values()] == [r.key for r in first.values()]


def test_failure_skips_dependents_caches_nothing_of_it_and_resumes(tmp_path: Path) -> None:
    recorder = Recorder()
    results = run(_plan(recorder, fail="c"), Cache(tmp_path), jobs=1, display=recorder)
    assert {n: r.status for n, r in results.items()} == {
        "a": "ran", "b": "ran", "c": "failed", "d": "skipped"}
    error = results["c"].error
    assert isinstance(error, GateError)
    assert str(error) == "stage 'c': min_cosine: measured 0.5 < threshold 0.9"
    assert not list((tmp_path / "tmp").iterdir())
    recorder = Recorder()
    resumed = run(_plan(recorder), Cache(tmp_path), jobs=1, display=recorder)
    assert sorted(recorder.calls) == ["c", "d"]
    assert resumed["a"].status == resumed["b"].status == "cached"


def test_forced_node_rebuilds_and_keeps_its_key(tmp_path: Path) -> None:
    first = run(_plan(Recorder()), Cache(tmp_path), jobs=1, display=Recorder())
    recorder = Recorder()
    forced = _plan(recorder)
    forced = Plan(forced.recipe, forced.resolved, forced.targets, forced.nodes, frozenset({"b"}))
    again = run(forced, Cache(tmp_path), jobs=1, display=recorder)
    assert recorder.calls == ["b"]
    assert again["b"].key == first["b"].key
    assert again["d"].status == "cached"


def test_a_failed_gate_lets_independent_nodes_finish(tmp_path: Path) -> None:
    """Like one target failing its gate: the other targets still get validated."""
    recorder = Recorder()
    results = run(_plan(recorder, fail="b"), Cache(tmp_path), jobs=1, display=recorder)
    assert {n: r.status for n, r in results.items()} == {
        "a": "ran", "b": "failed", "c": "ran", "d": "skipped"}


def test_a_crash_starts_nothing_new_and_keeps_its_cause(tmp_path: Path) -> None:
    recorder = Recorder()
    results = run(_plan(recorder, crash="b"), Cache(tmp_path), jobs=1, display=recorder)
    assert {n: r.status for n, r in results.items()} == {
        "a": "ran", "b": "failed", "c": "skipped", "d": "skipped"}
    error = results["b"].error
    assert str(error) == "stage 'b': failed: ValueError: b crashed"
    assert isinstance(error.__cause__.__cause__, ValueError)  # type: ignore[union-attr]
