"""The first step of every ``edgekiln`` command: exit at once if nothing changed.

``exit_if_unchanged`` runs before Hydra is imported. On a miss it snapshots what composition
will read (now, before it reads it: a file edited meanwhile then differs from the snapshot and
the next run takes the full path again) and drops the stale record; ``after_build`` writes the
new record once the build succeeded and its bundles are published.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from pipeline.noop import record, watch

if TYPE_CHECKING:
    from pipeline.cache import Cache
    from pipeline.executor import NodeResult
    from pipeline.plan import Plan

_pending: dict[str, Any] = {}  # the snapshot of this command, until its build succeeds


def exit_if_unchanged(argv: list[str]) -> None:
    """Exit 0 after verifying the bundles if ``argv`` built before and nothing changed."""
    _pending.clear()
    if not record.eligible(argv):
        return
    start = time.perf_counter()
    path = record.record_path(argv)
    found = record.load(path)
    restamped: watch.Files = {}
    if found is not None and record.unchanged(found, restamped):
        if restamped:  # equal content under a new stamp: the next check needs only a stat
            for part in ("inputs", "outputs"):
                files = found[part]["files"]
                files.update({p: v for p, v in restamped.items() if p in files})
            record.write(path, found)
        _finish(found, time.perf_counter() - start)
    previous = found["inputs"]["files"] if found else None
    _pending.update(path=path, artifacts=record.artifacts_dir(argv),
                    inputs=watch.take(record.watched_inputs(argv), previous),
                    site=record.site_listings())
    if found is not None:
        os.unlink(path)  # a failed build must not leave the old record describing it


def _finish(found: dict[str, Any], seconds: float) -> None:
    run = record.as_noop(found["run"], seconds)
    record.write(found["run_json"], run)
    bundles = ", ".join(sorted(run["bundles"].values())) or "none"
    print(f"edgekiln: {run['recipe']}: nothing changed since the last build; bundles "
          f"verified: {bundles}", file=sys.stderr)
    sys.exit(0)


def after_build(the_plan: Plan, results: dict[str, NodeResult], run: dict[str, Any],
                cache: Cache) -> None:
    """Record a successful build of the command this process started with."""
    from pathlib import Path

    run_cfg = the_plan.resolved["run"]
    if not _pending or not run["ok"] or os.path.abspath(run_cfg["artifacts_dir"]) != \
            _pending["artifacts"]:
        return
    outputs = watch.take(_outputs(the_plan, results, run),
                         digest=lambda p: cache.state.file(Path(p)))
    run_json = os.path.join(_pending["artifacts"], the_plan.recipe, "run.json")
    # the stored run.json is the one written just now: a no-op rewrites it from this record
    record.write(_pending["path"], {
        "format": record.FORMAT, "inputs": _pending["inputs"], "site": _pending["site"],
        "outputs": outputs, "run": json.loads(Path(run_json).read_text()),
        "run_json": run_json})
    _pending.clear()


def _outputs(the_plan: Plan, results: dict[str, NodeResult], run: dict[str, Any]) -> list[str]:
    """What the build read beyond the recipe (sources, factories' imports, signing keys) and
    what it left (cache entries, bundles with their archives)."""
    from pathlib import Path

    from pipeline.keys import source_location

    paths: list[str] = []
    for node in the_plan.nodes.values():
        for key, value in node.sources.items():
            where = source_location(key, value)
            if isinstance(where, Path):
                paths.append(os.path.abspath(where))
        paths += _files_named(node.publish)
    for result in results.values():
        if result.entry is not None:
            paths.append(str(result.entry.path))
            paths += [os.path.abspath(name) for name in result.entry.meta.get("imports", {})]
    if os.environ.get("EDGEKILN_SIGNING_KEY"):
        paths += _files_named(os.environ["EDGEKILN_SIGNING_KEY"])
    for bundle in run["bundles"].values():
        paths += [os.path.abspath(f"{bundle}{suffix}") for suffix in ("", ".tar.gz",
                                                                      ".tar.gz.sha256")]
    return sorted(set(paths))


def _files_named(settings: Any) -> list[str]:
    """The existing files a publisher's settings name (a signing key), however nested."""
    if isinstance(settings, dict):
        return [p for value in settings.values() for p in _files_named(value)]
    if isinstance(settings, str) and os.path.isfile(settings):
        return [os.path.abspath(settings)]
    return []
