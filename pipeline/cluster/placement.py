"""Which Ray resources a node asks for, given the cluster's live workers.

A target's on-target stages (``StageSpec.on_target``: validate) ask for the resources its
profile lists (``runtime.ray_resources``), so they run only on a worker attached to that
device. An exclusive stage asks for every CPU of the largest worker that can take it, so no
other task runs beside it there. Everything else takes one CPU anywhere. A request that no
live worker can grant is reported at once instead of waiting forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from types import ModuleType

    from pipeline.plan import Node, Plan


@dataclass(frozen=True)
class Worker:
    """One live node of the cluster (a Ray node: a machine, or a `ray start` on it)."""

    node_id: str
    host: str
    resources: dict[str, float]


@dataclass(frozen=True)
class Request:
    """What a node's Ray task asks for: ``num_cpus`` and custom ``resources``."""

    num_cpus: float = 1
    resources: dict[str, float] = field(default_factory=dict)

    def options(self) -> dict[str, Any]:
        return {"num_cpus": self.num_cpus, "resources": dict(self.resources)}

    def fits(self, worker: Worker) -> bool:
        return (worker.resources.get("CPU", 0) >= self.num_cpus
                and all(worker.resources.get(name, 0) >= amount
                        for name, amount in self.resources.items()))


def live_workers(ray: ModuleType) -> list[Worker]:
    return [Worker(n["NodeID"], n.get("NodeManagerHostname", "?"), dict(n["Resources"]))
            for n in ray.nodes() if n.get("Alive")]


def device_resources(plan: Plan, node: Node) -> dict[str, float]:
    """The resources the node's target requires of its worker (none for most stages)."""
    if not node.spec.on_target or node.target is None:
        return {}
    runtime = plan.resolved["targets"][node.target].get("runtime") or {}
    return {name: float(amount) for name, amount in (runtime.get("ray_resources") or {}).items()}


def request(plan: Plan, node: Node, workers: list[Worker]) -> Request | str:
    """The node's request, or why no live worker can take it."""
    needs = device_resources(plan, node)
    able = [w for w in workers if Request(0, needs).fits(w)]
    if not able:
        absent = [name for name in needs if not any(w.resources.get(name) for w in workers)]
        return _not_on_target(absent or list(needs))
    if not node.exclusive:
        return Request(1, needs)
    return Request(max(w.resources.get("CPU", 0) for w in able), needs)


def _not_on_target(resources: list[str]) -> str:
    return f"not validated on target: no worker with resource {', '.join(resources)}"
