"""The work of one edgekiln recipe (one x86 CPU target), glued by hand as an engineer would.

export (+ onnx.checker + parity on 4 random samples) -> shape inference + ORT basic offline
optimization -> quant_pre_process + static QDQ quantization -> validation on the evaluation
split -> bundle (model, manifest with sha256s, tar.gz). Same settings as the recipes:
``python benchmarks/handwritten.py --recipe digits_torch --out /tmp/hw [--exporter torchscript]``
(torch recipes: ``--exporter`` picks torch's exporter as edgekiln's ``export.exporter`` does).
Writes the seconds of each step to ``<out>/timings.json`` so the benchmark can compare them
with edgekiln's stages.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DIGITS = {"kind": "digits", "path": None, "image_size": 8, "channels": 1, "layout": "nchw",
          "mean": 0.0, "std": 1.0, "use_labels": True, "seed": 0, "calibration_size": 256,
          "evaluation_size": 512}
DIGITS_GATES = {"max_accuracy_drop": 0.02, "min_top1_agreement": 0.95}
# the recipes' settings: recipes/recipe/*.yaml with their model/dataset/quantize/target files
RECIPES: dict[str, dict[str, Any]] = {
    "digits_torch": {"framework": "torch", "factory": "recipes.zoo.digits:digits_cnn",
                     "checkpoint": "recipes/zoo/digits_cnn.pt", "input": "pixels",
                     "shape": (1, 8, 8), "dataset": DIGITS, "samples": 256,
                     "gates": DIGITS_GATES},
    "digits_keras": {"framework": "tensorflow", "path": "recipes/zoo/digits_cnn.keras",
                     "input": "pixels", "shape": (8, 8, 1),
                     "dataset": {**DIGITS, "layout": "nhwc"}, "samples": 256,
                     "gates": DIGITS_GATES},
    "resnet_cpu": {"framework": "torch", "factory": "recipes.zoo.resnet:resnet18",
                   "kwargs": {"num_classes": 1000, "seed": 0}, "input": "image",
                   "shape": (3, 224, 224), "samples": 64,
                   "dataset": {**DIGITS, "image_size": 224, "channels": 3, "mean": 0.45,
                               "std": 0.225, "use_labels": False, "calibration_size": 128,
                               "evaluation_size": 128},
                   "gates": {"min_top1_agreement": 0.8, "min_cosine": 0.98}},
}
# gate -> the metric it checks; min_* gates pass at or above, max_* at or below the threshold
GATES = {"max_accuracy_drop": "accuracy_drop", "min_top1_agreement": "top1_agreement",
         "min_cosine": "mean_cosine"}
OPSET, PARITY_SAMPLES, PARITY_BATCH, ATOL, RTOL = 18, 4, 2, 1e-4, 1e-3
CALIBRATION_SAMPLES, WARMUP_RUNS, LATENCY_RUNS = 128, 3, 30


def export_torch(recipe: dict[str, Any], path: Path, exporter: str) -> Any:
    """Build + load the module, export with ``exporter``; returns the eager reference."""
    import torch
    from torch.export import Dim

    module_name, _, attribute = recipe["factory"].partition(":")
    module = getattr(importlib.import_module(module_name), attribute)(**recipe.get("kwargs", {}))
    if "checkpoint" in recipe:
        state = torch.load(recipe["checkpoint"], map_location="cpu", weights_only=True)
        module.load_state_dict(state, strict=True)
    module.eval()
    sample = torch.zeros((PARITY_BATCH, *recipe["shape"]), dtype=torch.float32)
    if exporter == "torchscript":
        torch.onnx.export(module, (sample,), str(path), dynamo=False,
                          input_names=[recipe["input"]], output_names=["logits"],
                          opset_version=OPSET, dynamic_axes={recipe["input"]: {0: "batch"}})
    else:
        program = torch.onnx.export(module, (sample,), dynamo=True,
                                    input_names=[recipe["input"]], output_names=["logits"],
                                    opset_version=OPSET, dynamic_shapes=({0: Dim("batch")},))
        program.save(str(path))

    def reference(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return reference


def export_keras(recipe: dict[str, Any], path: Path, exporter: str) -> Any:
    """Load the .keras file and convert a tf.function with an input signature via tf2onnx."""
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx

    if exporter != "dynamo":
        raise SystemExit(f"--exporter {exporter}: torch recipes only; Keras goes through tf2onnx")
    model = keras.models.load_model(recipe["path"], compile=False)
    spec = [tf.TensorSpec([None, *recipe["shape"]], tf.float32, name=recipe["input"])]
    function = tf.function(lambda x: model(x, training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=OPSET)
    onnx.save(proto, str(path))
    return lambda x: function(x).numpy()


def parity(path: Path, reference: Any, recipe: dict[str, Any]) -> float:
    """Max abs diff of onnxruntime vs the framework on seeded random samples (fails if over)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(PARITY_SAMPLES):
        x = rng.uniform(0.0, 1.0, size=(PARITY_BATCH, *recipe["shape"])).astype(np.float32)
        got, want = session.run(None, {recipe["input"]: x})[0], reference(x)
        if not np.allclose(got, want, atol=ATOL, rtol=RTOL):
            raise SystemExit(f"parity failed: max abs diff {np.abs(got - want).max():.3g}")
        worst = max(worst, float(np.abs(got - want).max()))
    return worst


