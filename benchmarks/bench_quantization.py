"""What edgekiln's INT8 buys against FP32, beside onnxruntime's ``quantize_static`` defaults.

``python benchmarks/bench_quantization.py [--recipes digits_torch digits_keras resnet_jetson]
[--repeat 3] [--runs 100]``. For each recipe it builds the cpu bundle with ``python -m pipeline``
(a subprocess from the repository root, on a fresh temporary artifacts dir), then compares, in
this one process, three models: the FP32 reference (the optimize stage's model in the cache),
edgekiln's INT8 (the bundle's model) and ``quantize_static`` with its defaults on the same FP32
model and the same calibration samples. Reported per model: size (model + external data), CPU
p50 latency at batch 1 (same session options for all; models interleaved per round, median of
the rounds) and accuracy on the evaluation split (top-1 agreement with FP32 when the dataset has
no labels), each against FP32, plus the mean cosine of the outputs with FP32's (what still
tells models apart when FP32 gives every sample the same class, as the random-weight resnet18
does). Prints one table per recipe and writes ``benchmarks/quantization_results.json``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_pipeline import ROOT, timed

RESULTS = Path(__file__).resolve().parent / "quantization_results.json"
RECIPES = ("digits_torch", "digits_keras", "resnet_jetson")
EXTRA = {"resnet_jetson": ["run.targets=[cpu]"]}  # the Jetson bundle cannot run here
TARGET = "cpu"
MODELS = {"fp32": "FP32", "edgekiln": "edgekiln INT8", "handwritten": "quantize_static default"}
SIZE_AIM, WARMUP_RUNS = 0.26, 10


def build(recipe: str, artifacts: Path) -> tuple[dict[str, Path], dict[str, Any]]:
    """Run edgekiln; the model folders of FP32 and of the cpu bundle, and quantize's summary."""
    timed([sys.executable, "-m", "pipeline", f"recipe={recipe}",
           f"run.artifacts_dir={artifacts}", *EXTRA.get(recipe, [])])
    record = json.loads((artifacts / recipe / "run.json").read_text())
    keys = {(s["stage"], s["target"]): s["key"] for s in record["stages"]}

    def entry(key: str) -> Path:
        return artifacts / ".cache" / "objects" / key[:2] / key[2:] / "out"

    summary = json.loads((entry(keys["quantize", TARGET]) / "quantize.json").read_text())
    return ({"fp32": entry(keys["optimize", None]),
             "edgekiln": Path(record["bundles"][TARGET])}, summary)


def load_data(recipe: str) -> Any:
    """The recipe's dataset splits, composed the way ``python -m pipeline`` composes it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from pipeline.cli import BUNDLED_RECIPES, register_primary_config
    from stages.common.datasets.splits import load_dataset

    register_primary_config()
    with initialize_config_dir(config_dir=str(BUNDLED_RECIPES), version_base="1.3"):
        cfg = compose(config_name="edgekiln", overrides=[f"recipe={recipe}"])

    def plain(node: Any) -> Any:  # enums as plain strings, as stages see their config
        return OmegaConf.create(OmegaConf.to_container(node, resolve=True, enum_to_str=True))

    return load_dataset(plain(cfg.dataset), plain(cfg.model.inputs))


def quantize_default(fp32: Path, out: Path, feeds: list[Any]) -> Path:
    """``quantize_static`` with every knob left at its default (no pre-processing either)."""
    from onnxruntime.quantization import quantize_static

    from stages.quantize.ptq import feed_reader

    out.mkdir(parents=True)
    quantize_static(str(fp32 / "model.onnx"), str(out / "model.onnx"), feed_reader(feeds))
    return out


def quantize_static_defaults() -> dict[str, str]:
    """The defaults the hand-written call got, as this onnxruntime defines them."""
    from onnxruntime.quantization import quantize_static

    wanted = ("quant_format", "activation_type", "weight_type", "per_channel", "reduce_range",
              "calibrate_method")
    parameters = inspect.signature(quantize_static).parameters
    return {name: str(parameters[name].default) for name in wanted}


def open_sessions(models: dict[str, Path]) -> dict[str, Any]:
    """One CPU EP session per model, all with the same (default) session options."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    return {name: ort.InferenceSession(str(folder / "model.onnx"), options,
                                       providers=["CPUExecutionProvider"])
            for name, folder in models.items()}


def p50_ms(session: Any, feed: dict[str, Any], runs: int) -> float:
    for _ in range(WARMUP_RUNS):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def latency(sessions: dict[str, Any], feed: dict[str, Any], repeat: int,
            runs: int) -> dict[str, list[float]]:
    """p50 of every model in each round; the order rotates so no model always goes first."""
    names, rounds = list(sessions), {name: [] for name in sessions}
    for index in range(repeat):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            rounds[name].append(p50_ms(sessions[name], feed, runs))
    return rounds


def outputs(sessions: dict[str, Any], feeds: list[Any]) -> dict[str, Any]:
    """Each model's first output for every evaluation sample, one row per sample (float64)."""
    import numpy as np

    return {name: np.stack([session.run(None, feed)[0].ravel() for feed in feeds])
            .astype(np.float64) for name, session in sessions.items()}


def model_bytes(folder: Path) -> int:
    from stages.common.onnx_files import model_size

    return model_size(folder)


