"""onnxruntime post-training quantization driven by the recipe's ``quantize`` section.

``settings`` turns a quantize section into the plain dict of knobs that shape the output (it
is what quantize.json records) and refuses combinations onnxruntime cannot build or run.
``Quantizer`` builds models from such dicts. It runs the pre-processing once per model and
calibrates once per distinct calibration through ORT's calibration cache: nodes_to_exclude and
the quantized types do not change the measured ranges, so the accuracy-aware loop and the
search re-quantize without re-running the calibration data.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import json
import logging
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError, StageError, did_you_mean
from stages.common import onnx_files
from stages.common.onnx_files import model_stats

if TYPE_CHECKING:
    from stages.common.datasets.splits import Feed

log = logging.getLogger(__name__)
PRE_PROCESSED_WEIGHTS = "edgekiln-preprocessed.onnx.data"

FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}
TYPES = {"uint8": "QUInt8", "int8": "QInt8", "uint16": "QUInt16", "int16": "QInt16"}
SIXTEEN_BIT = ("uint16", "int16")
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile",
           "distribution": "Distribution"}


def settings(cfg: Any, key: str = "quantize") -> dict[str, Any]:
    """The knobs that shape the output at ``cfg.mode``, checked against what ORT supports.

    ``key`` is the recipe path of ``cfg`` for error messages (a search candidate has its own).
    """
    mode = cfg.mode
    if mode in ("none", "fp16"):
        return {"mode": mode}
    common = {"mode": mode, "weight_type": cfg.weight_type, "per_channel": bool(cfg.per_channel),
              "reduce_range": bool(cfg.reduce_range),
              "weight_symmetric": bool(cfg.weight_symmetric),
              "op_types_to_quantize": _op_types(cfg, key),
              "nodes_to_exclude": list(cfg.nodes_to_exclude),
              "pre_process": bool(cfg.pre_process)}
    if mode == "int4":
        from stages.quantize import int4

        chosen = int4.settings(cfg, key)
        dynamic = _dynamic_knobs(cfg, key, common) if chosen["then_int8"] == "dynamic" else {}
        return {"mode": mode, "int4": chosen, "nodes_to_exclude": common["nodes_to_exclude"],
                "pre_process": common["pre_process"], **dynamic}
    if mode == "dynamic":
        return _dynamic_knobs(cfg, key, common)
    _check_static(cfg, key)
    calibration = {"calibration_method": cfg.calibration.method,
                   "calibration_samples": int(cfg.calibration.samples),
                   "calibration_batch_size": max(1, int(cfg.calibration.batch_size))}
    if cfg.calibration.method == "percentile":
        calibration["calibration_percentile"] = float(cfg.calibration.percentile)
    return {**common, "format": cfg.format, "activation_type": cfg.activation_type,
            "activation_symmetric": bool(cfg.activation_symmetric),
            "minimum_real_range": cfg.minimum_real_range, **calibration}


def _dynamic_knobs(cfg: Any, key: str, common: dict[str, Any]) -> dict[str, Any]:
    # DynamicQuantizeLinear makes uint8 activations, and ConvInteger/MatInteger take 8 bits
    for name in ("activation_type", "weight_type"):
        if cfg[name] in SIXTEEN_BIT:
            raise RecipeError(f"{key}.{name}={cfg[name]}: mode={cfg.mode} quantizes to 8 bits "
                              "only (ORT's integer kernels); use mode=static with "
                              "format=qdq for 16-bit types.")
    return common


def _check_static(cfg: Any, key: str) -> None:
    acts, weights = cfg.activation_type, cfg.weight_type
    if acts == "int8" and weights == "uint8":
        raise RecipeError(f"{key}: activation_type=int8 with weight_type=uint8 has no ONNX "
                          "Runtime kernels; use uint8/int8 (fastest on x86 VNNI), int8/int8 "
                          "or uint8/uint8.")
    if cfg.format == "qoperator" and (acts in SIXTEEN_BIT or weights in SIXTEEN_BIT):
        raise RecipeError(f"{key}.format=qoperator: 16-bit types ({acts} activations, {weights} "
                          "weights) exist only as QuantizeLinear/DequantizeLinear pairs (opset "
                          "21); set format=qdq.")
    percentile = cfg.calibration.percentile
    if cfg.calibration.method == "percentile" and not 0 < percentile <= 100:
        raise RecipeError(f"{key}.calibration.percentile: expected a value in (0, 100], got "
                          f"{percentile}.")
    if cfg.calibration.method == "distribution":
        log.warning("%s.calibration.method=distribution is meant for float8 types; with int8 it "
                    "lost 11.5%% accuracy on the digits CNN where minmax lost none", key)


def _op_types(cfg: Any, key: str) -> list[str]:
    from onnxruntime.quantization.registry import (
        IntegerOpsRegistry,
        QDQRegistry,
        QLinearOpsRegistry,
    )

    wanted = list(cfg.op_types_to_quantize)
    known = set(IntegerOpsRegistry) if cfg.mode in ("dynamic", "int4") else {
        *QLinearOpsRegistry, *QDQRegistry}
    unknown = [op for op in wanted if op not in known]
    if unknown:
        raise RecipeError(f"{key}.op_types_to_quantize: {unknown} cannot be quantized by ORT in "
                          f"mode={cfg.mode}.{did_you_mean(unknown[0], known)} It can quantize "
                          f"{', '.join(sorted(known))}.")
    return sorted(set(wanted))


class Quantizer:
    """Builds quantized models of one source model, sharing pre-processing and calibration."""

    def __init__(self, source: Path, feeds: list[Feed] | None, workdir: Path) -> None:
        self.source = source
        self.feeds = feeds
        self.workdir = workdir
        self.large = bool(onnx_files.external_data_files(onnx_files.model_file(source)))
        self._prepared: dict[bool, Path] = {}
        self._made = 0

    def prepared(self, pre_process: bool) -> Path:
        """The model file ORT quantizes: pre-processed (once) or the source itself."""
        if pre_process not in self._prepared:
            self._prepared[pre_process] = (
                _pre_process(self.source, self.workdir / "prepared") if pre_process
                else onnx_files.model_file(self.source))
        return self._prepared[pre_process]

    def scratch(self, prefix: str) -> Path:
        """A new directory name under the work directory."""
        self._made += 1
        return self.workdir / f"{prefix}-{self._made}"

    def node_names(self, pre_process: bool) -> list[str]:
        return [n.name for n in onnx_files.load_model(self.prepared(pre_process)).graph.node]

    def resolve(self, settings: dict[str, Any], key: str) -> dict[str, Any]:
        """``settings`` with nodes_to_exclude as node names of the graph being quantized."""
        if settings["mode"] in ("none", "fp16"):
            return settings
        names = self.node_names(settings["pre_process"])
        resolved = match_nodes(settings["nodes_to_exclude"], names, f"{key}.nodes_to_exclude")
        if settings["mode"] == "int4":
            kept = match_nodes(settings["int4"]["nodes_to_exclude"], names,
                               f"{key}.int4.nodes_to_exclude")
            settings = {**settings, "int4": {**settings["int4"], "nodes_to_exclude": kept}}
        return {**settings, "nodes_to_exclude": resolved}

    def build(self, settings: dict[str, Any], out: Path) -> float:
        """Quantize into directory ``out`` (created); returns ORT's seconds."""
        out.mkdir(parents=True)
        if settings["mode"] == "none":
            onnx_files.copy_model(self.source, out)
            return 0.0
        if settings["mode"] == "fp16":
            _to_fp16(self.source, out)
            return 0.0
        with tempfile.TemporaryDirectory(prefix="edgekiln-quantize-", dir=self.workdir) as tmp:
            target = Path(tmp) / onnx_files.MODEL_FILE
            started = time.perf_counter()
            if settings["mode"] == "int4":
                self._int4(settings, target)
            else:
                self._run_ort(settings, target)
            seconds = time.perf_counter() - started
            # ORT names external data after its own file and keeps it even for a now-small model
            onnx_files.save_model(onnx_files.load_model(target), out)
        return seconds

    def _int4(self, settings: dict[str, Any], target: Path) -> None:
        """INT4 MatMul weights, then (int4.then_int8) dynamic INT8 of what stayed float."""
        from stages.quantize import int4

        chosen = settings["int4"]
        exclude = sorted({*settings["nodes_to_exclude"], *chosen["nodes_to_exclude"]})
        weights_only = target.parent / "int4" / onnx_files.MODEL_FILE
        int4.quantize_weights(self.prepared(settings["pre_process"]), chosen, exclude,
                              self.feeds, weights_only)
        if chosen["then_int8"] == "none":
            onnx_files.copy_model(weights_only.parent, target.parent)
            return
        # the float MatMuls keep their names, so the top-level exclusions still name them
        self._run_ort({**settings, "mode": "dynamic"}, target, weights_only)

    def _run_ort(self, settings: dict[str, Any], target: Path, source: Path | None = None
                 ) -> None:
        import onnxruntime.quantization as ortq

        common = {"per_channel": settings["per_channel"], "reduce_range": settings["reduce_range"],
                  "weight_type": getattr(ortq.QuantType, TYPES[settings["weight_type"]]),
                  "op_types_to_quantize": settings["op_types_to_quantize"] or None,
                  "nodes_to_exclude": settings["nodes_to_exclude"],
                  "use_external_data_format": self.large or bool(
                      source and onnx_files.external_data_files(source))}
        prepared = str(source or self.prepared(settings["pre_process"]))
        if settings["mode"] == "dynamic":
            ortq.quantize_dynamic(prepared, str(target), **common, extra_options={
                "WeightSymmetric": settings["weight_symmetric"]})
            return
        feeds = (self.feeds or [])[:settings["calibration_samples"]]
        batch = settings["calibration_batch_size"] if _dynamic_batch(Path(prepared)) else 1
        if "calibration_cache_path" in inspect.signature(ortq.quantize_static).parameters:
            common["calibration_cache_path"] = cache = self._calibration_cache(settings)
            reader = None if cache.is_file() else feed_reader(feeds, batch)
        else:  # onnxruntime before the cache: calibrate every time
            reader = feed_reader(feeds, batch)
        with contextlib.redirect_stdout(io.StringIO()) as printed:  # histogram calibrators print
            ortq.quantize_static(
                prepared, str(target), reader,
                quant_format=getattr(ortq.QuantFormat, FORMATS[settings["format"]]),
                activation_type=getattr(ortq.QuantType, TYPES[settings["activation_type"]]),
                calibrate_method=getattr(ortq.CalibrationMethod,
                                         METHODS[settings["calibration_method"]]),
                extra_options=_extra_options(settings), **common)
        log.debug("onnxruntime printed: %s", printed.getvalue())

    def _calibration_cache(self, settings: dict[str, Any]) -> Path:
        """One cache file per set of knobs that change the measured ranges."""
        identity = {k: settings.get(k) for k in (
            "pre_process", "calibration_method", "calibration_percentile", "calibration_samples",
            "calibration_batch_size", "op_types_to_quantize")}
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        return self.workdir / f"calibration-{digest}.json"


