"""Transformer fusion, INT8 and INT4 side by side on the corpus' MiniLM (all-MiniLM-L6-v2).

``python benchmarks/bench_transformers.py [--repeat 5] [--runs 30] [--gptq]``. Builds the corpus
MiniLM (tests/fixtures/corpus: the same dynamo export and mean pooling as the bundled
``minilm_cpu`` recipe, and 64 of its sentences), fuses it with edgekiln's optimize stage (``level:
transformer``), then quantizes the unfused and the fused graph with edgekiln's quantize stage
(each with the stage's defaults, pre-processing on): ``mode: dynamic`` per-channel (auto's
``dynamic`` candidate, which ``minilm_cpu`` ships fused), ``mode: int4`` with RTN and HQQ
(block 32, asymmetric, accuracy level 4 where the algorithm takes one), RTN followed by
dynamic INT8 (``int4.then_int8``) and, with ``--gptq``, GPTQ on the calibration split.
Per model: size on disk, CPU p50 at batch 1 with one intra-op
thread at sequence 16 and 64 (sessions interleaved per round, median of rounds), and the lowest
and mean per-sentence cosine with FP32 on the 32 evaluation sentences (sequence 32). Writes
``benchmarks/transformers_results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_corpus import cosines, one_thread_sessions, per_sample
from bench_pipeline import ROOT
from bench_quantization import latency, model_bytes

RESULTS = Path(__file__).resolve().parent / "transformers_results.json"
VARIANTS = {
    "dynamic_int8": {"mode": "dynamic", "per_channel": True},
    "int4_rtn": {"mode": "int4", "int4": {"algorithm": "rtn"}},
    "int4_hqq": {"mode": "int4", "int4": {"algorithm": "hqq"}},
    "int4_rtn_then_int8": {"mode": "int4", "int4": {"algorithm": "rtn", "then_int8": "dynamic"}},
}
GPTQ = {"int4_gptq": {"mode": "int4", "int4": {"algorithm": "gptq"}}}
SEQUENCES = (16, 64)


def quantized(model: Any, source: Path, work: Path,
              settings: dict[str, Any]) -> tuple[Path, float]:
    """Run edgekiln's quantize stage on ``source`` (the corpus model's folder or its fused
    graph's), with the model's data; its output folder and seconds."""
    from omegaconf import OmegaConf

    from pipeline.registry import StageContext
    from pipeline.schema import DatasetConfig
    from stages.quantize.params import QuantizeParams
    from stages.quantize.stage import quantize

    section = OmegaConf.merge(OmegaConf.structured(QuantizeParams), settings)
    data = OmegaConf.merge(OmegaConf.structured(DatasetConfig), model.dataset_section())
    config = OmegaConf.create({"quantize": OmegaConf.to_container(section, enum_to_str=True),
                               "dataset": OmegaConf.to_container(data, enum_to_str=True),
                               "model": model.model_section(),
                               # the CPU EP runs the fused ops: it reads the fused graph
                               "target": {"execution_providers": [
                                   {"name": "CPUExecutionProvider", "options": {}}]}})
    work.mkdir(parents=True)
    started = time.perf_counter()
    quantize(StageContext(config=config, inputs={"model": source}, out=work, target="cpu"))
    return work, time.perf_counter() - started


def fused(model: Any, work: Path) -> Path:
    """The model through edgekiln's optimize stage at level transformer."""
    from omegaconf import OmegaConf

    from pipeline.registry import StageContext
    from stages.optimize.params import OptimizeParams
    from stages.optimize.stage import optimize

    params = OmegaConf.merge(OmegaConf.structured(OptimizeParams), {"level": "transformer"})
    config = OmegaConf.create({"optimize": OmegaConf.to_container(params, enum_to_str=True)})
    work.mkdir(parents=True)
    summary = optimize(StageContext(config=config, inputs={"model": model.folder}, out=work))
    print(f"  fused: {summary['fusions']['applied']}", file=sys.stderr, flush=True)
    return work


def sequence_feed(model: Any, length: int) -> dict[str, Any]:
    """One batch-1 feed of ``length`` tokens: the first evaluation sentence's, repeated."""
    import numpy as np

    ids = model.feeds("evaluation")["input_ids"][0]
    ids = ids[ids != 0]  # the sentence without its padding
    tokens = np.resize(ids, length)[None].astype(np.int64)
    return {"input_ids": tokens, "attention_mask": np.ones_like(tokens),
            "token_type_ids": np.zeros_like(tokens)}


def measure(repeat: int, runs: int, gptq: bool) -> dict[str, Any]:
    from tests.fixtures.corpus import build

    work = Path(tempfile.mkdtemp(prefix="edgekiln-bench-int4-"))
    print("  building MiniLM", file=sys.stderr, flush=True)
    model = build("minilm", work / "model")
    sources = {"": model.folder, "fused_": fused(model, work / "fp32_fused")}
    models, seconds = {"fp32": model.folder, "fp32_fused": sources["fused_"]}, {}
    for prefix, source in sources.items():
        for name, settings in (VARIANTS | (GPTQ if gptq else {})).items():
            print(f"  quantizing: {prefix}{name}", file=sys.stderr, flush=True)
            models[prefix + name], seconds[prefix + name] = quantized(
                model, source, work / f"{prefix}{name}", settings)
    sessions = one_thread_sessions(models)
    scored = cosines(sessions, per_sample(model.feeds("evaluation")))
    rows = {name: {"size_bytes": model_bytes(folder), "quantize_seconds": round(
        seconds.get(name, 0.0), 1), "min_cosine": round(min(scored[name]), 5),
        "mean_cosine": round(statistics.fmean(scored[name]), 5)}
        for name, folder in models.items()}
    for length in SEQUENCES:
        print(f"  timing seq {length} ({repeat} x {runs} runs, 1 thread)", file=sys.stderr,
              flush=True)
        rounds = latency(sessions, sequence_feed(model, length), repeat, runs)
        for name in models:
            rows[name][f"p50_ms_seq{length}"] = round(statistics.median(rounds[name]), 3)
    return {"model": model.weights, "evaluation_sentences": len(scored["fp32"]),
            "repeat": repeat, "runs": runs, "models": rows}


def table(result: dict[str, Any]) -> str:
    header = (f"{'model':<26} {'size MB':>8} {'p50 seq16':>10} {'p50 seq64':>10} "
              f"{'x FP32 @64':>10} {'min cos':>8} {'mean cos':>9}")
    fp32 = result["models"]["fp32"]["p50_ms_seq64"]
    lines = [f"{result['model']}, 1 thread, batch 1 ({result['evaluation_sentences']} "
             "sentences for the cosines)", header, "-" * len(header)]
    for name, row in result["models"].items():
        lines.append(f"{name:<26} {row['size_bytes'] / 1e6:>8.2f} {row['p50_ms_seq16']:>10.3f} "
                     f"{row['p50_ms_seq64']:>10.3f} {fp32 / row['p50_ms_seq64']:>9.2f}x "
                     f"{row['min_cosine']:>8.4f} {row['mean_cosine']:>9.5f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="latency rounds (median)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model per round")
    parser.add_argument("--gptq", action="store_true", help="also GPTQ (minutes on 2 cores)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = measure(max(args.repeat, 1), max(args.runs, 1), args.gptq)
    print(table(result))
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # pipeline, stages and the test corpus
    main()
