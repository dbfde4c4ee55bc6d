"""Compare a case's metrics with its last green night: what moved, and what moved too far.

Every rule compares tonight with the baseline (the last green night of the same recipe x
bundle) and yields a ``Finding`` (the delta, for the report), regressed or not. Latency is
noise-aware: the nightly times each bundle in several rounds (``pipeline.nightly.timing``), and
tonight's median of round medians may exceed the baseline's by

    max(latency_slowdown x baseline, latency_noise_k x noise, latency_floor_ms)

where ``noise = 1.4826 x hypot(MAD(baseline rounds), MAD(tonight's rounds))``, the robust
standard deviation of the difference of two medians (the judge passes the rounds of the last
few green nights as the baseline, and times a suspect bundle twice). On a quiet machine the
relative tolerance decides; on a busy shared one the rounds spread out and the bound widens
with them, so load alone does not fail a night; the floor covers timer resolution on
microsecond models.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pipeline.nightly.tolerances import Tolerances

MAD_TO_SIGMA = 1.4826  # MAD x this estimates the standard deviation of normal noise
EXACT = 1e-5  # float noise allowed on a max abs diff that was 0


@dataclass(frozen=True)
class Finding:
    """One metric tonight against the baseline, and whether it moved beyond tolerance."""

    metric: str
    baseline: Any
    current: Any
    regressed: bool
    allowed: str  # the rule, in words, for the report and junit.xml

    @property
    def delta(self) -> float | None:
        """Tonight minus the baseline, for numbers (None for flags such as an EP verdict)."""
        numbers = (self.baseline, self.current)
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in numbers):
            return None
        return self.current - self.baseline

    def reason(self) -> str:
        """The finding in words: ``metric baseline -> tonight (allowed: rule)``."""
        return (f"{self.metric} {_show(self.baseline)} -> {_show(self.current)} "
                f"(allowed: {self.allowed})")


def compare(current: dict[str, Any], baseline: dict[str, Any], tol: Tolerances) -> list[Finding]:
    """Every rule whose metric both nights have, in a fixed order."""
    findings = [
        *_drop("top1_agreement", current, baseline, tol.top1_agreement_drop),
        *_drop("mean_cosine", current, baseline, tol.mean_cosine_drop),
        *_rise("accuracy_drop", current, baseline, tol.accuracy_drop),
        *_growth("max_abs_diff", current, baseline, tol.max_abs_diff_growth),
        *_growth("model_bytes", current, baseline, tol.size_growth),
        *_growth("bundle_bytes", current, baseline, tol.size_growth),
        *_rise("cpu_fallback_nodes", current, baseline, tol.cpu_fallback_growth),
        *_target_ep(current, baseline, tol.require_target_ep),
    ]
    before, tonight = baseline.get("latency_rounds_ms"), current.get("latency_rounds_ms")
    if before and tonight:
        findings.append(latency_check(before, tonight, tol))
    return findings


def latency_check(baseline: Sequence[float], current: Sequence[float],
                  tol: Tolerances) -> Finding:
    """Tonight's round medians against the baseline's (see the module docstring)."""
    base, now = statistics.median(baseline), statistics.median(current)
    noise = MAD_TO_SIGMA * math.hypot(mad(baseline), mad(current))
    allowed = max(tol.latency_slowdown * base, tol.latency_noise_k * noise,
                  tol.latency_floor_ms)
    return Finding("latency_ms", base, now, now - base > allowed,
                   f"+{allowed:.4g} ms = max({tol.latency_slowdown:g} x baseline, "
                   f"{tol.latency_noise_k:g} x noise {noise:.3g}, floor {tol.latency_floor_ms:g})")


def mad(values: Sequence[float]) -> float:
    """Median absolute deviation from the median (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    return statistics.median(abs(v - middle) for v in values)


def _rule(metric: str, current: dict[str, Any], baseline: dict[str, Any], allowed: str,
          regressed: Callable[[Any, Any], bool]) -> list[Finding]:
    """The finding for ``metric`` when both nights have it: ``regressed(baseline, tonight)``."""
    base, now = baseline.get(metric), current.get(metric)
    if base is None or now is None:
        return []
    return [Finding(metric, base, now, regressed(base, now), allowed)]


def _drop(metric: str, current: dict[str, Any], baseline: dict[str, Any],
          allowed: float) -> list[Finding]:
    return _rule(metric, current, baseline, f"a drop of {allowed:g}",
                 lambda base, now: base - now > allowed)


def _rise(metric: str, current: dict[str, Any], baseline: dict[str, Any],
          allowed: float) -> list[Finding]:
    return _rule(metric, current, baseline, f"a rise of {allowed:g}",
                 lambda base, now: now - base > allowed)


def _growth(metric: str, current: dict[str, Any], baseline: dict[str, Any],
            allowed: float) -> list[Finding]:
    return _rule(metric, current, baseline, f"{allowed:+.0%} growth",
                 lambda base, now: now > base * (1 + allowed) + EXACT)


def _target_ep(current: dict[str, Any], baseline: dict[str, Any],
               required: bool) -> list[Finding]:
    base, now = baseline.get("validated_on_target_ep"), current.get("validated_on_target_ep")
    if base is None or now is None:
        return []
    lost = required and base is True and now is False
    return [Finding("validated_on_target_ep", base, now, lost,
                    "must stay validated on its EP" if required else "may change")]


def _show(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
