"""Typed schema of a recipe: every key a recipe may set, with its type and default.

OmegaConf checks recipes against these dataclasses on every merge and override, so a typo or a
wrong type fails during composition with the full key path. Each stage kind's settings live
with the kind (``stages/<kind>/params.py``); ``recipe_schema`` adds their sections.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import MISSING

from pipeline.bounds import at_least

# the target section lives in its own module; OmegaConf needs the class at run time
from pipeline.targets import TargetConfig


class Framework(Enum):
    torch = "torch"
    tensorflow = "tensorflow"
    onnx = "onnx"
    huggingface = "huggingface"  # a Hugging Face model folder, loaded with transformers


class Task(Enum):
    """What a Hugging Face model folder is exported for (the Auto class that loads it)."""

    feature_extraction = "feature_extraction"  # AutoModel, pooled by model.pooling
    sequence_classification = "sequence_classification"  # logits (batch, labels)
    causal_lm = "causal_lm"  # next-token logits (batch, sequence, vocab), no KV cache


class Pooling(Enum):
    mean = "mean"  # last_hidden_state averaged over the attention mask (sentence-transformers)
    cls = "cls"  # the first token's state
    none = "none"  # last_hidden_state itself (batch, sequence, hidden)


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
    # top-level packages outside the working tree (cwd, PYTHONPATH) the factory may come from
    trusted_packages: list[str] = field(default_factory=list)
    # torch weights: .pt/.pth state dict (loaded with weights_only=True) or .safetensors
    checkpoint: str | None = None
    # a .keras file, a SavedModel directory, an .onnx file or a Hugging Face model folder
    path: str | None = None
    # huggingface: a folder that an installed package ships instead of model.path, found
    # without importing the package: package_folder inside the package's directory
    package: str | None = None
    package_folder: str = ""
    task: Task | None = None  # huggingface: required
    pooling: Pooling = Pooling.mean  # huggingface feature_extraction
    # huggingface may leave inputs out: the plan derives them from the folder (README)
    inputs: list[InputSpec] = MISSING
    outputs: list[str] = field(default_factory=list)
    # how many sample values a dynamic dimension gets when edgekiln makes inputs
    dynamic_size: int = at_least(1, 2)


class DatasetKind(Enum):
    digits = "digits"  # scikit-learn's 8x8 handwritten digits, shipped with the package
    npz = "npz"  # npz and npy read the same files: .npz, .npy or a folder of them
    npy = "npy"
    images = "images"
    callable = "callable"
    synthetic = "synthetic"  # random inputs; warns that they are not representative
    text = "text"  # a .txt (one example a line) or .jsonl file, tokenized


class Padding(Enum):
    max_length = "max_length"  # every sample dataset.max_length tokens: one shape for all
    longest = "longest"  # every sample as long as the longest of its file
    none = "none"  # each sample its own length (stages feed them one by one)


class Layout(Enum):
    nchw = "nchw"
    nhwc = "nhwc"


# recipe keys naming dataset content: every stage that reads `dataset` lists them in its
# `sources`, so the data itself (not only its name) enters the stage's cache key
DATASET_SOURCES = ("dataset.kind", "dataset.path", "dataset.calibration_path",
                   "dataset.evaluation_path", "dataset.training_path", "dataset.factory",
                   "dataset.tokenizer")


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
    # class index; it must end unless training_size caps what is read. A callable with a
    # parameter named `split` is called once per split and gives that split's samples (the
    # first <split>_size of them are used). Only the module file enters the cache key: data it
    # reads from elsewhere must change factory_kwargs too.
    factory: str | None = None
    factory_kwargs: dict[str, Any] = field(default_factory=dict)
    trusted_packages: list[str] = field(default_factory=list)  # as model.trusted_packages
    # digits and images are shaped in this order: resize the shorter side to `resize` (null =
    # image_size), center-crop to image_size x image_size, multiply by `scale` (image files
    # hold 0..255, digits 0..1), subtract `mean` and divide by `std` (one value for every
    # channel or one per channel), lay out as `layout`, cast to `dtype`
    image_size: int = at_least(1, 8)
    resize: int | None = at_least(1, None)
    # digits: the gray image repeated over channels; images: 1 = grayscale, 3 = RGB
    channels: int = at_least(1, 1)
    scale: float = 1.0
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    layout: Layout = Layout.nchw
    dtype: DType = DType.float32
    # false when the dataset's labels are not the model's classes (agreement is still measured)
    use_labels: bool = True
    # text: a .txt file holds one example a line (blank lines skipped), a .jsonl one JSON object
    # a line with the example under text_field (and its second sentence under pair_field, and
    # a class index under label_field); the tokenizer is the folder of tokenizer files that
    # `tokenizer` names, by default the model's Hugging Face folder. Samples are cut to
    # max_length tokens and padded as `padding` says, with exactly the model's inputs (int64)
    text_field: str = "text"
    pair_field: str | None = None
    label_field: str | None = None
    tokenizer: str | None = None
    max_length: int = 128
    padding: Padding = Padding.max_length
    seed: int = 0
    calibration_size: int = at_least(1, 256)
    evaluation_size: int = at_least(1, 512)
    # null: every sample the other splits leave
    training_size: int | None = at_least(0, None, "0 = no training samples")


class Executor(Enum):
    local = "local"  # a thread pool on this machine (run.jobs)
    ray = "ray"  # one Ray task per stage node on the cluster at run.ray.address


@dataclass
class RayConfig:
    # host:port of the cluster's head (or ray://host:10001); null = the RAY_ADDRESS environment
    # variable; "local" = a private cluster on this machine, gone when the run ends
    address: str | None = None
    # attempts more for a node whose worker process or machine died (Ray's max_retries)
    max_retries: int = at_least(0, 3)


@dataclass
class RunConfig:
    jobs: int = at_least(1, 2)
    # stage kinds (or kind@target) to rebuild even when cached; "all" forces everything
    force: list[str] = field(default_factory=list)
    dry_run: bool = False
    # build only these targets (default: every target of the recipe)
    targets: list[str] = field(default_factory=list)
    artifacts_dir: str = "artifacts"
    cache_dir: str = "${run.artifacts_dir}/.cache"
    # a shared cache behind cache_dir (s3://bucket/prefix, gs://..., file:///path: any fsspec
    # protocol); credentials come from the environment, never from the recipe
    cache_url: str | None = None
    progress: bool = True
    # bundle versions kept per bundle under artifacts/<recipe>/.versions/, the live one included
    keep_bundles: int = 3
    # a run refuses to start (exit 5) with less free space than this in either directory
    min_free_mb: float = 64
    executor: Executor = Executor.local
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class StageEntry:
    """One node of a recipe's declared graph: ``stages.<name>``."""

    kind: str = MISSING  # a registered stage kind (``export``, ``quantize``, or a team's own)
    # input slot of the kind -> name of the stage that feeds it
    inputs: dict[str, str] = field(default_factory=dict)
    # the kind's settings, checked against its params dataclass when the plan is built; a
    # stage named like a top-level section (``quantize:``) also takes that section's values
    params: dict[str, Any] = field(default_factory=dict)
    # false: always rebuild this stage (its output is never looked up in the cache)
    cache: bool = True


# the recipe's own top-level keys; the others are the sections of stage kinds (quantize, ...)
CORE_SECTIONS = ("name", "description", "model", "dataset", "targets", "stages", "run")


def recipe_schema(kinds: dict[str, Any]) -> dict[str, Any]:
    """The typed sections of a recipe: its own, and those of the kinds that have one.

    The root stays a plain mapping of typed sections (not one dataclass), so installed kinds
    can add theirs; the plan rejects unknown top-level keys. It goes into the primary config
    itself, not into separate schema entries: each defaults entry costs a config load and
    merge on every run, and a cached rebuild is mostly Hydra's composition.
    """
    from omegaconf import DictConfig

    sections: dict[str, Any] = {
        "name": MISSING, "description": "",
        "model": ModelConfig, "dataset": DatasetConfig, "run": RunConfig,
        "targets": DictConfig({}, key_type=str, element_type=TargetConfig),
        "stages": DictConfig({}, key_type=str, element_type=StageEntry)}
    for kind, spec in sorted(kinds.items()):
        if spec.section and spec.params is not None:
            sections[kind] = spec.params
    return sections
