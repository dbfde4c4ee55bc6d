"""The Ray task of one node: find or build it through the shared cache, where Ray placed it.

The driver sends plain data only (the node's fields, its inputs' cache keys, the run section):
the worker resolves the stage kind from its own registry and opens the cache the run names
(``cache.open_cache``: the same directory on one host, the bucket of ``run.cache_url``
across hosts). Outputs stay in the cache, never in Ray's object store; the task returns a small
record, and the driver looks the entry up in its own cache. A worker that dies mid-build leaves
only a staging directory, which nothing reads and the retry's build clears.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import socket
import sys
import traceback
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError, StageError

if TYPE_CHECKING:
    from pipeline.plan import Node


@dataclass(frozen=True)
class Job:
    """Everything a worker needs to find or build one node."""

    run: dict[str, Any]  # the recipe's resolved run: section (where the cache is)
    cwd: str  # recipes name factories and files relative to the driver's working directory
    path: list[str]  # the driver's sys.path, in front of the worker's own
    node: dict[str, Any]  # the node's fields but its spec, which the worker looks up by kind
    inputs: dict[str, str]  # input slot -> the upstream entry's cache key
    lost: dict[str, str]  # input slot -> why that variant was lost
    reuses: bool  # a cached entry may stand in for the build


def job_for(node: Node, run: dict[str, Any], inputs: dict[str, str],
            lost: dict[str, str], reuses: bool) -> Job:
    from pipeline.cluster.connection import driver_path

    fields = {f.name: getattr(node, f.name) for f in dataclasses.fields(node) if f.name != "spec"}
    return Job(run, os.getcwd(), driver_path(), {**fields, "kind": node.spec.kind},
               inputs, lost, reuses)


def build(job: Job) -> dict[str, Any]:
    """Run in a Ray worker: the node's status, key, seconds, error and where it ran."""
    import ray

    os.chdir(job.cwd)
    sys.path[:0] = [p for p in job.path if p not in sys.path]
    from pipeline.cache import open_cache
    from pipeline.executor import build_one
    from pipeline.plan import Node
    from pipeline.registry import load_kinds

    fields = dict(job.node)
    node = Node(spec=load_kinds()[fields.pop("kind")], **fields)
    where = {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname()}
    cache = open_cache(job.run)
    inputs = {}
    for slot, key in job.inputs.items():
        entry = cache.lookup(key)
        if entry is None:
            error = StageError(f"stage '{node.name}': its input {slot} (cache key {key[:12]}) "
                               f"is not in the cache on {where['host']}: the workers need the "
                               "run's cache (a shared run.cache_dir, or run.cache_url).")
            return {"status": "failed", "seconds": 0.0, "where": where, **_error(error)}
        inputs[slot] = entry
    result = build_one(node, inputs, job.lost, cache, job.reuses)
    return {"status": result.status, "key": result.key, "seconds": result.seconds,
            "lost": result.lost, "note": result.note, "where": where,
            **(_error(result.error) if result.error is not None else {})}


def _error(error: PipelineError) -> dict[str, Any]:
    cause = error.__cause__ or error
    return {"error": {"type": f"{type(error).__module__}:{type(error).__qualname__}",
                      "message": str(error),
                      "traceback": "".join(traceback.format_exception(cause))}}


class RemoteTraceback(Exception):
    """The traceback of an error raised in a worker, shown under it with --verbose."""

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.args[0]}\"\"\""


def error_from(record: dict[str, Any]) -> PipelineError:
    """The PipelineError a worker's record describes (StageError if its class is unknown)."""
    module, _, name = record["type"].partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
        error = cls(record["message"]) if issubclass(cls, PipelineError) else None
    except Exception:  # an error class the driver cannot rebuild still fails the node
        error = None
    error = error or StageError(record["message"])
    error.__cause__ = RemoteTraceback(record["traceback"])
    return error
