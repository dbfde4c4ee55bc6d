"""``quantize.mode: int4``: MatMul weights to 4 bits, block-wise, with onnxruntime's quantizer.

Each MatMul with a constant 2-D weight becomes a ``com.microsoft`` MatMulNBits node holding
4-bit weights with one scale (and zero point) per ``int4.block_size`` weights along K; the CPU
EP runs it. Activations stay float: ``int4.then_int8: dynamic`` then gives the weights INT4
left float (MatMuls in ``int4.nodes_to_exclude``, Gather embedding tables, Gemm) onnxruntime's
dynamic INT8 (``ptq.Quantizer`` chains the two); as in ``mode: dynamic``, MatMuls of two
activations (attention's scores) stay float. Algorithms: ``rtn`` (round
to nearest, onnxruntime's C++ kernel), ``hqq`` (half-quadratic fit of scales and float zero
points, in torch, no data) and ``gptq`` (rounding fitted to the calibration split's
activations).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import warnings
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError, StageError
from stages.common import onnx_files

if TYPE_CHECKING:
    from pathlib import Path

    from stages.common.datasets.splits import Feed

log = logging.getLogger(__name__)
NBITS = "MatMulNBits"
LEVELS = range(5)  # MatMulNBits' accuracy_level: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8


def settings(cfg: Any, key: str) -> dict[str, Any]:
    """The int4 knobs of quantize section ``cfg`` (at recipe path ``key``), checked."""
    int4 = cfg.int4
    block = int(int4.block_size)
    if block < 16 or block & (block - 1):
        raise RecipeError(f"{key}.int4.block_size: expected a power of two of at least 16 "
                          f"(MatMulNBits' kernels), got {block}.")
    level = int4.accuracy_level
    if level is not None and level not in LEVELS:
        raise RecipeError(f"{key}.int4.accuracy_level: expected 0-4 (1 fp32, 2 fp16, 3 bf16, "
                          f"4 int8) or null, got {level}.")
    hqq = int4.algorithm == "hqq"
    if hqq and importlib.util.find_spec("torch") is None:
        raise RecipeError(f"{key}.int4.algorithm=hqq: onnxruntime's HQQ runs in torch, which "
                          "is not installed (pip install -e '.[torch]'); rtn and gptq need "
                          "only onnxruntime.")
    if hqq and int4.symmetric:
        raise RecipeError(f"{key}.int4.symmetric: algorithm hqq fits float zero points per "
                          "block (asymmetric only); set symmetric: false or use rtn or gptq.")
    chosen = {"algorithm": int4.algorithm, "block_size": block, "symmetric": bool(int4.symmetric),
              # onnxruntime's HQQ writes no accuracy_level (set by hand, it changed nothing)
              "accuracy_level": None if hqq or not level else int(level),
              "nodes_to_exclude": list(int4.nodes_to_exclude), "then_int8": int4.then_int8}
    if int4.algorithm == "gptq":
        chosen["calibration_samples"] = int(cfg.calibration.samples)
    return chosen


def quantize_weights(source: Path, chosen: dict[str, Any], exclude: list[str],
                     feeds: list[Feed] | None, target: Path) -> None:
    """Write ``source`` with its MatMul weights in INT4 (``chosen`` = settings' dict) to file
    ``target``; nodes named in ``exclude`` stay float."""
    quantizers = _quantizers()
    model = onnx_files.load_model(source)
    gemms_as_matmuls(model)
    if chosen["algorithm"] == "gptq":
        quantized = _gptq(model, chosen, exclude, feeds)
    else:
        config = (quantizers.HQQWeightOnlyQuantConfig(block_size=chosen["block_size"])
                  if chosen["algorithm"] == "hqq" else quantizers.DefaultWeightOnlyQuantConfig(
                      block_size=chosen["block_size"], is_symmetric=chosen["symmetric"],
                      accuracy_level=chosen["accuracy_level"]))
        quantizer = quantizers.MatMulNBitsQuantizer(model, nodes_to_exclude=exclude,
                                                    algo_config=config)
        with warnings.catch_warnings():  # HQQ hands torch read-only arrays it only reads
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            quantizer.process()
        quantized = quantizer.model.model
    onnx_files.save_model(quantized, target.parent)


def gemms_as_matmuls(model: Any) -> int:
    """Rewrite, in place, each Gemm of a constant weight as MatMul (+ Add of its bias); returns
    how many. onnxruntime's quantizer takes MatMul only, and exporters write linear layers of
    2-D inputs as Gemm (GPT-2's Conv1D layers: 8 of its 9 weights in a 2-layer model). The
    MatMul keeps the Gemm's name, so nodes_to_exclude still names it."""
    from onnx import helper, numpy_helper

    weights = {init.name: init for init in model.graph.initializer}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get(
            "transA", 0)
        if node.op_type != "Gemm" or not plain or node.input[1] not in weights:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            transposed = numpy_helper.from_array(
                numpy_helper.to_array(weights[weight]).T.copy(), f"{weight}_transposed")
            model.graph.initializer.append(transposed)
            weight = transposed.name
        biased = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if biased else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [product],
                                      name=node.name))
        if biased:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]],
                                          name=f"{node.name}_bias"))
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def _gptq(model: Any, chosen: dict[str, Any], exclude: list[str],
          feeds: list[Feed] | None) -> Any:
    """GPTQ through onnxruntime's ``gptq_quantize`` with the weight config
    MatMulNBitsQuantizer would give it, plus the exclusions: MatMulNBitsQuantizer (1.32) passes
    ``nodes_to_exclude`` to RTN only, so under GPTQ excluded MatMuls were quantized anyway."""
    from onnxruntime.quantization.neural_compressor import gptq_quantize

    from stages.quantize.ptq import feed_reader

    samples = (feeds or [])[:chosen["calibration_samples"]]
    if not samples:
        raise StageError("quantize: int4.algorithm=gptq fits the weights to calibration "
                         "activations, but the dataset's calibration split is empty.")
    scheme = "sym" if chosen["symmetric"] else "asym"
    weights = {init.name for init in model.graph.initializer}
    config: dict[str, Any] = {
        node.name: {"bits": 4, "group_size": chosen["block_size"], "scheme": scheme}
        for node in model.graph.node if node.op_type == "MatMul" and node.input[1] in weights}
    config |= dict.fromkeys(exclude, "fp32")
    reader = feed_reader(samples)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it draws a progress bar on stdout
            quantized = gptq_quantize(model, ((feed, None) for feed in reader),
                                      weight_config=config, n_samples=-1,
                                      accuracy_level=chosen["accuracy_level"] or 0)
    except Exception as error:  # its failures are asserts and numpy errors, not one type
        raise StageError(f"quantize: onnxruntime's GPTQ failed on this model ({error!r}); "
                         "int4.algorithm rtn or hqq need no calibration.") from error
    return quantized.model


