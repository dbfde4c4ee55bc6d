"""Build one recipe: plan it, run it (or show what would run), publish bundles, log the run."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from pipeline import executor, plan, verdicts
from pipeline.bundle import publish as bundle
from pipeline.cache import Cache, Entry, open_cache
from pipeline.environment import machine_problem, space_problem, writable_problem
from pipeline.errors import GateError, PipelineError
from pipeline.keys import cache_key, key_payload
from pipeline.noop import fastpath
from pipeline.progress import LiveDisplay, summary_table

if TYPE_CHECKING:
    from collections.abc import Callable

    from omegaconf import DictConfig

    Chooser = Callable[[plan.Plan, dict[str, executor.NodeResult]], set[str]]


def run_recipe(cfg: DictConfig, console: Console | None = None,
               choose: Chooser | None = None) -> dict[str, Any]:
    """Build the recipe ``cfg``; returns the run record, raises the first stage error.

    ``choose`` (the nightly's regression check) sees the results before anything is published
    and returns the publishing nodes that may publish; by default every one that was built.
    """
    # logs and CI are no terminal: rich would wrap the tables at 80 columns there
    console = console or Console(stderr=True, width=None if sys.stderr.isatty() else 140)
    the_plan = plan.build(cfg)
    run_cfg = the_plan.resolved["run"]
    cache = open_cache(run_cfg)
    if run_cfg["dry_run"]:
        console.print(dry_run_table(the_plan, cache))
        return {"recipe": the_plan.recipe, "dry_run": True}
    bundle.check_signing(the_plan)  # a missing key must fail now, not after every stage ran
    recipe_dir = Path(run_cfg["artifacts_dir"]) / the_plan.recipe
    finish = _Finish(choose, time.time(),
                     preflight(the_plan, cache, recipe_dir, run_cfg["min_free_mb"], console))
    with LiveDisplay(console, live=run_cfg["progress"]) as display:
        results = _execute(the_plan, cache, run_cfg, display)
    errors = [r.error for r in results.values() if r.error is not None]
    try:
        record = _publish_and_log(the_plan, results, cache, recipe_dir, finish)
    except (OSError, PipelineError) as exc:
        problem = machine_problem(exc) if isinstance(exc, OSError) else None
        if not errors and problem is None:
            raise
        if not errors:
            raise problem from exc
        # the stage's own error is the one to act on; a full disk afterwards is a consequence
        console.print(f"[yellow]after the stage error, publishing also failed: "
                      f"{problem or exc}")
        raise _first_or_all_gates(errors) from exc
    verdict = "ok" if record["ok"] else "FAILED"
    console.print(summary_table(results, f"{the_plan.recipe}: {verdict}"))
    if record["bundles_summary"]:
        console.print(verdicts.table(record["bundles_summary"], f"{the_plan.recipe}: bundles"))
    if errors:
        raise _first_or_all_gates(errors)
    fastpath.after_build(the_plan, results, record, cache)
    return record


def _execute(the_plan: plan.Plan, cache: Cache, run_cfg: dict[str, Any],
             display: LiveDisplay) -> dict[str, executor.NodeResult]:
    if run_cfg["executor"] == "ray":  # Ray is imported only here, only when asked for
        from pipeline.cluster import executor as on_cluster

        return on_cluster.run(the_plan, cache, run_cfg, display)
    return executor.run(the_plan, cache, run_cfg["jobs"], display)


@dataclass(frozen=True)
class _Finish:
    """What publishing needs beyond the plan and results."""

    choose: Chooser | None
    started: float
    save_state: bool  # false when the cache is read-only (and nothing had to be built)


def _publish_and_log(the_plan: plan.Plan, results: dict[str, executor.NodeResult],
                     cache: Cache, recipe_dir: Path, finish: _Finish) -> dict[str, Any]:
    only = finish.choose(the_plan, results) if finish.choose is not None else None
    bundles = bundle.publish(the_plan, results, recipe_dir, cache.state, only)
    if finish.save_state:
        cache.state.save()
    record = _record(the_plan, results, bundles, time.time() - finish.started)
    rows = verdicts.bundle_rows(the_plan, results, bundle.bundle_names(the_plan))
    for row in rows:
        if row["verdict"] == "published" and row["bundle"] not in bundles:
            row["verdict"] = "held back (the previous bundle stays live)"
    record["bundles_summary"] = rows
    _write_json(recipe_dir / "run.json", record)
    return record


def preflight(the_plan: plan.Plan, cache: Cache, recipe_dir: Path, min_free_mb: float,
              console: Console) -> bool:
    """Fail before any stage runs if the run cannot write its directories (exit 5).

    A cache that cannot be written is fine when everything comes from it (a shared,
    read-only cache): returns whether the cache may be written.
    """
    problem = (writable_problem(recipe_dir, "the artifacts dir")
               or space_problem(recipe_dir, "the artifacts dir", min_free_mb))
    if problem is not None:
        raise problem
    problem = (writable_problem(cache.root, "the cache dir")
               or space_problem(cache.root, "the cache dir", min_free_mb))
    if problem is None:
        return True
    if any(entry is None for _key, entry in planned(the_plan, cache).values()):
        raise problem
    # one line however long the path: a log reader greps for it, rich would wrap it at 140
    console.print(f"[yellow]{problem.args[0].split(';')[0]}; everything is cached, so this "
                  "run only reads it", soft_wrap=True)
    return False


def _first_or_all_gates(errors: list[PipelineError]) -> PipelineError:
    """The error the run exits with: a crash first; failed gates together, one per target."""
    crashes = [e for e in errors if not isinstance(e, GateError)]
    if crashes or len(errors) == 1:
        return (crashes or errors)[0]
    return GateError(f"{len(errors)} stages failed their quality gates; "
                     + " | ".join(str(e) for e in errors))


def _record(the_plan: plan.Plan, results: dict[str, executor.NodeResult],
            bundles: dict[str, Path], seconds: float) -> dict[str, Any]:
    errors = [str(r.error) for r in results.values() if r.error is not None]
    return {
        "recipe": the_plan.recipe,
        "ok": not errors,
        "seconds": round(seconds, 3),
        "stages": [{"stage": r.node.stage, "kind": r.node.spec.kind, "target": r.node.target,
                    "status": r.status, **({"note": r.note} if r.note else {}),
                    **({"where": r.where} if r.where else {}),
                    **({"from": "remote"} if r.entry is not None and r.entry.remote else {}),
                    "seconds": round(r.seconds, 3), "key": r.key} for r in results.values()],
        "bundles": {target: str(path) for target, path in bundles.items()},
        "errors": errors,
    }


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        partial.write_text(json.dumps(data, indent=2))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)  # left only if writing failed (a full disk)


def dry_run_table(the_plan: plan.Plan, cache: Cache) -> Table:
    """What a run would do, without running: each node, its inputs, cache hit or miss."""
    table = Table(title=f"{the_plan.recipe}: dry run")
    for column in ("stage", "target", "inputs", "would", "key"):
        table.add_column(column)
    for name, (key, entry) in planned(the_plan, cache).items():
        node = the_plan.nodes[name]
        would = "use cache" if entry else ("run (forced)" if name in the_plan.force else "run")
        table.add_row(node.stage, node.target or "-", ", ".join(node.upstream.values()),
                      would, key[:12] if key else "(after inputs)")
    return table


def planned(the_plan: plan.Plan, cache: Cache) -> dict[str, tuple[str | None, Entry | None]]:
    """Each node's key and cache entry as far as known before running (None: it must run)."""
    entries: dict[str, Entry | None] = {}
    keys: dict[str, tuple[str | None, Entry | None]] = {}
    for name, node in the_plan.nodes.items():
        ups = [entries.get(up) for up in node.upstream.values()]
        key, entry = None, None
        if all(ups):
            digests = {slot: e.digest for slot, e in zip(node.upstream, ups, strict=True)}
            key = cache_key(key_payload(node, digests, cache.state))
            entry = cache.lookup(key) if node.cache and name not in the_plan.force else None
        entries[name] = entry
        keys[name] = (key, entry)
    return keys


def explain(exc: PipelineError) -> str:
    return f"edgekiln: {exc.label}: {exc}"
