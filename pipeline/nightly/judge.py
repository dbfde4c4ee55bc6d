"""Tonight's verdict on each bundle of a recipe, between building and publishing.

``Judge`` is the ``choose`` hook of ``pipeline.runner.run_recipe``: it sees the executor's
results, turns each publishing node into a case (its metrics, a fresh timing, the comparison
with the last green case) and returns the nodes that may publish: the green ones. Latency is
compared with the timing rounds of the last few green nights together, and a slowdown is timed
a second time before it counts (``pipeline.nightly.regression`` has the rule).

    failed stage in its chain ──> gate (a GateError) | error (anything else; skipped too)
    otherwise ──> no green case before ──> baseline
                  else compare ──> regression (a finding over tolerance) | green
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.bundle.publish import bundle_names
from pipeline.errors import GateError
from pipeline.nightly.history import Case
from pipeline.nightly.metrics import case_metrics
from pipeline.nightly.regression import Finding, compare
from pipeline.nightly.timing import TimingSettings, time_bundle

if TYPE_CHECKING:
    from pipeline.executor import NodeResult
    from pipeline.nightly.history import History
    from pipeline.nightly.tolerances import Policy, Tolerances
    from pipeline.plan import Plan

# green nights whose timing rounds together make the latency baseline
POOLED_NIGHTS = 5
CONFIRM_PAUSE = 1.0  # seconds between a suspect timing and the one that confirms it


@dataclass
class Verdict:
    """A case with what the report says about it."""

    case: Case
    node: str | None  # the publishing node; None when the recipe did not get that far
    baseline_night: str | None = None
    findings: list[Finding] = field(default_factory=list)
    live_night: str | None = None  # whose bundle is published after tonight

    def as_dict(self) -> dict[str, Any]:
        """The verdict as JSON data, for the night to read back from a worker."""
        return {"case": dataclasses.asdict(self.case), "node": self.node,
                "baseline_night": self.baseline_night, "live_night": self.live_night,
                "findings": [dataclasses.asdict(f) for f in self.findings]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Verdict:
        """The inverse of ``as_dict``."""
        return cls(Case(**data["case"]), data["node"], data["baseline_night"],
                   [Finding(**f) for f in data["findings"]], data["live_night"])


@dataclass
class Judge:
    """The ``choose`` hook of ``run_recipe``: judges each bundle, returns the green nodes."""

    history: History
    night_id: int
    policy: Policy
    timing: TimingSettings = field(default_factory=TimingSettings)
    rebaseline: tuple[str, ...] = ()  # "recipe/bundle" patterns whose tonight is the baseline
    verdicts: list[Verdict] = field(default_factory=list)

    def __call__(self, plan: Plan, results: dict[str, NodeResult]) -> set[str]:
        for name, bundle in bundle_names(plan).items():
            self.verdicts.append(self._judge(plan, results, name, bundle))
        return {v.node for v in self.verdicts if v.case.green and v.node is not None}

    def _judge(self, plan: Plan, results: dict[str, NodeResult], name: str,
               bundle: str) -> Verdict:
        node = plan.nodes[name]
        metrics = case_metrics(plan, results, name)
        failure = _failure(results, plan.chain(name))
        entry = results[name].entry
        timed = failure is None and entry is not None  # no failure: the bundle was built
        if timed:
            metrics |= self._time(plan, results, name)
        greens = self.history.greens(plan.recipe, bundle, self.night_id, POOLED_NIGHTS)
        tol = self.policy.for_case(plan.recipe, bundle, node.target)
        findings = _compare(metrics, greens, tol)
        if timed and any(f.metric == "latency_ms" and f.regressed for f in findings):
            # a burst of load on a shared machine looks like a slowdown: time again after a
            # pause and keep the faster measurement (interference only ever adds time)
            time.sleep(CONFIRM_PAUSE)
            again = self._time(plan, results, name)
            if again.get("latency_median_ms", math.inf) < metrics["latency_median_ms"]:
                metrics |= again
            metrics["latency_confirmed"] = True
            findings = _compare(metrics, greens, tol)
        before = greens[0] if greens else None
        status, reason = failure or self._status(plan.recipe, bundle, before, findings)
        case = Case(plan.recipe, bundle, node.target, status, reason, metrics)
        return Verdict(case, name, before.night if before else None, findings)

    def _time(self, plan: Plan, results: dict[str, NodeResult], name: str) -> dict[str, Any]:
        entry = results[name].entry
        if entry is None:
            return {}
        target = _target(plan, plan.nodes[name].target)
        return time_bundle(entry.out, entry.meta["files"], target, self.timing)

    def _status(self, recipe: str, bundle: str, before: Case | None,
                findings: list[Finding]) -> tuple[str, str | None]:
        if any(fnmatch.fnmatchcase(f"{recipe}/{bundle}", p) for p in self.rebaseline):
            return "baseline", "a new baseline, as asked (--rebaseline)"
        if before is None:
            return "baseline", None
        regressed = [f.reason() for f in findings if f.regressed]
        if regressed:
            return "regression", f"regressed vs {before.night}: " + "; ".join(regressed)
        return "green", None


def _compare(metrics: dict[str, Any], greens: list[Case], tol: Tolerances) -> list[Finding]:
    """Against the last green case; latency against the pooled rounds of the last few green
    nights, so the baseline's spread includes how much the machine varies between nights."""
    if not greens:
        return []
    pooled = [r for case in greens for r in case.metrics.get("latency_rounds_ms") or []]
    return compare(metrics, greens[0].metrics | ({"latency_rounds_ms": pooled} if pooled
                                                 else {}), tol)


def _failure(results: dict[str, NodeResult], nodes: list[str]) -> tuple[str, str] | None:
    """Why the bundle was not built: the first failed stage of its chain, or one skipped."""
    for name in nodes:
        error = results[name].error
        if results[name].status == "failed" and error is not None:
            return ("gate" if isinstance(error, GateError) else "error"), str(error)
    skipped = [name for name in nodes if results[name].status == "skipped"]
    if not skipped:
        return None
    crashed = [str(r.error) for r in results.values() if r.status == "failed"]
    cause = f" after {crashed[0]}" if crashed else ""
    return "error", f"not built: {skipped[0]} was skipped{cause}"


def _target(plan: Plan, target: str | None) -> dict[str, Any] | None:
    if target is None:
        return None
    return {**plan.resolved["targets"][target], "name": target}
