"""Accuracy-aware PTQ: check quantized models against ``quantize.accuracy_budget`` and, when
one is over, keep its most sensitive nodes in float until it is within.

The budget is checked on the evaluation split, never on calibration samples: ranges fitted on
a sample flatter the error on that same sample. The whole split is used by default (validate
checks a prefix of it) because every sample counts: one digit in 512 is 0.2% accuracy.
Sensitivity is ranked on calibration samples, so the evaluation split only decides when to
stop, which keeps the choice of float nodes from being fitted to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import GateError, RecipeError
from stages.common import metrics, onnx_files
from stages.common.ort_worker import cast_feed
from stages.quantize import sensitivity

if TYPE_CHECKING:
    from pathlib import Path

    from stages.common.datasets.splits import Feed, Split
    from stages.quantize.ptq import Quantizer

KEY = "quantize.accuracy_budget"
CPU = ["CPUExecutionProvider"]
BATCH = 32


@dataclass(frozen=True)
class Heldout:
    """Evaluation samples with the FP32 model's outputs on them."""

    feeds: list[Feed]
    labels: np.ndarray | None
    reference: np.ndarray
    fp32: Path  # the FP32 model directory


@dataclass
class Trial:
    """One quantized model and how it measured against the budget."""

    name: str
    settings: dict[str, Any]
    directory: Path
    scores: dict[str, float | None]
    within: bool
    size: int
    float_nodes: list[str] = field(default_factory=list)  # kept float by the budget search

    def row(self) -> dict[str, Any]:
        return {"name": self.name, **self.scores, "within_budget": self.within,
                "size_bytes": self.size, "float_nodes": self.float_nodes}


CRITERIA = ("max_accuracy_drop", "min_agreement", "min_sample_cosine")


def is_set(budget: Any) -> bool:
    return any(budget.get(key) is not None for key in CRITERIA)


def check(budget: Any) -> None:
    """Refuse budget values that cannot mean what they say."""
    for key in CRITERIA:
        if budget[key] is not None and not 0.0 <= budget[key] <= 1.0:
            raise RecipeError(f"{KEY}.{key}: expected a fraction in [0, 1], got {budget[key]}.")
    for key, least in (("max_float_nodes", 0), ("latency_runs", 1), ("warmup_runs", 0),
                       ("samples", 0), ("sensitivity_samples", 1)):
        if budget[key] < least:
            raise RecipeError(f"{KEY}.{key}: expected at least {least}, got {budget[key]}.")


def heldout(split: Split, fp32: Path, budget: Any, dataset_kind: str) -> Heldout:
    """The evaluation samples the budget is checked on, after checking the budget fits them."""
    if budget.max_accuracy_drop is not None and split.labels is None:
        raise RecipeError(f"{KEY}.max_accuracy_drop needs labels, but dataset kind "
                          f"'{dataset_kind}' gives none; use {KEY}.min_agreement (top-1 "
                          "agreement with FP32) or a labelled dataset.")
    count = budget.samples or len(split.feeds)
    feeds = split.feeds[:count]
    if not feeds:
        raise RecipeError(f"{KEY}: the dataset's evaluation split is empty; the budget needs "
                          "held-out samples (dataset.evaluation_size).")
    labels = None if split.labels is None else split.labels[:len(feeds)]
    return Heldout(feeds, labels, _outputs(_session(fp32), feeds), fp32)


def evaluate(quantizer: Quantizer, name: str, settings: dict[str, Any],
             data: Heldout, budget: Any) -> Trial:
    """Build ``settings`` in a directory of its own and score it on the held-out samples."""
    directory = quantizer.scratch("trial")
    quantizer.build(settings, directory)
    outputs = _outputs(_session(directory), data.feeds)
    agreement = metrics.agreement(outputs, data.reference)
    scores: dict[str, float | None] = {
        "agreement": agreement["top1_agreement"],
        "min_sample_cosine": agreement["min_sample_cosine"],
        **metrics.accuracy(outputs, data.reference, data.labels)}
    return Trial(name, settings, directory, scores, _within(scores, budget),
                 onnx_files.model_size(directory))


