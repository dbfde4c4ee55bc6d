"""The target section of a recipe: execution providers, runtime, model needs, session settings.

A target is a YAML file under ``recipes/target/``; ``pipeline.schema`` checks it against
``TargetConfig``. The package stage enforces ``requires`` and writes ``session`` and the
providers into the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

# stage names a target section may override directly, as recipes written before declared
# graphs do (targets.<t>.quantize); the general form is targets.<t>.stages.<name>
LEGACY_STAGE_OVERRIDES = ("quantize",)
KNOWN_PROVIDERS = (
    "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
    "OpenVINOExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
    "NnapiExecutionProvider", "QNNExecutionProvider", "XnnpackExecutionProvider",
    "ROCMExecutionProvider", "MIGraphXExecutionProvider", "ACLExecutionProvider",
    "ArmNNExecutionProvider", "RknpuExecutionProvider", "VitisAIExecutionProvider",
    "WebGpuExecutionProvider", "AzureExecutionProvider", "SNPEExecutionProvider",
    "DnnlExecutionProvider", "TvmExecutionProvider", "CANNExecutionProvider",
)


@dataclass
class ExecutionProvider:
    name: str = MISSING
    options: dict[str, Any] = field(default_factory=dict)


class Precision(Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"


@dataclass
class RuntimeSpec:
    """The onnxruntime the device runs: its package and a PEP 440 version range.

    A PyPI distribution for Python devices; for phones the Maven (onnxruntime-android...) or
    CocoaPods (onnxruntime-c...) package the app links, which no pip install can provide.
    """

    distribution: str = "onnxruntime"
    version: str = ""  # e.g. ">=1.18,<1.25"; empty = any
    # run.executor=ray: Ray resources a worker must advertise to run this target's on-target
    # stages (validate), e.g. {"edgekiln/jetson_orin": 1}; placement only, never in a cache key
    ray_resources: dict[str, float] = field(default_factory=dict)


class ModelFormat(Enum):
    onnx = "onnx"
    ort = "ort"  # onnxruntime's flatbuffer format, what the mobile packages load


class OrtOptimizationStyle(Enum):
    # onnxruntime.tools.convert_onnx_models_to_ort --optimization_style: "runtime" keeps the
    # graph open for compiling EPs (NNAPI, CoreML), "fixed" bakes every optimization in
    fixed = "fixed"
    runtime = "runtime"


@dataclass
class ModelRequirements:
    """What model the target can load; checked when packaging."""

    format: ModelFormat = ModelFormat.onnx
    ort_optimization_style: OrtOptimizationStyle = OrtOptimizationStyle.runtime
    # range of the model's ai.onnx opset and its highest IR version the target runtime loads
    min_opset: int = 7
    max_opset: int = 99
    max_ir_version: int = 99
    # dynamic dimensions are fixed at package time, to the sizes in fixed_dims (name -> size)
    static_shapes: bool = False
    fixed_dims: dict[str, int] = field(default_factory=dict)


class GraphOptimization(Enum):
    disable_all = "disable_all"
    basic = "basic"
    extended = "extended"
    all = "all"


@dataclass
class SessionSpec:
    """Session settings an EP's documentation asks for; providers.json carries them."""

    graph_optimization_level: GraphOptimization | None = None  # null = onnxruntime's default
    intra_op_num_threads: int | None = None
    # SessionOptions.add_session_config_entry(key, value)
    config: dict[str, str] = field(default_factory=dict)


@dataclass
class TargetConfig:
    """A device profile (recipes/target/<name>.yaml): what runs the model and what it needs."""

    description: str = ""
    device: str = ""
    precision: Precision = Precision.fp32
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    requires: ModelRequirements = field(default_factory=ModelRequirements)
    # in priority order; CPUExecutionProvider is the usual last resort
    execution_providers: list[ExecutionProvider] = MISSING
    session: SessionSpec = field(default_factory=SessionSpec)
    # stage name -> params this target needs changed (e.g. {quantize: {mode: fp16}} for a GPU)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    # recipes and targets written before declared graphs say this for stages.quantize
    quantize: dict[str, Any] = field(default_factory=dict)
