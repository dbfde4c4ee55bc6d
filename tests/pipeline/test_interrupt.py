"""An interrupted executor: staging dirs of builds under way are removed, nothing is committed."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import pytest

from pipeline.cache import Cache
from pipeline.executor import NodeResult, run
from pipeline.plan import Node, Plan
from pipeline.registry import StageContext, StageSpec

if TYPE_CHECKING:
    from pathlib import Path


class InterruptingDisplay:
    """Ctrl-C arrives (in the main thread) once the slow stage is writing its staging dir."""

    def __init__(self) -> None:
        self.writing = threading.Event()
        self.worker_ended = threading.Event()

    def started(self, node: Node) -> None:
        if node.name == "fast":
            assert self.writing.wait(30)
            raise KeyboardInterrupt

    def status(self, node: Node, message: str) -> None: ...
    def finished(self, result: NodeResult) -> None: ...

    def slow_stage(self, ctx: StageContext) -> dict[str, Any]:
        try:
            (ctx.out / "part.bin").write_bytes(b"half")
            self.writing.set()
            for _ in range(3000):  # a long stage that reports progress
                ctx.report("working")
                threading.Event().wait(0.01)
            return {}
        finally:
            self.worker_ended.set()


def test_interrupt_discards_staging_and_stops_the_worker(tmp_path: Path) -> None:
    display = InterruptingDisplay()
    nodes = {}
    for name, fn in (("slow", display.slow_stage), ("fast", lambda ctx: {})):
        spec = StageSpec(kind=name, fn=fn, inputs=(), reads=())
        nodes[name] = Node(name, name, spec, None, {}, {}, {})
    with pytest.raises(KeyboardInterrupt):
        run(Plan("toy", {}, ("cpu",), nodes, frozenset()), Cache(tmp_path), jobs=2,
            display=display)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert display.worker_ended.wait(10)  # its next progress report stopped it
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not (tmp_path / "objects").exists()
