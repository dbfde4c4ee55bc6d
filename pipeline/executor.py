"""Run a plan: look every node up in the cache, build what is missing, in parallel.

A node is ready once all its upstream nodes have finished; up to ``jobs`` ready nodes build at
once. A node whose input failed or was skipped is skipped. After a stage crashes nothing new
starts; nodes already running finish (and are cached, so a re-run of the same command resumes
from there). A failed quality gate stops only what depends on it, so every other target is
still validated and gets its verdict.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from omegaconf import OmegaConf

from pipeline import imports
from pipeline.environment import machine_problem
from pipeline.errors import GateError, InputError, PipelineError, StageError
from pipeline.hashing import fingerprint
from pipeline.inflight import InFlight
from pipeline.keys import cache_key, key_payload, source_location
from pipeline.registry import StageContext

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.cache import Cache, Entry
    from pipeline.plan import Node, Plan

log = logging.getLogger(__name__)


class Display(Protocol):
    def started(self, node: Node) -> None: ...
    def status(self, node: Node, message: str) -> None: ...
    def finished(self, result: NodeResult) -> None: ...


@dataclass
class NodeResult:
    node: Node
    status: str  # ran | cached | failed | skipped | lost (a variant that failed)
    seconds: float = 0.0
    key: str | None = None
    entry: Entry | None = None
    error: PipelineError | None = None
    # why a variant was lost: its node chooses among the others, so the run goes on
    lost: str | None = None
    # why a node ran although it had been cached (its entry was damaged and quarantined)
    note: str | None = None
    # where a cluster executor ran it: {"node_id": ..., "host": ...}; None on this machine
    where: dict[str, str] | None = None


def run(plan: Plan, cache: Cache, jobs: int, display: Display) -> dict[str, NodeResult]:
    """Execute ``plan``; returns one result per node, in plan order."""
    runner = _Runner(plan, cache, display)
    pending = dict(plan.nodes)
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        _schedule(runner, pending, pool, jobs)
    except BaseException:  # Ctrl-C, SIGTERM: nothing new starts, builds under way are dropped
        pool.shutdown(wait=False, cancel_futures=True)
        for staged in runner.inflight.stop():
            cache.discard(staged)
        raise
    pool.shutdown()
    for name, node in pending.items():
        runner.results[name] = NodeResult(node, "skipped")
        display.finished(runner.results[name])
    return {name: runner.results[name] for name in plan.nodes}


def _schedule(runner: _Runner, pending: dict[str, Node], pool: ThreadPoolExecutor,
              jobs: int) -> None:
    running: dict[Future[NodeResult], str] = {}
    while pending or running:
        _skip_blocked(pending, runner.results, runner.display)
        for name in [] if _halted(runner.results) else _ready(pending, runner.results):
            node = pending[name]
            busy = [runner.plan.nodes[n] for n in running.values()]
            if len(busy) >= jobs or _must_wait(node, busy):
                break
            del pending[name]
            runner.display.started(node)
            running[pool.submit(runner.run_node, node)] = name
        if not running:
            break
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            result = future.result()
            runner.results[running.pop(future)] = result
            runner.display.finished(result)


def _halted(results: dict[str, NodeResult]) -> bool:
    return any(r.status == "failed" and not isinstance(r.error, GateError)
               for r in results.values())


def _skip_blocked(pending: dict[str, Node], results: dict[str, NodeResult],
                  display: Display) -> None:
    # plan order is topological, so one pass also reaches the dependents of what it skips
    for name, node in list(pending.items()):
        if any(results.get(up) and results[up].status in ("failed", "skipped")
               for up in node.upstream.values()):
            results[name] = NodeResult(node, "skipped")
            display.finished(results[name])
            del pending[name]


def _must_wait(node: Node, running: list[Node]) -> bool:
    """An exclusive stage starts on an idle executor, and nothing starts beside one."""
    return bool(running) and (node.exclusive or any(n.exclusive for n in running))


def _ready(pending: dict[str, Node], results: dict[str, NodeResult]) -> list[str]:
    return [name for name, node in pending.items()
            if all(up in results for up in node.upstream.values())]


@dataclass
class _Runner:
    plan: Plan
    cache: Cache
    display: Display
    results: dict[str, NodeResult] = field(default_factory=dict)
    inflight: InFlight = field(default_factory=InFlight)

    def run_node(self, node: Node) -> NodeResult:
        inputs = {slot: self.results[up].entry for slot, up in node.upstream.items()
                  if self.results[up].status != "lost"}
        lost = {slot: self.results[up].lost or "" for slot, up in node.upstream.items()
                if self.results[up].status == "lost"}
        return self.run_with(node, inputs, lost)  # type: ignore[arg-type]

    def run_with(self, node: Node, inputs: dict[str, Entry],
                 lost: dict[str, str]) -> NodeResult:
        """Find or build ``node`` from its input entries (a cluster worker calls this too)."""
        start = time.perf_counter()
        try:
            digests = {slot: entry.digest for slot, entry in inputs.items()}  # type: ignore[union-attr]
            payload = key_payload(node, digests, self.cache.state)
            key = cache_key(payload)
            entry = self.cache.lookup(key) if _reuses(node, self.plan) else None
            status = "cached"
            if entry is None:
                entry, status = self._build(node, key, payload, inputs, lost)  # type: ignore[arg-type]
        except PipelineError as exc:
            # one candidate less: the node that reads it chooses among the rest; but bad input
            # (NaN in the calibration data) fails every candidate alike and the run with them
            if node.variant and not isinstance(exc, InputError):
                log.warning("stage '%s' failed, its variant is left out: %s", node.name, exc)
                return NodeResult(node, "lost", time.perf_counter() - start, lost=str(exc))
            error = type(exc)(f"stage '{node.name}': {exc}")
            error.__cause__ = exc  # --verbose shows the traceback of the stage's own error
            return NodeResult(node, "failed", time.perf_counter() - start, error=error)
        note = self.cache.repaired.get(key) if status == "ran" else None
        return NodeResult(node, status, time.perf_counter() - start, key, entry, note=note)

    def _reporter(self, node: Node) -> Callable[[str], None]:
        def report(message: str) -> None:
            self.inflight.check()  # an interrupted run stops a stage at its next report
            self.display.status(node, message)

        return report

    def _build(self, node: Node, key: str, payload: dict[str, Any],
               inputs: dict[str, Entry], lost: dict[str, str]) -> tuple[Entry, str]:
        with self.cache.lock(key, f"stage '{node.name}'"):
            entry = self.cache.lookup(key) if _reuses(node, self.plan) else None
            if entry is not None:  # another run built it while we waited for the lock
                return entry, "cached"
            read = _read_sources(node)  # under the lock: what this build really starts from
            _check_sources_as_keyed(node, read, payload["sources"])
            modules = imports.loaded_modules()
            staged = self.cache.staging(key)
            self.inflight.started(node.name, staged)
            start = time.perf_counter()
            try:
                summary = node.spec.fn(_context(node, inputs, staged / "out",
                                                self._reporter(node), lost))
                _check_sources_unchanged(node, read)
                meta = {"node": node.name, "payload": payload, "summary": summary or {},
                        "seconds": round(time.perf_counter() - start, 3),
                        "imports": self._factory_imports(node, modules)}
                with self.inflight.committing(node.name):
                    return self.cache.commit(key, staged, meta), "ran"
            except PipelineError:
                self.cache.discard(staged)
                raise
            except Exception as exc:
                self.cache.discard(staged)
                problem = machine_problem(exc, staged) if isinstance(exc, OSError) else None
                if problem is not None:
                    raise problem from exc
                raise StageError(f"failed: {type(exc).__name__}: {exc}") from exc
            except BaseException:
                self.cache.discard(staged)
                raise
            finally:
                self.inflight.finished(node.name)

    def _factory_imports(self, node: Node, before: set[str]) -> dict[str, str]:
        """{path under the working tree: digest} of every module the node's factories import."""
        factories = [where for key, value in node.sources.items() if key.endswith("factory")
                     if isinstance(where := source_location(key, value), Path)]
        if not factories:
            return {}
        root = Path.cwd().resolve()
        found = {}
        for path in imports.discover(factories, before, root):
            try:
                found[path.relative_to(root).as_posix()] = self.cache.state.file(path)
            except OSError:  # gone since it was imported: no later lookup may match it
                found[path.relative_to(root).as_posix()] = "unreadable"
        return found


