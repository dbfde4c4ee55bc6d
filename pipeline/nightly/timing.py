"""Time a bundle again in the nightly itself: a few rounds of batch-1 runs, a median per round.

The validate stage's p50 is one measurement, cached with the stage: an unchanged night reuses
it. The regression check needs tonight's speed and how much it wobbles, so every built bundle is
opened the way a device opens it (``pipeline.bundle.device_loader``: its providers that exist
here, its session options) and timed in ``rounds`` rounds after the executor has finished, so
no stage competes with it. The spread of the round medians is the noise the latency rule uses.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline.nightly.regression import MAD_TO_SIGMA, mad

if TYPE_CHECKING:
    from pathlib import Path


MIN_RUNS = 3  # per round: fewer and a round's median is one run


@dataclass(frozen=True)
class TimingSettings:
    """How the nightly times each bundle (``--timing-rounds``, ``--timing-runs``,
    ``--timing-budget``)."""

    rounds: int = 5
    runs: int = 30  # per round, at most
    warmup: int = 3
    # seconds of timed runs per bundle: a 150 ms resnet gets 3 runs a round, not 30 (which
    # made an unchanged night over the bundled recipes take 195 s instead of about 60)
    budget: float = 2.0


def time_bundle(folder: Path, files: dict[str, str], target: dict[str, Any] | None,
                settings: TimingSettings) -> dict[str, Any]:
    """Round medians (ms) of the bundle's model in ``folder``, or why it could not be timed."""
    import json

    from pipeline.bundle import device_loader as loader  # numpy + onnxruntime: only here

    manifest = {"target": (target or {}).get("name"), "files": files, "target_config": target}
    try:
        providers = json.loads((folder / "providers.json").read_text())
        signature = json.loads((folder / "signature.json").read_text())
        manifest["target"] = providers.get("target")
        with warnings.catch_warnings():  # a provider absent here: the report says what ran
            warnings.simplefilter("ignore")
            session = loader.create_session(folder, manifest)
        feed = loader.random_feed(signature)
        rounds, runs = _rounds(session, feed, settings)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, loader.BundleError,
            loader.DeviceError) as exc:
        return {"timing_error": f"not timed: {type(exc).__name__}: {exc}"[:300]}
    return {"latency_rounds_ms": rounds, "latency_median_ms": statistics.median(rounds),
            "latency_spread_ms": MAD_TO_SIGMA * mad(rounds),
            "timed_on": session.get_providers()[0],
            "timing": f"{len(rounds)} rounds x {runs} runs, batch 1, random feed"}


def _rounds(session: Any, feed: dict[str, Any],
            settings: TimingSettings) -> tuple[list[float], int]:
    """Round medians (ms) and the runs per round that fit the budget."""
    start = time.perf_counter()
    for _ in range(max(settings.warmup, 1)):
        session.run(None, feed)
    per_run = (time.perf_counter() - start) / max(settings.warmup, 1)
    rounds = max(settings.rounds, 1)
    runs = max(MIN_RUNS, min(settings.runs, int(settings.budget / (rounds * per_run + 1e-9))))
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, feed)
            times.append((time.perf_counter() - start) * 1000)
        medians.append(statistics.median(times))
    return medians, runs