def _within(scores: dict[str, float | None], budget: Any) -> bool:
    return _shortfall(scores, budget) <= 1e-12


def _shortfall(scores: dict[str, float | None], budget: Any) -> float:
    """How far outside the budget a model is (<= 0 inside); the best of several fails least."""
    gaps = []
    if budget.max_accuracy_drop is not None:
        gaps.append(scores["accuracy_drop"] - budget.max_accuracy_drop)
    if budget.min_agreement is not None:
        gaps.append(budget.min_agreement - scores["agreement"])
    if budget.get("min_sample_cosine") is not None:
        gaps.append(budget.min_sample_cosine - scores["min_sample_cosine"])
    return max(gaps, default=0.0)


def least_short(trials: list[Trial], budget: Any) -> Trial:
    return min(trials, key=lambda t: _shortfall(t.scores, budget))


def repair(quantizer: Quantizer, first: Trial, data: Heldout, budget: Any,
           calibration: list[Feed]) -> tuple[Trial, dict[str, Any]]:
    """Keep the most sensitive nodes of ``first`` in float until the budget is met.

    Nodes are added greedily in sensitivity order, each step re-quantized and re-scored; once
    the budget is met, groups that the last one made unnecessary are dropped again.

    Returns:
        The trial within budget and a report: the sensitivity ranking and every step tried.

    Raises:
        GateError: no set of at most ``max_float_nodes`` float nodes meets the budget.
    """
    if first.settings["mode"] != "static":
        raise GateError(f"{_missed(first, budget)} Keeping nodes in float needs quantize.mode="
                        f"static; mode={first.settings['mode']} cannot be repaired.")
    ranking = _ranking(quantizer, first.settings, calibration[:budget.sensitivity_samples])
    steps = _Steps(quantizer, first, data, budget)
    kept: list[sensitivity.Unit] = []
    for unit in ranking:
        if sum(len(u.nodes) for u in kept) + len(unit.nodes) > budget.max_float_nodes:
            continue  # a smaller group further down may still fit
        kept.append(unit)
        trial = steps.with_float(kept)
        if trial.within:
            trial = steps.prune(kept, trial)
            return trial, {"ranking": [u.as_dict() for u in ranking], "steps": steps.rows}
    raise GateError(_failure(first, least_short(steps.trials, budget), ranking, budget))


def _ranking(quantizer: Quantizer, settings: dict[str, Any],
             feeds: list[Feed]) -> list[sensitivity.Unit]:
    # the QDQ debugging tools read QDQ graphs; a QOperator model is ranked through its QDQ twin,
    # which carries the same ranges and hence the same noise
    twin = {**settings, "format": "qdq"}
    directory = quantizer.scratch("sensitivity")
    quantizer.build(twin, directory)
    prepared = quantizer.prepared(settings["pre_process"])
    return sensitivity.rank(prepared, onnx_files.model_file(directory), feeds,
                            skip=frozenset(settings["nodes_to_exclude"]))


@dataclass
class _Steps:
    """Re-quantizations of ``first`` with more nodes in float, each scored and recorded."""

    quantizer: Quantizer
    first: Trial
    data: Heldout
    budget: Any
    trials: list[Trial] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.trials.append(self.first)

    def with_float(self, units: list[sensitivity.Unit]) -> Trial:
        chosen = {n for u in units for n in u.nodes}
        own = set(self.first.settings["nodes_to_exclude"])
        names = self.quantizer.node_names(self.first.settings["pre_process"])
        settings = {**self.first.settings,
                    "nodes_to_exclude": [n for n in names if n in chosen or n in own]}
        trial = evaluate(self.quantizer, self.first.name, settings, self.data, self.budget)
        trial.float_nodes = [n for n in names if n in chosen]
        self.trials.append(trial)
        self.rows.append({"float_nodes": trial.float_nodes, **trial.scores,
                          "within": trial.within, "size_bytes": trial.size})
        return trial

    def prune(self, kept: list[sensitivity.Unit], trial: Trial) -> Trial:
        """Drop float groups the last one made unnecessary, least sensitive first."""
        for unit in reversed(kept[:-1]):
            fewer = [u for u in kept if u is not unit]
            candidate = self.with_float(fewer)
            if candidate.within:
                kept, trial = fewer, candidate
        return trial


