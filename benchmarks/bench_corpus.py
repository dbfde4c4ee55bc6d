"""quantize.mode=auto on the real-model corpus, beside FP32 and onnxruntime's plain defaults.

``python benchmarks/bench_corpus.py [--models minilm mobilenet_v3_small ...] [--repeat 5]
[--runs 50] [--calibration-batching]``. For each corpus model (tests/fixtures/corpus) it
builds the model, builds its x86_cpu bundle with ``python -m pipeline`` (quantize.mode=auto,
the bundled ``/quantize: int8``), then compares in this one process four models: FP32 (the
optimize stage's output), edgekiln's bundle, ``quantize_static`` and ``quantize_dynamic`` with
every knob at its default on the same FP32 model (static on the same calibration samples).
Per model: size, CPU p50 at batch 1 with one intra-op thread (sessions interleaved per round,
median of rounds), and the lowest and mean per-sample cosine with FP32 on the evaluation split.
``--calibration-batching`` also times resnet18's static quantize stage with
calibration.batch_size 1 against 16, alternated. Writes ``benchmarks/corpus_results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_pipeline import ROOT, timed
from bench_quantization import latency, model_bytes

RESULTS = Path(__file__).resolve().parent / "corpus_results.json"
LABELS = {"fp32": "FP32", "edgekiln": "edgekiln auto", "static": "quantize_static default",
          "dynamic": "quantize_dynamic default"}
RECIPE = """# @package _global_
defaults:
  - /quantize: int8
  - /target@targets.cpu: x86_cpu
  - _self_
name: bench_{name}
validate:
  samples: 32
"""
# the encoder is held to the bar for embeddings; the CNNs to the preset's 0.98
EXTRA = {"minilm": ["quantize.auto.gates.min_sample_cosine=0.99"]}


def edgekiln(model: Any, work: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Build the model's cpu bundle; FP32's and the bundle's folders, and auto's summary."""
    recipes = work / "recipes" / "recipe"
    recipes.mkdir(parents=True)
    (recipes / f"bench_{model.name}.yaml").write_text(RECIPE.format(name=model.name)
                                                       + model.recipe_yaml())
    artifacts = work / "artifacts"
    timed([sys.executable, "-m", "pipeline", f"recipe=bench_{model.name}",
           "--config-dir", str(work / "recipes"), f"run.artifacts_dir={artifacts}",
           "run.progress=false", *EXTRA.get(model.name, [])])
    record = json.loads((artifacts / f"bench_{model.name}" / "run.json").read_text())
    keys = {(s["stage"], s["target"]): s["key"] for s in record["stages"]}

    def out(key: str) -> Path:
        return artifacts / ".cache" / "objects" / key[:2] / key[2:] / "out"

    summary = json.loads((out(keys["quantize", "cpu"]) / "quantize.json").read_text())
    return {"fp32": out(keys["optimize", None]), "edgekiln": Path(record["bundles"]["cpu"])}, \
        summary


def per_sample(feeds: dict[str, Any]) -> list[dict[str, Any]]:
    count = len(next(iter(feeds.values())))
    return [{name: array[i:i + 1] for name, array in feeds.items()} for i in range(count)]


def plain_defaults(fp32: Path, work: Path, calibration: list[dict[str, Any]]) -> dict[str, Path]:
    """onnxruntime's quantize_static and quantize_dynamic, every knob at its default."""
    from onnxruntime.quantization import quantize_dynamic, quantize_static

    from stages.quantize.ptq import feed_reader

    folders = {name: work / name for name in ("static", "dynamic")}
    for folder in folders.values():
        folder.mkdir()
    source = str(fp32 / "model.onnx")
    quantize_static(source, str(folders["static"] / "model.onnx"), feed_reader(calibration),
                    use_external_data_format=True)
    quantize_dynamic(source, str(folders["dynamic"] / "model.onnx"),
                     use_external_data_format=True)
    return folders


