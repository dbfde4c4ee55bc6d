"""Search over PTQ configurations: ``quantize.search.candidates`` are partial overrides of the
quantize section; the section itself and every candidate are built and measured (budget
scores, CPU latency p50, size), and the fastest one within the accuracy budget wins.

Candidates are checked against the recipe schema before anything is built, with errors that
name the full key (``quantize.search.candidates.2.calibration.method``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pipeline.errors import GateError, RecipeError
from stages.common.onnx_files import model_size
from stages.quantize import budget as budgets
from stages.quantize import ptq
from stages.quantize.params import QuantizeParams

if TYPE_CHECKING:
    from pathlib import Path

    from stages.common.datasets.splits import Feed
    from stages.quantize.budget import Heldout, Trial
    from stages.quantize.ptq import Quantizer

KEY = "quantize.search.candidates"
# latencies within this fraction of the fastest count as a tie (measured noise here: ~5-25%)
TIE = 0.05
# keys a candidate may not override: they steer the search rather than shape one model
FIXED = ("accuracy_budget", "search")


def variants(cfg: DictConfig) -> list[tuple[str, dict[str, Any], str]]:
    """(name, settings, recipe key) of the quantize section and of each search candidate."""
    found = [("recipe", ptq.settings(cfg), "quantize")]
    base = OmegaConf.to_container(cfg, resolve=True)
    for i, item in enumerate(cfg.search.candidates):
        where = f"{KEY}.{i}"
        override = OmegaConf.to_container(item, resolve=True) if isinstance(
            item, DictConfig) else item
        if not isinstance(override, dict) or not override:
            raise RecipeError(f"{where}: expected a non-empty mapping of quantize keys, e.g. "
                              f"{{per_channel: false}}; got {override!r}.")
        for key in FIXED:
            if key in override:
                raise RecipeError(f"{where}.{key}: a candidate cannot change the search itself; "
                                  f"set quantize.{key} once for all candidates.")
        if override.get("mode") == "qat":
            raise RecipeError(f"{where}.mode: qat trains a model; search compares PTQ settings.")
        found.append((label(override), ptq.settings(_merge(base, override, where), where), where))
    return found


def _merge(base: Any, override: dict[str, Any], where: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(QuantizeParams), base, override)
    except OmegaConfBaseException as exc:
        message = str(exc).splitlines()[0]
        raise RecipeError(f"{where}.{exc.full_key}: {message}") from None
    return OmegaConf.create(OmegaConf.to_container(merged, enum_to_str=True))


def label(override: dict[str, Any], prefix: str = "") -> str:
    """``{calibration: {method: entropy}}`` -> ``calibration.method=entropy``."""
    parts = []
    for key, value in override.items():
        if isinstance(value, dict):
            parts.append(label(value, f"{prefix}{key}."))
        else:
            shown = json.dumps(value) if not isinstance(value, str) else value
            parts.append(f"{prefix}{key}={shown}")
    return ", ".join(parts)


@dataclass
class Result:
    winner: Trial
    quantized: Trial  # the fully quantized model the winner came from (itself unless repaired)
    rows: list[dict[str, Any]]  # the FP32 reference, then one per variant, latency included
    repaired: dict[str, Any]  # budget.repair's report when no variant was within budget
    latency: dict[str, float]  # p50 of FP32, quantized and winner, and the float nodes' cost


def run(quantizer: Quantizer, found: list[tuple[str, dict[str, Any], str]], data: Heldout,
        budget: Any, calibration: list[Feed]) -> Result:
    """Build and measure every variant; the fastest within budget wins.

    Variants within TIE of the fastest count as equally fast (a shared machine's timing noise
    is that large) and the smaller model, then the earlier variant, wins among them, so that
    noise rarely flips the choice. When no variant is within budget, the one closest to it is
    repaired by keeping nodes in float (``budget.repair``), which raises GateError when that
    fails too.
    """
    trials = [budgets.evaluate(quantizer, name, settings, data, budget)
              for name, settings, _ in found]
    repaired: dict[str, Any] = {}
    if any(t.within for t in trials):
        fp32, *latency = _latencies(trials, data, budget)
        fastest = min(ms for t, ms in zip(trials, latency, strict=True) if t.within)
        ties = [t for t, ms in zip(trials, latency, strict=True)
                if t.within and ms <= fastest * (1 + TIE)]
        winner = closest = min(ties, key=lambda t: (t.size, trials.index(t)))
    else:
        closest = budgets.least_short(trials, budget)
        try:
            winner, repaired = budgets.repair(quantizer, closest, data, budget, calibration)
        except GateError as error:
            table = "; ".join(f"{t.name}: {budgets.describe(t.scores)}" for t in trials)
            raise GateError(f"{error} Search candidates measured: {table}.") from None
        winner.name = f"{closest.name} + {len(winner.float_nodes)} float nodes"
        trials.append(winner)
        fp32, *latency = _latencies(trials, data, budget)
    rows = [{**t.row(), "latency_p50_ms": ms, "chosen": t is winner, "settings": t.settings}
            for t, ms in zip(trials, latency, strict=True)]
    reference = {"name": "FP32", "latency_p50_ms": fp32, "size_bytes": model_size(data.fp32),
                 "accuracy": None if data.labels is None else trials[0].scores["accuracy_fp32"]}
    shipped, quantized = (latency[trials.index(t)] for t in (winner, closest))
    return Result(winner, closest, [reference, *rows], repaired, {
        "fp32_p50": fp32, "quantized_p50": quantized, "shipped_p50": shipped,
        "float_nodes_cost": round(shipped - quantized, 4)})


def _latencies(trials: list[Trial], data: Heldout, budget: Any) -> list[float]:
    directories = [data.fp32, *(t.directory for t in trials)]
    return budgets.latency_p50(directories, data.feeds[0], budget)


def write(out: Path, rows: list[dict[str, Any]], budget: Any) -> None:
    """search.json, search.md (a table) and search.png (accuracy vs latency, size as area).

    They hold latencies, so unlike quantize.json they differ from run to run: the winner itself
    is chosen by measured speed, so a search's output cannot be byte-stable anyway.
    """
    from stages.quantize import plot

    reference, rows = rows[0], rows[1:]
    document = {"budget": budgets.limits(budget), "fp32": reference, "candidates": rows}
    (out / "search.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    (out / "search.md").write_text(plot.markdown(rows, reference, budgets.limits(budget)))
    plot.scatter(out / "search.png", rows, reference, budget)