def _read_sources(node: Node) -> dict[str, dict[str, Any]]:
    """Fingerprints, read now, of the files and directories the node's sources name."""
    read = {}
    for key, value in sorted(node.sources.items()):
        where = source_location(key, value)
        if isinstance(where, Path):
            try:
                read[key] = fingerprint(where)
            except OSError as exc:
                raise InputError(f"{key}: cannot read {value} ({exc.strerror}).") from exc
    return read


def _check_sources_as_keyed(node: Node, read: dict[str, dict[str, Any]],
                            keyed: dict[str, str]) -> None:
    for key, seen in read.items():
        if seen["digest"] != keyed.get(key):
            raise StageError(f"{key} {node.sources[key]} changed after the run computed "
                             f"{node.spec.kind}'s cache key; nothing was cached. Run again.")


def _check_sources_unchanged(node: Node, before: dict[str, dict[str, Any]]) -> None:
    """A source rewritten while the stage ran: the output may mix both versions."""
    for key, seen in before.items():
        try:
            now = fingerprint(source_location(key, node.sources[key]))  # type: ignore[arg-type]
        except (OSError, PipelineError):
            now = None
        if now != seen:
            raise StageError(f"{key} {node.sources[key]} changed while {node.spec.kind} ran; "
                             "nothing was cached.")


def _reuses(node: Node, plan: Plan) -> bool:
    """Whether a cached output may stand in for a build (not forced, not ``cache: false``)."""
    return node.cache and node.name not in plan.force


def _context(node: Node, inputs: dict[str, Entry], out: Path,
             report: Callable[[str], None], lost: dict[str, str]) -> StageContext:
    config = OmegaConf.create(node.config)
    OmegaConf.set_readonly(config, True)
    return StageContext(config=config, inputs={s: e.out for s, e in inputs.items()}, out=out,
                        target=node.target, report=report, kind=node.spec.kind, lost=lost)


class _Quiet:
    """The display of a node built away from the run's terminal (a cluster worker)."""

    def started(self, node: Node) -> None: ...
    def status(self, node: Node, message: str) -> None: ...
    def finished(self, result: NodeResult) -> None: ...


def build_one(node: Node, inputs: dict[str, Entry], lost: dict[str, str], cache: Cache,
              reuses: bool) -> NodeResult:
    """Find or build one node from its input entries, as a run would (a cluster worker's task).

    ``reuses``: whether a cached entry may stand in for the build (not forced, not ``cache:
    false``).
    """
    from pipeline.plan import Plan

    alone = Plan(recipe=node.name, resolved={}, targets=(), nodes={node.name: node},
                 force=frozenset() if reuses else frozenset({node.name}))
    return _Runner(alone, cache, _Quiet()).run_with(node, inputs, lost)
