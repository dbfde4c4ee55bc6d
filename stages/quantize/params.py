"""Settings of the ``quantize`` kind: the recipe's ``quantize:`` section, a preset of
``recipes/quantize/``, or ``stages.<name>.params`` of a further quantize stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from pipeline.bounds import at_least


class QuantMode(Enum):
    none = "none"
    auto = "auto"
    dynamic = "dynamic"
    static = "static"
    fp16 = "fp16"
    qat = "qat"
    int4 = "int4"  # weight-only, block-wise, MatMulNBits (stages/quantize/int4.py)


class QuantFormat(Enum):
    qdq = "qdq"
    qoperator = "qoperator"


class QuantType(Enum):
    uint8 = "uint8"
    int8 = "int8"
    uint16 = "uint16"
    int16 = "int16"


class CalibrationMethod(Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"
    distribution = "distribution"


@dataclass
class CalibrationParams:
    method: CalibrationMethod = CalibrationMethod.minmax
    samples: int = at_least(1, 128)
    # method=percentile: the percentile of |values| each activation range keeps (ORT's default)
    percentile: float = 99.999
    # samples per calibration run when every model input has a dynamic first (batch) axis;
    # one run per sample spent 15.8 s of a 40 s resnet18 build. 1 = one sample at a time
    batch_size: int = at_least(1, 16)


@dataclass
class AccuracyBudget:
    """What quantization may cost; when set, nodes stay float until the budget is met."""

    # top-1 accuracy drop vs FP32 allowed (needs labels)
    max_accuracy_drop: float | None = None
    # top-1 agreement with FP32 required (works without labels)
    min_agreement: float | None = None
    # the lowest per-sample cosine with FP32 required: the criterion for embeddings and
    # regressors, whose top-1 class means nothing
    min_sample_cosine: float | None = None
    # evaluation samples the budget is checked on; 0 = the whole evaluation split
    samples: int = at_least(0, 0, "0 = the whole evaluation split")
    # calibration samples whose activations rank the nodes by sensitivity
    sensitivity_samples: int = at_least(1, 16)
    # fail (exit 4) rather than keep more than this many nodes in float
    max_float_nodes: int = at_least(0, 8)
    # batch-1 CPU runs timed per model for the latency figures (after warmup_runs)
    latency_runs: int = at_least(1, 30)
    warmup_runs: int = at_least(0, 3)


@dataclass
class QuantSearchParams:
    # partial overrides of this quantize section, each tried as one more candidate
    candidates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AutoGates:
    """Fidelity a candidate must keep vs FP32 on the evaluation split (validate's metrics)."""

    min_cosine: float | None = None
    # the lowest single sample's cosine: a mean of 0.99 can hide samples at 0.9
    min_sample_cosine: float | None = 0.98
    min_top1_agreement: float | None = None
    max_accuracy_drop: float | None = None  # needs labels
    max_abs_diff: float | None = None
    # language-model logits (batch, sequence, vocabulary): mean KL(FP32 || candidate) per token
    max_kl_divergence: float | None = None


@dataclass
class AutoParams:
    """mode=auto: build candidates suited to the model and target, ship the fastest that
    keeps fidelity and beats FP32, else FP32 with the reason."""

    # candidate names (stages/quantize/candidates.py); empty = those suited to the model and
    # the target's first execution provider
    candidates: list[str] = field(default_factory=list)
    gates: AutoGates = field(default_factory=AutoGates)
    # candidate p50 must beat FP32 p50 by this factor on the validating EP (1.1 = 10% faster)
    min_speedup: float = 1.1
    # ... and save at least this much per batch-1 run: below it the difference is scheduler
    # noise on a shared machine (a 0.02 ms CNN measured 0.66x and 1.1x FP32 within minutes)
    min_saving_ms: float = 0.05
    # fail (exit 4) instead of shipping FP32 when no candidate qualifies
    require: bool = False
    # evaluation samples each candidate is scored on
    samples: int = at_least(1, 64)
    # latency: rounds of batch-1 runs per model, interleaved across models; median of rounds
    rounds: int = at_least(1, 3)
    latency_runs: int = at_least(1, 20)
    warmup_runs: int = at_least(0, 3)


class Int4Algorithm(Enum):
    rtn = "rtn"  # round to nearest, per block (onnxruntime's C++ kernel)
    hqq = "hqq"  # half-quadratic: fits scales and float zero points per block, no data (torch)
    gptq = "gptq"  # fits the rounding to the calibration split's activations


class Int4ThenInt8(Enum):
    none = "none"
    # dynamic INT8 of the weights INT4 left float: excluded MatMuls, Gather embeddings, Gemm
    dynamic = "dynamic"


@dataclass
class Int4Params:
    """mode=int4: MatMul weights to 4 bits in blocks along K (onnxruntime's MatMulNBits)."""

    algorithm: Int4Algorithm = Int4Algorithm.rtn
    # weights per scale (a power of two, at least 16); smaller keeps more precision, more scales
    block_size: int = 32
    # rtn/gptq: zero points of 0; on MiniLM asymmetric RTN was both closer to FP32 (min cosine
    # 0.966 vs 0.963) and faster (12.4 vs 16.9 ms). hqq always fits float zero points
    symmetric: bool = False
    # MatMulNBits' compute type: 0/null unset (fp32), 1 fp32, 2 fp16, 3 bf16, 4 int8 activations
    # (the fastest on x86: 12.4 vs 13.8 ms on MiniLM). rtn/gptq only
    accuracy_level: int | None = 4
    # MatMul node names or full-match regexes kept out of INT4 (float, or INT8 with then_int8)
    nodes_to_exclude: list[str] = field(default_factory=list)
    then_int8: Int4ThenInt8 = Int4ThenInt8.none


class QatLoss(Enum):
    cross_entropy = "cross_entropy"  # against the dataset's labels
    mse_to_fp32 = "mse_to_fp32"  # distillation: match the FP32 model's outputs, no labels


class QatOptimizer(Enum):
    adam = "adam"
    sgd = "sgd"  # with momentum 0.9


@dataclass
class QatParams:
    """mode=qat (torch models): fine-tune with fake quantization on the training split."""

    epochs: int = at_least(1, 3)
    learning_rate: float = 3e-4
    batch_size: int = at_least(1, 32)
    loss: QatLoss = QatLoss.cross_entropy
    optimizer: QatOptimizer = QatOptimizer.adam
    # seeds torch and the order of the training samples: the same recipe, the same model bytes
    seed: int = 0


@dataclass
class QuantizeParams:
    mode: QuantMode = QuantMode.none
    format: QuantFormat = QuantFormat.qdq
    per_channel: bool = True
    # uint8 activations with int8 weights run fastest on VNNI CPUs (measured: 10 ms vs 27 ms);
    # uint16/int16 activations with 8-bit weights (A16W8) suit NPUs such as QNN's HTP
    activation_type: QuantType = QuantType.uint8
    weight_type: QuantType = QuantType.int8
    reduce_range: bool = False
    # TensorRT-class targets need zero points of 0 (symmetric int8)
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    # smallest float range a tensor is quantized over (QNN wants 0.0001); null = no minimum
    minimum_real_range: float | None = None
    # op types to quantize (e.g. [Conv, Gemm]); empty = every type ORT can quantize
    op_types_to_quantize: list[str] = field(default_factory=list)
    # node names or regular expressions (full match) of nodes kept in float
    nodes_to_exclude: list[str] = field(default_factory=list)
    # onnxruntime's quant_pre_process (shape inference + a basic graph pass) first
    pre_process: bool = True
    calibration: CalibrationParams = field(default_factory=CalibrationParams)
    accuracy_budget: AccuracyBudget = field(default_factory=AccuracyBudget)
    search: QuantSearchParams = field(default_factory=QuantSearchParams)
    auto: AutoParams = field(default_factory=AutoParams)
    qat: QatParams = field(default_factory=QatParams)
    int4: Int4Params = field(default_factory=Int4Params)