def latency_p50(directories: list[Path], feed: Feed, budget: Any) -> list[float]:
    """Median batch-1 CPU latency in ms of each model, timed in interleaved rounds so that a
    burst of load on this shared machine hits every model alike. Timings vary by run, so they
    go only into the stage's returned summary, never into its output files."""
    sessions = [_session(d) for d in directories]
    feeds = [cast_feed(s, feed) for s in sessions]
    for session, inputs in zip(sessions, feeds, strict=True):
        for _ in range(budget.warmup_runs):
            session.run(None, inputs)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(max(budget.latency_runs, 1)):
        for session, inputs, runs in zip(sessions, feeds, times, strict=True):
            start = time.perf_counter()
            session.run(None, inputs)
            runs.append((time.perf_counter() - start) * 1000.0)
    return [round(float(np.median(runs)), 4) for runs in times]


def _outputs(session: Any, feeds: list[Feed]) -> np.ndarray:
    """First output of every sample (samples along the first axis), as float64.

    Models with a dynamic batch dimension run BATCH samples at a time: on resnet18 one sample
    at a time made each scoring of 128 samples take 13 s.
    """
    name = session.get_outputs()[0].name
    dynamic = all(not isinstance(i.shape[0], int) for i in session.get_inputs() if i.shape)
    size = BATCH if dynamic else 1
    runs = []
    for start in range(0, len(feeds), size):
        chunk = feeds[start:start + size]
        # samples of different shapes (token sequences) run one by one
        alike = all(len({f[k].shape for f in chunk}) == 1 for k in chunk[0])
        for part in [chunk] if alike else [[f] for f in chunk]:
            batch = {k: np.concatenate([f[k] for f in part]) for k in part[0]}
            runs.append(session.run([name], cast_feed(session, batch))[0])
    return np.concatenate(runs).astype(np.float64)


def _session(directory: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_files.model_file(directory)), providers=CPU)


def describe(scores: dict[str, float | None]) -> str:
    parts = [f"top-1 agreement {scores['agreement']:.4f}"]
    if scores.get("min_sample_cosine") is not None:
        parts.append(f"lowest sample cosine {scores['min_sample_cosine']:.4f}")
    if scores.get("accuracy_drop") is not None:
        parts.insert(0, f"accuracy {scores['accuracy_candidate']:.4f} vs FP32 "
                        f"{scores['accuracy_fp32']:.4f} (drop {scores['accuracy_drop']:.4f})")
    return ", ".join(parts)


def limits(budget: Any) -> str:
    return " and ".join(f"{KEY}.{k}={budget[k]}" for k in CRITERIA if budget[k] is not None)


def _missed(trial: Trial, budget: Any) -> str:
    which = "the recipe's settings" if trial.name == "recipe" else f"'{trial.name}'"
    return (f"quantize: the model quantized with {which} misses the accuracy budget "
            f"({limits(budget)}): {describe(trial.scores)}.")


def _failure(first: Trial, best: Trial, ranking: list[sensitivity.Unit], budget: Any) -> str:
    nodes = sum(len(u.nodes) for u in ranking)
    why = (f"the {len(ranking)} sensitive node groups ({nodes} nodes) allowed no better"
           if nodes <= budget.max_float_nodes else
           f"{KEY}.max_float_nodes={budget.max_float_nodes} stopped the search short of the "
           f"{nodes} nodes that add quantization noise")
    return (f"{_missed(first, budget)} Keeping the most sensitive nodes in float did not meet "
            f"it either: the best model found kept {best.float_nodes or 'no nodes'} in float "
            f"with {describe(best.scores)}; {why}. Loosen the budget, raise max_float_nodes or "
            "change the settings (calibration.method, per_channel, activation_type); no model "
            "over budget is shipped.")
