"""Per-node quantization sensitivity from onnxruntime's QDQ debugging tools.

Both the FP32 graph and its QDQ model are run with every intermediate tensor exposed
(``qdq_loss_debug``); the QDQ model's dequantized activations are matched to the FP32 ones by
tensor name and compared as a signal-to-quantization-noise ratio. A node's sensitivity is the
noise it adds: the relative noise power of its output minus the largest of its inputs' (the
noise it was handed). Noise arriving from upstream is thus not blamed on the node it passes
through, and the nodes that create it rank first.

Nodes are ranked in "units": the quantizer fuses a Conv or Gemm with a following Relu (the Relu
disappears, and with it the Conv's own output tensor), so a node whose output has no match is
scored and kept in float together with its single consumer.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.common import onnx_files
from stages.quantize.ptq import feed_reader

if TYPE_CHECKING:
    from stages.common.datasets.splits import Feed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Unit:
    nodes: tuple[str, ...]  # graph order; kept in float together
    added_noise: float  # relative noise power the unit adds (output minus worst input)
    output_sqnr_db: float  # its output, FP32 vs quantized model
    weight_sqnr_db: float | None  # its worst quantized weight, FP32 vs dequantized

    def as_dict(self) -> dict[str, Any]:
        return {"nodes": list(self.nodes), "added_noise": round(self.added_noise, 6),
                "output_sqnr_db": round(self.output_sqnr_db, 3),
                "weight_sqnr_db": None if self.weight_sqnr_db is None
                else round(self.weight_sqnr_db, 3)}


def rank(float_model: Path, qdq_model: Path, feeds: list[Feed],
         skip: frozenset[str] = frozenset()) -> list[Unit]:
    """Units that add quantization noise, most sensitive first; nodes in ``skip`` left out."""
    from onnxruntime.quantization import qdq_loss_debug as debug

    activations = {}
    with tempfile.TemporaryDirectory(prefix="edgekiln-sensitivity-") as tmp:
        for label, model in (("float", float_model), ("qdq", qdq_model)):
            augmented = str(Path(tmp) / f"{label}.onnx")
            debug.modify_model_output_intermediate_tensors(
                str(model), augmented, save_as_external_data=_is_large(model))
            activations[label] = debug.collect_activations(augmented, feed_reader(feeds))
    matching = debug.create_activation_matching(activations["qdq"], activations["float"])
    sqnr = {name: errors["xmodel_err"]
            for name, errors in debug.compute_activation_error(matching).items()
            if "xmodel_err" in errors}
    weights = _weight_errors(debug, float_model, qdq_model)
    graph = onnx_files.load_model(float_model).graph
    units = [_score(chain, sqnr, weights, _producers(graph)) for chain in _chains(graph, sqnr)]
    ranked = [u for u in units if u is not None and u.added_noise > 0
              and not skip.intersection(u.nodes)]
    # ties (equal noise, as in a chain of pass-through ops) break on the worse weights, then name
    return sorted(ranked, key=lambda u: (-u.added_noise, u.weight_sqnr_db or 1e9, u.nodes))


def _weight_errors(debug: Any, float_model: Path, qdq_model: Path) -> dict[str, float]:
    """SQNR of each quantized weight, one at a time: onnxruntime's own loop crashes on a 0-d
    weight (a scalar Mul operand dequantizes to a numpy scalar, which has no len()), and a
    weight it cannot score only loses its tie-break, so it is skipped with a note."""
    import numpy as np

    errors = {}
    for name, pair in debug.create_weight_matching(str(float_model), str(qdq_model)).items():
        try:
            errors[name] = float(debug.compute_signal_to_quantization_noice_ratio(
                np.atleast_1d(pair["float"]), np.atleast_1d(pair["dequantized"])))
        except (TypeError, ValueError, ArithmeticError) as exc:
            log.warning("sensitivity: onnxruntime could not score weight %s (%s); ranking "
                        "without it", name, exc)
    return errors


def _chains(graph: Any, matched: dict[str, float]) -> list[list[Any]]:
    """Nodes grouped so that each group ends in a tensor the QDQ model also has."""
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    claimed: set[str] = set()
    chains = []
    for node in graph.node:
        if node.name in claimed:
            continue
        chain = [node]
        while True:
            produced = [o for o in chain[-1].output if o]
            if len(produced) != 1 or produced[0] in matched or produced[0] in outputs:
                break
            nxt = consumers.get(produced[0], [])
            if len(nxt) != 1 or nxt[0].name in claimed:
                break
            chain.append(nxt[0])
        claimed.update(n.name for n in chain)
        chains.append(chain)
    return chains


def _score(chain: list[Any], sqnr: dict[str, float], weights: dict[str, float],
           producers: dict[str, str]) -> Unit | None:
    output = next((o for o in chain[-1].output if o), "")
    if output not in sqnr:
        return None  # not quantized: keeping it in float gains nothing
    inside = {o for node in chain for o in node.output}
    # inputs with no producer are graph inputs or initializers: they arrive exact, so the noise
    # of quantizing them belongs to this unit
    arriving = [_noise(sqnr[name]) for node in chain for name in node.input
                if name in sqnr and name in producers and name not in inside]
    quantized = [weights[name] for node in chain for name in node.input if name in weights]
    return Unit(nodes=tuple(n.name for n in chain),
                added_noise=_noise(sqnr[output]) - max(arriving, default=0.0),
                output_sqnr_db=float(sqnr[output]),
                weight_sqnr_db=float(min(quantized)) if quantized else None)


def _noise(sqnr_db: float) -> float:
    """Noise power relative to the signal's, from an SQNR in dB."""
    return float(10.0 ** (-sqnr_db / 10.0))


def _producers(graph: Any) -> dict[str, str]:
    return {o: node.name for node in graph.node for o in node.output if o}


def _is_large(model: Path) -> bool:
    return bool(onnx_files.external_data_files(model))