def figures(source: Path, quantized: Path) -> dict[str, Any]:
    """What INT4 did: MatMulNBits nodes, MatMuls left float, initializer bytes before/after."""
    import onnx

    before, after = (onnx.load(str(onnx_files.model_file(d)), load_external_data=False)
                     for d in (source, quantized))
    nodes = list(after.graph.node)
    constants = {init.name for init in after.graph.initializer}
    weights = {"before": _initializer_bytes(source, before),
               "after": _initializer_bytes(quantized, after)}
    return {"matmul_nbits_nodes": sum(n.op_type == NBITS for n in nodes),
            "float_matmuls": sum(n.op_type == "MatMul" for n in nodes),
            # of those, the ones with a constant weight (the rest multiply two activations)
            "float_weight_matmuls": sum(n.op_type == "MatMul" and n.input[1] in constants
                                        for n in nodes),
            "weight_bytes": weights | {"ratio": round(weights["after"] / weights["before"], 4)}}


def _initializer_bytes(directory: Path, model: Any) -> int:
    """Bytes of the initializers' data, in the file or as external data."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    onnx_files.external_data_files(onnx_files.model_file(directory))  # refuses stray paths
    total = 0
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            total += int(ExternalDataInfo(tensor).length or 0)
        else:
            total += len(tensor.raw_data) or tensor.ByteSize()
    return total


def _quantizers() -> Any:
    """onnxruntime's matmul_nbits_quantizer module, imported without its logging set-up.

    At import it calls ``logging.basicConfig(level=INFO)``, which on a process without log
    handlers would print every node it quantizes, and every INFO line of ours, to stderr; a
    root handler present at that moment makes the call a no-op.
    """
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)
    try:
        from onnxruntime.quantization import matmul_nbits_quantizer
    finally:
        root.removeHandler(guard)
    return matmul_nbits_quantizer
