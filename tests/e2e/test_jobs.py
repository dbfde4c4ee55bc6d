"""``run.jobs=2`` on a real two-target build: nodes that run models on every core (export,
calibrating quantize, validate) never share the machine; the rest may run side by side."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

import pytest

from pipeline import plan
from pipeline.cache import Cache
from pipeline.executor import run
from tests.fixtures.recipes import compose_recipe
from tests.fixtures.team import team_dir

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.executor import NodeResult
    from pipeline.plan import Node

pytestmark = pytest.mark.slow


class Intervals:
    """A display that keeps when each node started and finished."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: dict[str, list[float]] = {}

    def started(self, node: Node) -> None:
        with self.lock:
            self.spans[node.name] = [time.monotonic()]

    def status(self, node: Node, message: str) -> None: ...

    def finished(self, result: NodeResult) -> None:
        with self.lock:
            self.spans.setdefault(result.node.name, [time.monotonic()]).append(time.monotonic())

    def overlapping(self) -> set[frozenset[str]]:
        names = sorted(self.spans)
        return {frozenset((a, b)) for i, a in enumerate(names) for b in names[i + 1:]
                if self.spans[a][0] < self.spans[b][-1] and self.spans[b][0] < self.spans[a][-1]}


def test_two_targets_with_two_jobs_keep_busy_nodes_apart(tmp_path: Path) -> None:
    recipes = team_dir(tmp_path)
    (recipes / "recipe" / "team_linear.yaml").write_text(
        (recipes / "recipe" / "team_linear.yaml").read_text().replace(
            "  - _self_", "  - /target@targets.arm: arm64_cpu\n  - _self_"))
    the_plan = plan.build(compose_recipe("team_linear", config_dir=recipes))
    assert {"quantize@cpu", "quantize@arm", "package@cpu", "package@arm"} <= set(the_plan.nodes)
    display = Intervals()
    results = run(the_plan, Cache(tmp_path / "cache"), jobs=2, display=display)
    assert {r.status for r in results.values()} == {"ran"}
    busy = {name for name, node in the_plan.nodes.items() if node.exclusive}
    # arm64_cpu ships FP32 (quantize.mode none): a format conversion, free to share
    assert busy == {"export", "quantize@cpu", "validate@cpu", "validate@arm"}
    for pair in display.overlapping():
        assert not pair & busy, f"{sorted(pair)} ran side by side"
