"""Typed schema of a recipe: every key a recipe may set, with its type and default.

OmegaConf checks recipes against these dataclasses on every merge and override, so a typo or a
wrong type fails during composition with the full key path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

# the target section lives in its own module; OmegaConf needs the class at run time
from pipeline.targets import TargetConfig  # noqa: TC001


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
    digits = "digits"  # scikit-learn's 8x8 handwritten digits, shipped with the package
    npz = "npz"  # npz and npy read the same files: .npz, .npy or a folder of them
    npy = "npy"
    images = "images"
    callable = "callable"
    synthetic = "synthetic"  # random inputs; warns that they are not representative


class Layout(Enum):
    nchw = "nchw"
    nhwc = "nhwc"


# recipe keys naming dataset content: every stage that reads `dataset` lists them in its
# `sources`, so the data itself (not only its name) enters the stage's cache key
DATASET_SOURCES = ("dataset.kind", "dataset.path", "dataset.calibration_path",
                   "dataset.evaluation_path", "dataset.training_path", "dataset.factory")


@dataclass
class DatasetConfig:
    """Calibration, evaluation and training samples for the model, in three disjoint splits.

    Samples come from one shared source (``path``, the digits set, a factory's output or random
    data) and are dealt by a permutation seeded with ``seed``: calibration first (at most half
    of the source while evaluation shares it), then evaluation, then training (what is left,
    capped by ``training_size``). File sources may give a split its own file or folder
    (``calibration_path``...): that split then reads only it (a seeded draw of its size) and
    ``path`` feeds only the splits without one; paths in use may not overlap.
    """

    kind: DatasetKind = DatasetKind.synthetic
    # npz/npy: a .npz with one array per model input (first axis = samples) and an optional
    # "labels" array, a .npy for a single-input model, or a folder of them (not recursive),
    # joined in sorted file-name order. images: a folder with one subfolder per class (label =
    # the subfolder's index in sorted order, over every folder in use) or flat (no labels);
    # only the files a split uses are decoded.
    path: str | None = None
    calibration_path: str | None = None
    evaluation_path: str | None = None
    training_path: str | None = None
    # callable: "package.module:callable" called with factory_kwargs, returning an iterable of
    # feed dicts {input name: array, with or without the batch axis} plus an optional "labels"
    # class index; it must end unless training_size caps what is read. Only the module file
    # enters the cache key: data it reads from elsewhere must change factory_kwargs too.
    factory: str | None = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    # digits and images are shaped in this order: resize the shorter side to `resize` (null =
    # image_size), center-crop to image_size x image_size, multiply by `scale` (image files
    # hold 0..255, digits 0..1), subtract `mean` and divide by `std` (one value for every
    # channel or one per channel), lay out as `layout`, cast to `dtype`
    image_size: int = 8
    resize: int | None = None
    # digits: the gray image repeated over channels; images: 1 = grayscale, 3 = RGB
    channels: int = 1
    scale: float = 1.0
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    layout: Layout = Layout.nchw
    dtype: DType = DType.float32
    # false when the dataset's labels are not the model's classes (agreement is still measured)
    use_labels: bool = True
    seed: int = 0
    calibration_size: int = 256
    evaluation_size: int = 512
    training_size: int | None = None  # null: every sample the other splits leave


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
    # method=percentile: the percentile of |values| each activation range keeps (ORT's default)
    percentile: float = 99.999


@dataclass
class AccuracyBudget:
    """What quantization may cost; when set, nodes stay float until the budget is met."""

    # top-1 accuracy drop vs FP32 allowed (needs labels)
    max_accuracy_drop: float | None = None
    # top-1 agreement with FP32 required (works without labels)
    min_agreement: float | None = None
    # evaluation samples the budget is checked on; 0 = the whole evaluation split
    samples: int = 0
    # calibration samples whose activations rank the nodes by sensitivity
    sensitivity_samples: int = 16
    # fail (exit 4) rather than keep more than this many nodes in float
    max_float_nodes: int = 8
    # batch-1 CPU runs timed per model for the latency figures (after warmup_runs)
    latency_runs: int = 30
    warmup_runs: int = 3


@dataclass
class QuantSearchConfig:
    # partial overrides of this quantize section, each tried as one more candidate
    candidates: list[dict[str, Any]] = field(default_factory=list)


class QatLoss(Enum):
    cross_entropy = "cross_entropy"  # against the dataset's labels
    mse_to_fp32 = "mse_to_fp32"  # distillation: match the FP32 model's outputs, no labels


class QatOptimizer(Enum):
    adam = "adam"
    sgd = "sgd"  # with momentum 0.9


@dataclass
class QatConfig:
    """mode=qat (torch models): fine-tune with fake quantization on the training split."""

    epochs: int = 3
    learning_rate: float = 3e-4
    batch_size: int = 32
    loss: QatLoss = QatLoss.cross_entropy
    optimizer: QatOptimizer = QatOptimizer.adam
    # seeds torch and the order of the training samples: the same recipe, the same model bytes
    seed: int = 0


@dataclass
class QuantizeConfig:
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
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    accuracy_budget: AccuracyBudget = field(default_factory=AccuracyBudget)
    search: QuantSearchConfig = field(default_factory=QuantSearchConfig)
    qat: QatConfig = field(default_factory=QatConfig)


@dataclass
class GatesConfig:
    max_accuracy_drop: float | None = None
    min_top1_agreement: float | None = None
    min_cosine: float | None = None
    max_abs_diff: float | None = None
    # nodes the target's first-choice EP leaves to the CPU EP (0 = none); measured only where
    # that EP runs here
    max_cpu_fallback_nodes: int | None = None


@dataclass
class ValidateConfig:
    samples: int = 256
    latency_runs: int = 30
    warmup_runs: int = 3
    gates: GatesConfig = field(default_factory=GatesConfig)
    # validate with session.disable_cpu_ep_fallback: a node the target's EPs cannot take fails
    forbid_cpu_fallback: bool = False
    # run a target whose onnxruntime distribution is not the host's in an isolated environment
    # of its own ($EDGEKILN_ENV_DIR, default ~/.cache/edgekiln/envs); false: host runtime only
    isolated_runtime: bool = True
    # sample inputs with the candidate's expected outputs written to samples.npz (self-test)
    bundle_samples: int = 4


@dataclass
class SigningConfig:
    """Sign published bundles (OpenSSF model-signing, elliptic-curve key pair)."""

    # PEM private key (P-256/384/521); null = $EDGEKILN_SIGNING_KEY when set, else unsigned
    private_key: str | None = None
    # NAME of the environment variable holding the key's password; a password never goes in a
    # recipe (null = $EDGEKILN_SIGNING_PASSWORD when set)
    password_env: str | None = None


@dataclass
class PackageConfig:
    signing: SigningConfig = field(default_factory=SigningConfig)
    # gate: most nodes the target's accelerator EPs leave to the CPU EP (coverage.json); null = off
    max_cpu_fallback_nodes: int | None = None


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
