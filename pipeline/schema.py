"""Typed schema of a recipe: every key a recipe may set, with its type and default.

OmegaConf checks recipes against these dataclasses on every merge and override, so a typo or a
wrong type fails during composition with the full key path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING


class Framework(Enum):
    torch = "torch"
    tensorflow = "tensorflow"
    onnx = "onnx"


class DType(Enum):
    float32 = "float32"
    float16 = "float16"
    int64 = "int64"
    int32 = "int32"
    uint8 = "uint8"
    bool = "bool"


@dataclass
class InputSpec:
    name: str = MISSING
    dtype: DType = DType.float32
    # ints are fixed sizes, strings name a dynamic dimension ("batch")
    shape: list[Any] = MISSING
    # value range of the random sample inputs used for parity checks of integer inputs
    low: float = 0.0
    high: float = 1.0


@dataclass
class ModelConfig:
    name: str = MISSING
    framework: Framework = MISSING
    # "package.module:callable" returning an nn.Module, a Keras model or a tf.function
    factory: str | None = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    # torch weights: .pt/.pth state dict (loaded with weights_only=True) or .safetensors
    checkpoint: str | None = None
    # a .keras file, a SavedModel directory or an .onnx file
    path: str | None = None
    inputs: list[InputSpec] = MISSING
    outputs: list[str] = field(default_factory=list)
    # how many sample values a dynamic dimension gets when edgekiln makes inputs
    dynamic_size: int = 2


class DatasetKind(Enum):
    digits = "digits"
    npz = "npz"
    synthetic = "synthetic"


class Layout(Enum):
    nchw = "nchw"
    nhwc = "nhwc"


@dataclass
class DatasetConfig:
    kind: DatasetKind = DatasetKind.synthetic
    # .npz file with one array per model input (and optionally "labels")
    path: str | None = None
    # digits: images are resized to image_size and repeated over channels
    image_size: int = 8
    channels: int = 1
    layout: Layout = Layout.nchw
    mean: float = 0.0
    std: float = 1.0
    # false when the dataset's labels are not the model's classes (agreement is still measured)
    use_labels: bool = True
    # disjoint splits, drawn with this seed
    seed: int = 0
    calibration_size: int = 256
    evaluation_size: int = 512


@dataclass
class ExportConfig:
    opset: int = 18
    parity_samples: int = 4
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-3


class OptimizeLevel(Enum):
    none = "none"
    basic = "basic"
    extended = "extended"


@dataclass
class OptimizeConfig:
    level: OptimizeLevel = OptimizeLevel.basic
    shape_inference: bool = True


class QuantMode(Enum):
    none = "none"
    dynamic = "dynamic"
    static = "static"
    fp16 = "fp16"
    qat = "qat"


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
class CalibrationConfig:
    method: CalibrationMethod = CalibrationMethod.minmax
    samples: int = 128


@dataclass
class QuantizeConfig:
    mode: QuantMode = QuantMode.none
    format: QuantFormat = QuantFormat.qdq
    per_channel: bool = True
    # uint8 activations with int8 weights run fastest on VNNI CPUs (measured: 10 ms vs 27 ms)
    activation_type: QuantType = QuantType.uint8
    weight_type: QuantType = QuantType.int8
    reduce_range: bool = False
    # TensorRT-class targets need zero points of 0 (symmetric int8)
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


@dataclass
class GatesConfig:
    max_accuracy_drop: float | None = None
    min_top1_agreement: float | None = None
    min_cosine: float | None = None
    max_abs_diff: float | None = None


@dataclass
class ValidateConfig:
    samples: int = 256
    latency_runs: int = 30
    warmup_runs: int = 3
    gates: GatesConfig = field(default_factory=GatesConfig)


@dataclass
class PackageConfig:
    archive: bool = True


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
    """The onnxruntime the device runs: a PyPI distribution and a PEP 440 version range."""

    distribution: str = "onnxruntime"
    version: str = ""  # e.g. ">=1.18,<1.25"; empty = any


class ModelFormat(Enum):
    onnx = "onnx"
    ort = "ort"  # onnxruntime's flatbuffer format, what the mobile packages load


@dataclass
class ModelRequirements:
    """What model the target can load; checked when packaging."""

    format: ModelFormat = ModelFormat.onnx
    min_opset: int = 7
    max_opset: int = 99
    max_ir_version: int = 99
    static_shapes: bool = False


@dataclass
class TargetConfig:
    description: str = ""
    device: str = ""
    precision: Precision = Precision.fp32
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    requires: ModelRequirements = field(default_factory=ModelRequirements)
    # in priority order; CPUExecutionProvider is the usual last resort
    execution_providers: list[ExecutionProvider] = MISSING
    # keys of the recipe's `quantize` section this target needs changed (fp16 for a GPU)
    quantize: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    jobs: int = 2
    # stage kinds (or kind@target) to rebuild even when cached; "all" forces everything
    force: list[str] = field(default_factory=list)
    dry_run: bool = False
    # build only these targets (default: every target of the recipe)
    targets: list[str] = field(default_factory=list)
    artifacts_dir: str = "artifacts"
    cache_dir: str = "${run.artifacts_dir}/.cache"
    progress: bool = True


@dataclass
class RecipeConfig:
    name: str = MISSING
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    targets: dict[str, TargetConfig] = field(default_factory=dict)
    export: ExportConfig = field(default_factory=ExportConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    package: PackageConfig = field(default_factory=PackageConfig)
    run: RunConfig = field(default_factory=RunConfig)


def register_configs() -> None:
    """Store the schema in Hydra's ConfigStore under its own group, never among the options."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="schema", name="recipe", node=RecipeConfig)
