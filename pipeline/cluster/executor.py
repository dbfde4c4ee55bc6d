"""Run a plan on a Ray cluster: each ready node a Ray task, outputs through the shared cache.

The rules are the local executor's (``pipeline.executor``): a node starts once its inputs are
done, a failed or skipped input skips it, a crash stops new starts (running nodes finish and
are cached), a failed gate stops only its dependents, a variant that fails is ``lost``. The
driver looks each node up in its own cache first, as a local run does; only misses become
tasks, each asking for what ``placement`` says (a target's device for validate, a whole worker
for an exclusive stage). Ray queues a task until a worker can take it, and retries it when its
worker dies (``run.ray.max_retries``); a request that no live worker can grant any more is
placed anew or, when its target's device is gone, reported as skipped instead of waiting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.cluster import placement, worker
from pipeline.cluster.connection import connect
from pipeline.errors import PipelineError, StageError

# the local executor's dependency and failure policy, shared as it is
from pipeline.executor import NodeResult, _halted, _ready, _reuses, _skip_blocked
from pipeline.keys import cache_key, key_payload

if TYPE_CHECKING:
    from types import ModuleType

    from pipeline.cache import Cache
    from pipeline.executor import Display
    from pipeline.plan import Node, Plan

POLL_S = 0.1  # how often the driver looks for finished tasks
RECHECK_S = 1.0  # how often it looks whether every running task can still be placed


def run(plan: Plan, cache: Cache, run_cfg: dict[str, Any],
        display: Display) -> dict[str, NodeResult]:
    """Execute ``plan`` on the cluster ``run_cfg`` names; one result per node, in plan order."""
    ray = connect(run_cfg["ray"])
    task = ray.remote(max_calls=1, max_retries=run_cfg["ray"]["max_retries"])(worker.build)
    driver = _Driver(plan, cache, run_cfg, display, ray, task)
    pending = dict(plan.nodes)
    try:
        driver.schedule(pending)
    except BaseException:  # Ctrl-C, SIGTERM: stop the tasks; their staging is never committed
        for ref in driver.running:
            ray.cancel(ref, force=True)
        raise
    for node in pending.values():
        driver.finish(NodeResult(node, "skipped"))
    return {name: driver.results[name] for name in plan.nodes}


@dataclass
class _Driver:
    plan: Plan
    cache: Cache
    run_cfg: dict[str, Any]
    display: Display
    ray: ModuleType
    task: Any  # the remote function of worker.build
    results: dict[str, NodeResult] = field(default_factory=dict)
    running: dict[Any, tuple[Node, placement.Request]] = field(default_factory=dict)
    checked: float = 0.0  # time.monotonic() of the last look at the workers

    def schedule(self, pending: dict[str, Node]) -> None:
        while True:
            _skip_blocked(pending, self.results, self.display)
            ready = [] if _halted(self.results) else _ready(pending, self.results)
            for name in ready:
                self.start(pending.pop(name))
            if ready:
                continue  # a node found in the cache readies its dependents at once
            if not self.running:
                return
            self.collect()

    def finish(self, result: NodeResult) -> None:
        self.results[result.node.name] = result
        self.display.finished(result)

    def start(self, node: Node) -> None:
        self.display.started(node)
        found = self._cached(node) if _reuses(node, self.plan) else None
        if found is not None:
            self.finish(found)
        else:
            self._submit(node)

    def _cached(self, node: Node) -> NodeResult | None:
        start = time.perf_counter()
        inputs = {slot: self.results[up].entry for slot, up in node.upstream.items()
                  if self.results[up].status != "lost"}
        try:
            digests = {slot: entry.digest for slot, entry in inputs.items()}  # type: ignore[union-attr]
            key = cache_key(key_payload(node, digests, self.cache.state))
            entry = self.cache.lookup(key)
        except PipelineError:
            return None  # the worker meets the same error and reports it as a local run would
        if entry is None:
            return None
        return NodeResult(node, "cached", time.perf_counter() - start, key, entry)

    def _submit(self, node: Node) -> None:
        wanted = placement.request(self.plan, node, placement.live_workers(self.ray))
        if isinstance(wanted, str):
            self.finish(NodeResult(node, "skipped", note=wanted))
            return
        ups = {slot: self.results[up] for slot, up in node.upstream.items()}
        keys = {slot: r.key for slot, r in ups.items() if r.status != "lost" and r.key}
        lost = {slot: r.lost or "" for slot, r in ups.items() if r.status == "lost"}
        job = worker.job_for(node, self.run_cfg, keys, lost, _reuses(node, self.plan))
        self.running[self.task.options(**wanted.options()).remote(job)] = (node, wanted)

    def collect(self) -> None:
        """Take in what has finished, else wait a moment; now and then look at the workers.

        The wait is Python's, not ray.wait's: a signal arriving inside Ray's blocking wait
        comes out as a plain KeyboardInterrupt, and the run would report SIGTERM as SIGINT.
        """
        done, _ = self.ray.wait(list(self.running), num_returns=len(self.running), timeout=0)
        for ref in done:
            node, _wanted = self.running.pop(ref)
            self.finish(self._result(node, ref))
        if done:
            return
        time.sleep(POLL_S)
        if time.monotonic() - self.checked >= RECHECK_S:
            self.checked = time.monotonic()
            self._recheck()

    def _recheck(self) -> None:
        workers = placement.live_workers(self.ray)
        for ref, (node, wanted) in list(self.running.items()):
            if not any(wanted.fits(w) for w in workers):  # its worker left the cluster
                self.ray.cancel(ref, force=True)
                del self.running[ref]
                self._submit(node)

    def _result(self, node: Node, ref: Any) -> NodeResult:
        try:
            record = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            last = (str(exc).strip().splitlines() or [""])[-1]
            error = StageError(f"stage '{node.name}': its Ray task failed "
                               f"({type(exc).__name__}): {last}")
            error.__cause__ = exc
            return NodeResult(node, "failed", error=error)
        status, seconds, where = record["status"], record["seconds"], record["where"]
        if "error" in record:
            return NodeResult(node, status, seconds, error=worker.error_from(record["error"]),
                              where=where)
        if status == "lost":
            return NodeResult(node, status, seconds, lost=record["lost"], where=where)
        entry = self.cache.lookup(record["key"])
        if entry is None:
            return NodeResult(node, "failed", seconds, where=where, error=_not_shared(
                node, record["key"], where, self.cache))
        return NodeResult(node, status, seconds, record["key"], entry, note=record["note"],
                          where=where)


def _not_shared(node: Node, key: str, where: dict[str, str], cache: Cache) -> StageError:
    return StageError(f"stage '{node.name}' was built on {where['host']} (Ray node "
                      f"{where['node_id'][:12]}), but its cache entry {key[:12]} is not in this "
                      f"run's cache {cache.root}: the workers and this machine must share the "
                      "cache (the same run.cache_dir, or run.cache_url).")