def optimize(source: Path, target: Path) -> None:
    """Shape inference, then ORT's offline basic-level graph optimization into ``target``."""
    import onnx
    import onnxruntime as ort

    inferred = target.with_name("inferred.onnx")
    onnx.shape_inference.infer_shapes_path(str(source), str(inferred), data_prop=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(inferred), options, providers=["CPUExecutionProvider"])


def quantize(source: Path, target: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    """quant_pre_process, then static QDQ: per-channel, uint8 activations, int8 weights."""
    from onnxruntime import quantization as q
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared))

    class Reader(q.CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    q.quantize_static(str(prepared), str(target), Reader(), quant_format=q.QuantFormat.QDQ,
                      per_channel=True, reduce_range=False, activation_type=q.QuantType.QUInt8,
                      weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax,
                      extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def latency(session: Any, feed: dict[str, np.ndarray]) -> dict[str, float]:
    for _ in range(WARMUP_RUNS):
        session.run(None, feed)
    times = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"p50": float(np.percentile(times, 50)), "p90": float(np.percentile(times, 90))}


def validate(candidate: Path, reference: Path, split: Any, recipe: dict[str, Any]) -> dict:
    """Top-1 agreement, cosine, accuracy and latency of the candidate vs the FP32 model."""
    import onnxruntime as ort

    feeds = split.feeds[:recipe["samples"]]
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                for p in (candidate, reference)]
    cand, ref = (np.stack([s.run(None, f)[0] for f in feeds]).astype(np.float64)
                 .reshape(len(feeds), -1) for s in sessions)
    cosine = np.einsum("ij,ij->i", cand, ref) / (
        np.linalg.norm(cand, axis=1) * np.linalg.norm(ref, axis=1))
    report: dict[str, Any] = {"top1_agreement": float(np.mean(cand.argmax(1) == ref.argmax(1))),
                              "mean_cosine": float(cosine.mean()),
                              "max_abs_diff": float(np.abs(cand - ref).max())}
    if split.labels is not None:
        labels = split.labels[:len(feeds)]
        report["accuracy_drop"] = float(np.mean(ref.argmax(1) == labels)
                                        - np.mean(cand.argmax(1) == labels))
    report["latency_ms"] = {"candidate": latency(sessions[0], feeds[0]),
                            "reference": latency(sessions[1], feeds[0])}
    failed = [gate for gate, threshold in recipe["gates"].items()
              if not (report[GATES[gate]] >= threshold if gate.startswith("min_")
                      else report[GATES[gate]] <= threshold)]
    if failed:
        raise SystemExit(f"quality gates failed: {failed}: {report}")
    return report


def package(model: Path, report: dict[str, Any], out: Path) -> Path:
    """Copy the model, write a manifest with the sha256 of every file, archive as tar.gz."""
    bundle = out / "bundle" / "cpu"
    bundle.mkdir(parents=True)
    shutil.copyfile(model, bundle / "model.onnx")
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(bundle.iterdir())}
    manifest = {"target": "cpu", "providers": ["CPUExecutionProvider"], "files": files,
                "validation": report}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    archive = out / "bundle" / "cpu.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        tar.add(bundle, arcname="cpu")
    return archive


def build(name: str, out: Path, exporter: str) -> dict[str, float]:
    """Every step of the recipe, timed; returns step -> seconds."""
    import onnx
    from omegaconf import OmegaConf

    from stages.common.datasets.splits import load_dataset

    recipe, work, timings = RECIPES[name], out / "work", {}
    work.mkdir(parents=True)
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        timings[step] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    exported, optimized, quantized = (work / f"{s}.onnx" for s in ("export", "opt", "int8"))
    export = export_torch if recipe["framework"] == "torch" else export_keras
    reference = export(recipe, exported, exporter)
    onnx.checker.check_model(str(exported))
    parity(exported, reference, recipe)
    lap("export")
    optimize(exported, optimized)
    lap("optimize")
    inputs = [{"name": recipe["input"], "dtype": "float32", "shape": ["batch", *recipe["shape"]]}]
    data = load_dataset(OmegaConf.create(recipe["dataset"]), OmegaConf.create(inputs))
    quantize(optimized, quantized, data.calibration.feeds[:CALIBRATION_SAMPLES])
    lap("quantize")
    report = validate(quantized, optimized, data.evaluation, recipe)
    lap("validate")
    package(quantized, report, out)
    lap("package")
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # the model factories (recipes.zoo) and the digits loader
    started = time.perf_counter()
    timings = build(args.recipe, args.out, args.exporter)
    timings["total"] = round(time.perf_counter() - started, 3)
    (args.out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