def one_thread_sessions(models: dict[str, Path]) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return {name: ort.InferenceSession(str(folder / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
            for name, folder in models.items()}


def cosines(sessions: dict[str, Any], feeds: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Each model's per-sample cosine with FP32 on ``feeds`` (first output)."""
    import numpy as np

    out = {name: [s.run(None, feed)[0].ravel().astype(np.float64) for feed in feeds]
           for name, s in sessions.items()}
    return {name: [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
                   for a, b in zip(rows, out["fp32"], strict=True)] for name, rows in out.items()}


def measure(name: str, repeat: int, runs: int) -> dict[str, Any]:
    from tests.fixtures.corpus import build

    work = Path(tempfile.mkdtemp(prefix=f"edgekiln-bench-{name}-"))
    print(f"  {name}: building the model and its bundle", file=sys.stderr, flush=True)
    model = build(name, work / "model")
    models, summary = edgekiln(model, work)
    calibration = per_sample(model.feeds("calibration"))
    models |= plain_defaults(models["fp32"], work, calibration)
    sessions = one_thread_sessions(models)
    evaluation = per_sample(model.feeds("evaluation"))
    print(f"  {name}: timing ({repeat} x {runs} runs, 1 thread)", file=sys.stderr, flush=True)
    rounds = latency(sessions, evaluation[0], repeat, runs)
    scored = cosines(sessions, evaluation)
    fp32 = statistics.median(rounds["fp32"])
    rows = {key: {"size_bytes": model_bytes(folder), "p50_ms": round(
        statistics.median(rounds[key]), 4), "speedup": round(fp32 / statistics.median(
            rounds[key]), 3), "min_cosine": round(min(scored[key]), 5),
        "mean_cosine": round(statistics.fmean(scored[key]), 5)}
        for key, folder in models.items()}
    choice = summary["quantization"]
    return {"model": name, "weights": model.weights, "evaluation_samples": len(evaluation),
            "calibration_samples": len(calibration), "chosen": choice["chosen"],
            "fallback_reason": choice["fallback_reason"],
            "candidates": {row["name"]: {k: row[k] for k in ("min_sample_cosine", "speedup",
                                                            "qualifies", "failed")}
                           for row in summary["candidates"]}, "models": rows}


def table(result: dict[str, Any]) -> str:
    header = f"{'model':<26} {'size MB':>9} {'p50 ms':>8} {'speedup':>8} {'min cos':>8} " \
             f"{'mean cos':>9}"
    lines = [f"{result['model']} ({result['weights']}; {result['evaluation_samples']} "
             f"evaluation samples): auto chose {result['chosen']}", header, "-" * len(header)]
    for key, label in LABELS.items():
        row = result["models"][key]
        lines.append(f"{label:<26} {row['size_bytes'] / 1e6:>9.2f} {row['p50_ms']:>8.3f} "
                     f"{row['speedup']:>7.2f}x {row['min_cosine']:>8.4f} "
                     f"{row['mean_cosine']:>9.5f}")
    if result["fallback_reason"]:
        lines.append(f"fallback: {result['fallback_reason']}")
    return "\n".join(lines)


def calibration_batching(rounds: int = 2) -> dict[str, list[float]]:
    """resnet18's static quantize stage seconds at calibration.batch_size 1 and 16."""
    seconds: dict[str, list[float]] = {"1": [], "16": []}
    for _ in range(rounds):
        for batch in seconds:
            artifacts = Path(tempfile.mkdtemp(prefix="edgekiln-bench-calib-"))
            timed([sys.executable, "-m", "pipeline", "recipe=resnet_jetson", "run.targets=[cpu]",
                   "quantize=int8_static", "validate.gates.min_speedup=0",
                   f"quantize.calibration.batch_size={batch}", f"run.artifacts_dir={artifacts}",
                   "run.progress=false"])
            record = json.loads((artifacts / "resnet_jetson" / "run.json").read_text())
            seconds[batch] += [s["seconds"] for s in record["stages"]
                               if s["stage"] == "quantize"]
    return seconds


def main() -> None:
    from tests.fixtures.corpus import MODELS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--repeat", type=int, default=5, help="latency rounds (median)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs per model per round")
    parser.add_argument("--calibration-batching", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = [measure(name, max(args.repeat, 1), max(args.runs, 1)) for name in args.models]
    for result in results:
        print(table(result) + "\n")
    document: dict[str, Any] = {"results": results}
    if args.calibration_batching:
        document["calibration_batching_seconds"] = calibration_batching()
        print("resnet18 quantize stage seconds by calibration.batch_size:",
              document["calibration_batching_seconds"])
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # pipeline, stages and the test corpus
    main()
