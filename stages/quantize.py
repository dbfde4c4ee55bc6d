"""Stage ``quantize``: per-target precision reduction (dynamic/static INT8 or FP16).

Static quantization calibrates activation ranges on the recipe's dataset; the samples come in
a fixed order from a seeded split, so the same recipe yields the same model bytes.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError
from stages.base import stage
from stages.optimize import model_stats
from stages.support import onnx_files

if TYPE_CHECKING:
    from stages.base import StageContext
    from stages.support.datasets import Feed

log = logging.getLogger(__name__)

FORMATS = {"qdq": "QDQ", "qoperator": "QOperator"}
TYPES = {"uint8": "QUInt8", "int8": "QInt8"}
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile",
           "distribution": "Distribution"}


@stage("quantize", inputs={"model": "optimize"}, reads=("quantize", "dataset", "model.inputs"),
       per_target=True, tools=("onnx", "onnxruntime", "scikit-learn", "numpy"),
       sources=("dataset.path",))
def quantize(ctx: StageContext) -> dict[str, Any]:
    """Quantize the model of ``ctx.inputs["model"]`` at ``quantize.mode``.

    Returns:
        Mode and settings, sizes and node counts before/after, quantization op counts and,
        for static mode, the calibration sample count and seconds.
    """
    cfg = ctx.config.quantize
    source = ctx.inputs["model"]
    settings = _settings(cfg)
    calibration: dict[str, Any] = {}
    if cfg.mode == "none":
        onnx_files.copy_model(source, ctx.out)
    elif cfg.mode == "fp16":
        _to_fp16(source, ctx.out)
    elif cfg.mode == "dynamic":
        _run_ort(source, ctx.out, settings, None)
    else:
        feeds = _calibration_feeds(ctx)  # first, so a bad dataset fails before slow work
        ctx.report(f"calibrating on {len(feeds)} samples ({cfg.calibration.method})")
        seconds = _run_ort(source, ctx.out, settings, feeds)
        calibration = {"calibration_samples": len(feeds), "calibration_seconds": round(seconds, 3)}
    summary = {"mode": cfg.mode, **settings, **calibration, **_compare(source, ctx.out)}
    # timings stay out of the file: the output's bytes, and so its digest, must not vary by run
    written = {k: v for k, v in summary.items() if k != "calibration_seconds"}
    (ctx.out / "quantize.json").write_text(json.dumps(written, indent=2, sort_keys=True) + "\n")
    return summary


def _settings(cfg: Any) -> dict[str, Any]:
    """The knobs that shaped the output for this mode, checked against what ORT supports."""
    if cfg.mode in ("none", "fp16"):
        return {}
    if cfg.mode == "dynamic":
        # activations are always uint8 here: DynamicQuantizeLinear only produces uint8
        return {"weight_type": cfg.weight_type, "per_channel": bool(cfg.per_channel),
                "reduce_range": bool(cfg.reduce_range)}
    if cfg.activation_type == "int8" and cfg.weight_type == "uint8":
        raise RecipeError("quantize: activation_type=int8 with weight_type=uint8 has no ONNX "
                          "Runtime kernels; use uint8/int8 (fastest on x86 VNNI), int8/int8 "
                          "or uint8/uint8.")
    if cfg.calibration.method == "distribution":
        log.warning("quantize.calibration.method=distribution is meant for float8 types; "
                    "with int8 it gave 100x the error of minmax on a small CNN")
    return {"format": cfg.format, "activation_type": cfg.activation_type,
            "weight_type": cfg.weight_type, "per_channel": bool(cfg.per_channel),
            "reduce_range": bool(cfg.reduce_range), "calibration_method": cfg.calibration.method,
            "activation_symmetric": bool(cfg.activation_symmetric),
            "weight_symmetric": bool(cfg.weight_symmetric)}


def _calibration_feeds(ctx: StageContext) -> list[Feed]:
    """The first ``calibration.samples`` feeds of the dataset's calibration split."""
    from stages.support.datasets import load_dataset

    wanted = ctx.config.quantize.calibration.samples
    feeds = load_dataset(ctx.config.dataset, ctx.config.model.inputs).calibration.feeds[:wanted]
    if not feeds:
        raise RecipeError("quantize: static mode needs calibration samples; the dataset's "
                          "calibration split is empty or quantize.calibration.samples is 0.")
    if len(feeds) < wanted:
        log.warning("quantize: calibrating on %d samples, the dataset's calibration split "
                    "holds no more (calibration.samples=%d)", len(feeds), wanted)
    return feeds