def measure(recipe: str, repeat: int, runs: int) -> dict[str, Any]:
    """Build, quantize by hand, then size, latency and accuracy of the three models."""
    artifacts = Path(tempfile.mkdtemp(prefix="edgekiln-bench-q-"))
    try:
        print(f"  {recipe}: building with edgekiln", file=sys.stderr, flush=True)
        models, summary = build(recipe, artifacts)
        data = load_data(recipe)
        calibration = data.calibration.feeds[:summary["calibration_samples"]]
        models["handwritten"] = quantize_default(models["fp32"], artifacts / "hw", calibration)
        sizes = {name: model_bytes(folder) for name, folder in models.items()}
        sessions = open_sessions(models)
        evaluation = data.evaluation
        feeds = list(evaluation.feeds)
        print(f"  {recipe}: timing ({repeat} x {runs} runs)", file=sys.stderr, flush=True)
        rounds = latency(sessions, feeds[0], repeat, runs)
        produced = outputs(sessions, feeds)
    finally:
        shutil.rmtree(artifacts, ignore_errors=True)
    rows = score(sizes, rounds, produced, evaluation.labels)
    return {"recipe": recipe, "target": TARGET, "repeat": repeat, "runs": runs,
            "warmup_runs": WARMUP_RUNS, "calibration_samples": len(calibration),
            "evaluation_samples": len(feeds),
            "fp32_distinct_top1": len(set(produced["fp32"].argmax(1).tolist())),
            "metric": "accuracy" if evaluation.labels is not None else "top1_agreement",
            "edgekiln_settings": summary, "quantize_static_defaults": quantize_static_defaults(),
            "models": rows}


def score(sizes: dict[str, int], rounds: dict[str, list[float]], produced: dict[str, Any],
          labels: Any) -> dict[str, dict[str, Any]]:
    """Every model against FP32: size ratio, speedup, metric delta, output cosine, agreement."""
    predicted = {name: out.argmax(1) for name, out in produced.items()}
    reference, fp32_p50 = predicted["fp32"], statistics.median(rounds["fp32"])
    metric = {name: float(((p == labels) if labels is not None else (p == reference)).mean())
              for name, p in predicted.items()}
    rows = {}
    for name in MODELS:
        p50 = statistics.median(rounds[name])
        rows[name] = {
            "size_bytes": sizes[name], "size_ratio": round(sizes[name] / sizes["fp32"], 4),
            "p50_ms": round(p50, 4), "p50_ms_rounds": [round(t, 4) for t in rounds[name]],
            "speedup": round(fp32_p50 / p50, 3), "metric": round(metric[name], 4),
            "delta": round(metric[name] - metric["fp32"], 4),
            "top1_agreement": round(float((predicted[name] == reference).mean()), 4),
            "mean_cosine": round(cosine(produced[name], produced["fp32"]), 6)}
    return rows


def cosine(candidate: Any, reference: Any) -> float:
    """Mean over samples of the cosine between the candidate's and FP32's output vectors."""
    import numpy as np

    norms = np.linalg.norm(candidate, axis=1) * np.linalg.norm(reference, axis=1)
    return float((np.einsum("ij,ij->i", candidate, reference) / norms).mean())


def table(result: dict[str, Any]) -> str:
    metric = "accuracy" if result["metric"] == "accuracy" else "top-1 agr."
    header = (f"{'model':<24} {'size MB':>9} {'size ratio':>10} {'p50 ms':>8} {'speedup':>8} "
              f"{metric:>10} {'delta':>7} {'cosine':>8}")
    lines = [f"{result['recipe']} (target {result['target']}; calibration "
             f"{result['calibration_samples']}, evaluation {result['evaluation_samples']} samples;"
             f" p50 = median of {result['repeat']} rounds x {result['runs']} runs, batch 1)",
             header, "-" * len(header)]
    for name, label in MODELS.items():
        row = result["models"][name]
        lines.append(f"{label:<24} {row['size_bytes'] / 1e6:>9.3f} {row['size_ratio']:>10.3f} "
                     f"{row['p50_ms']:>8.4f} {row['speedup']:>7.2f}x {row['metric']:>10.4f} "
                     f"{row['delta']:>+7.4f} {row['mean_cosine']:>8.5f}")
    if result["fp32_distinct_top1"] <= 2:
        lines.append(f"note: FP32 predicts {result['fp32_distinct_top1']} distinct class(es) on "
                     "these samples, so top-1 agreement says little; cosine (mean over samples "
                     "of the output vectors vs FP32) does")
    return "\n".join(lines)


def summary(results: list[dict[str, Any]]) -> str:
    """One line: each recipe's INT8 size ratio (edgekiln / quantize_static) against the aim."""
    parts = []
    for result in results:
        edge, hand = (result["models"][n]["size_ratio"] for n in ("edgekiln", "handwritten"))
        verdict = "met" if edge <= SIZE_AIM else "MISSED"
        parts.append(f"{result['recipe']} {edge:.3f} {verdict} (quantize_static {hand:.3f})")
    return f"size ratio aim <= {SIZE_AIM} (edgekiln INT8 / FP32): " + "; ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--repeat", type=int, default=3, help="latency rounds (median)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per model per round")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # pipeline, stages and the model factories
    results = [measure(recipe, max(args.repeat, 1), max(args.runs, 1))
               for recipe in args.recipes]
    for result in results:
        print(table(result))
        print()
    print(summary(results))
    args.out.write_text(json.dumps({"size_ratio_aim": SIZE_AIM, "results": results},
                                   indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