def _extra_options(settings: dict[str, Any]) -> dict[str, Any]:
    extra = {"ActivationSymmetric": settings["activation_symmetric"],
             "WeightSymmetric": settings["weight_symmetric"]}
    if "calibration_percentile" in settings:
        extra["CalibPercentile"] = settings["calibration_percentile"]
    if settings["minimum_real_range"] is not None:
        extra["MinimumRealRange"] = float(settings["minimum_real_range"])
    return extra


def match_nodes(patterns: list[str], names: list[str], key: str) -> list[str]:
    """Node names matching any of ``patterns`` (exact names or full-match regexes), in graph
    order; a pattern that matches nothing is a recipe error listing some node names."""
    chosen: set[str] = set()
    for pattern in patterns:
        try:
            regex = re.compile(pattern)
        except re.error as error:
            regex = None
            if pattern not in names:
                raise RecipeError(f"{key}: '{pattern}' is neither a node name nor a valid "
                                  f"regular expression ({error}).") from None
        hits = {n for n in names if n == pattern or (regex and regex.fullmatch(n))}
        if not hits:
            shown = ", ".join(names[:12]) + (f" ... ({len(names)} nodes)" if len(names) > 12
                                              else "")
            raise RecipeError(f"{key}: '{pattern}' matches no node of the model being quantized "
                              f"(names and full-match regular expressions are accepted)."
                              f"{did_you_mean(pattern, names)} Its nodes are: {shown}.")
        chosen |= hits
    return [n for n in names if n in chosen]