def _run_ort(source: Path, out: Path, settings: dict[str, Any], feeds: list[Feed] | None) -> float:
    """Quantize with ORT into ``out``, static when ``feeds`` are given, else dynamic.

    Returns:
        Seconds ORT spent calibrating and quantizing.
    """
    import onnxruntime.quantization as ortq

    common = {"per_channel": settings["per_channel"], "reduce_range": settings["reduce_range"],
              "weight_type": getattr(ortq.QuantType, TYPES[settings["weight_type"]]),
              "use_external_data_format": _is_large(source)}
    with tempfile.TemporaryDirectory(prefix="edgekiln-quantize-") as tmp:
        prepared = str(_pre_process(source, Path(tmp) / "prepared"))
        target = Path(tmp) / onnx_files.MODEL_FILE
        started = time.perf_counter()
        if feeds is None:
            ortq.quantize_dynamic(prepared, str(target), **common)
        else:
            ortq.quantize_static(
                prepared, str(target), _reader(feeds),
                quant_format=getattr(ortq.QuantFormat, FORMATS[settings["format"]]),
                activation_type=getattr(ortq.QuantType, TYPES[settings["activation_type"]]),
                calibrate_method=getattr(ortq.CalibrationMethod,
                                         METHODS[settings["calibration_method"]]),
                extra_options={"ActivationSymmetric": settings["activation_symmetric"],
                               "WeightSymmetric": settings["weight_symmetric"]},
                **common)
        seconds = time.perf_counter() - started
        # ORT names external data after its own file and keeps it even for a now-small model
        onnx_files.save_model(onnx_files.load_model(target), out)
    return seconds


def _pre_process(source: Path, directory: Path) -> Path:
    """ORT's quantization pre-processing: shape inference plus a basic-level ORT pass.

    The quantizer leaves tensors of unknown shape in float; the pass fuses Conv+BN/Add/Mul. After
    optimize (basic + shape inference) it changed nothing on resnet18 (+0.16 s), but it covers
    optimize.level=none or shape_inference=false, and symbolic inference helps transformers.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    directory.mkdir()
    target = onnx_files.model_file(directory)
    contrib = sorted(op for op in model_stats(source)["ops"] if ":" in op)
    if contrib:  # measured: resnet18 after level=extended keeps 9 FusedConv in float
        log.warning("quantize: the quantizer leaves contrib ops %s in float; optimize.level="
                    "basic keeps them plain, quantizable ops", ", ".join(contrib))
    model, options = str(onnx_files.model_file(source)), {
        "save_as_external_data": _is_large(source), "all_tensors_to_one_file": True,
        "external_data_location": onnx_files.WEIGHTS_FILE}
    try:  # symbolic shape inference gives up on contrib ops; ONNX's then runs alone
        quant_pre_process(model, str(target), skip_symbolic_shape=bool(contrib), **options)
    except Exception as error:  # it raises a bare Exception for any op it cannot follow
        log.warning("quantize: symbolic shape inference failed (%s); using ONNX's alone", error)
        quant_pre_process(model, str(target), skip_symbolic_shape=True, **options)
    return target


def _to_fp16(source: Path, out: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx_files.load_model(onnx_files.model_file(source))
    # float32 inputs and outputs keep the bundle's interface the same at every precision
    onnx_files.save_model(convert_float_to_float16(model, keep_io_types=True), out)


def _reader(feeds: list[Feed]) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = iter(feeds)

        def get_next(self) -> Feed | None:
            return next(self._next, None)

    return FeedReader()


def _compare(source: Path, out: Path) -> dict[str, Any]:
    """Size and node counts before/after, and how many quantization ops the output holds."""
    before, after = model_stats(source), model_stats(out)
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0, "QLinear*": 0, "integer": 0}
    for op, count in after["ops"].items():
        name = op.rsplit(":", 1)[-1]
        if name in ("QuantizeLinear", "DequantizeLinear"):
            counts[name] += count
        elif name.startswith("QLinear"):
            counts["QLinear*"] += count
        elif "Integer" in name or name.startswith(("DynamicQuantize", "QGemm", "QAttention")):
            counts["integer"] += count
    return {"size_before": before["size"], "size_after": after["size"],
            "size_ratio": round(after["size"] / before["size"], 4),
            "nodes_before": before["nodes"], "nodes_after": after["nodes"],
            "quant_ops": counts}


def _is_large(directory: Path) -> bool:
    return bool(onnx_files.external_data_files(onnx_files.model_file(directory)))