def _pre_process(source: Path, directory: Path) -> Path:
    """ORT's quantization pre-processing: shape inference plus a basic-level ORT pass.

    The quantizer leaves tensors of unknown shape in float; the pass fuses Conv+BN/Add/Mul. After
    optimize (basic + shape inference) it changed nothing on resnet18 (+0.16 s), but it covers
    optimize.level=none or shape_inference=false, and symbolic inference helps transformers.
    In this process: a child process of its own cost 2.5-6 s of imports per quantize node.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    directory.mkdir()
    contrib = sorted(op for op in model_stats(source)["ops"] if ":" in op)
    if contrib:  # measured: resnet18 after level=extended keeps 9 FusedConv in float
        log.warning("quantize: the quantizer leaves contrib ops %s in float; optimize.level="
                    "basic keeps them plain, quantizable ops", ", ".join(contrib))
    shapes = directory.parent / f".{directory.name}.shapes"
    try:
        # symbolic shape inference gives up on contrib ops; ONNX's then runs alone
        model = onnx_files.model_file(source) if contrib else _with_symbolic_shapes(source, shapes)
        options: dict[str, Any] = {"skip_symbolic_shape": True}
        if onnx_files.external_data_files(model):
            # a name no user folder holds: onnx refuses to save external data whose file name
            # exists in the working directory (it checks the location against the cwd)
            options |= {"save_as_external_data": True, "all_tensors_to_one_file": True,
                        "external_data_location": PRE_PROCESSED_WEIGHTS}
        quant_pre_process(str(model.resolve()), str(onnx_files.model_file(directory).resolve()),
                          **options)
    except Exception as exc:  # it raises what onnx and onnxruntime raise, bare Exception too
        raise StageError(f"onnxruntime's quantization pre-processing failed: "
                         f"{type(exc).__name__}: {exc}") from exc
    finally:
        shutil.rmtree(shapes, ignore_errors=True)
    if not onnx_files.model_file(directory).is_file():
        raise StageError("onnxruntime's quantization pre-processing wrote no model")
    return onnx_files.model_file(directory)


def _with_symbolic_shapes(source: Path, scratch: Path) -> Path:
    """The model with onnxruntime's symbolic shape inference applied, saved in ``scratch``;
    the source model as it is if the inference gives up.

    This is ``SymbolicShapeInference.infer_shapes``'s own loop without its last step, which on
    giving up saves the model into the working directory (sym_shape_infer_temp.onnx and a
    weights file: 90 MB per run on MiniLM) before raising.
    """
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    inference = SymbolicShapeInference(int_max=2**31 - 1, auto_merge=False,
                                       guess_output_rank=False, verbose=0)
    try:
        inference._preprocess(onnx_files.load_model(onnx_files.model_file(source)))
        complete = False
        while inference.run_:
            complete = inference._infer_impl()
        inference._update_output_from_vi()
    except Exception as exc:  # it raises a bare Exception for any op it cannot follow
        complete, why = False, str(exc)
    else:
        why = "some shapes stay unknown"
    if not complete:
        log.warning("quantize: symbolic shape inference failed (%s); using ONNX's alone", why)
        return onnx_files.model_file(source)
    return onnx_files.save_model(inference.out_mp_, scratch)


def _to_fp16(source: Path, out: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx_files.load_model(onnx_files.model_file(source))
    # float32 inputs and outputs keep the bundle's interface the same at every precision
    onnx_files.save_model(convert_float_to_float16(model, keep_io_types=True), out)


def _dynamic_batch(path: Path) -> bool:
    """Whether every graph input's first axis is dynamic, so samples can run stacked."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    return bool(inputs) and all(
        v.type.tensor_type.shape.dim and not v.type.tensor_type.shape.dim[0].HasField(
            "dim_value") for v in inputs)


def feed_reader(feeds: list[Feed], batch: int = 1) -> Any:
    """ORT's calibration reader over ``feeds``, ``batch`` samples stacked along axis 0 a run."""
    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader

    runs = [feeds[i:i + batch] for i in range(0, len(feeds), batch)]
    stacked: list[Feed] = []
    for run in runs:
        # samples of different lengths along a dynamic dim cannot be stacked: one at a time
        alike = all(len({feed[name].shape for feed in run}) == 1 for name in run[0])
        stacked += [{name: np.concatenate([feed[name] for feed in run]) for name in run[0]}
                    ] if alike and batch > 1 else run

    class FeedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = iter(stacked)

        def get_next(self) -> Feed | None:
            return next(self._next, None)

    return FeedReader()
