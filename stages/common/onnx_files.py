"""Reading and writing ONNX models as a directory: ``model.onnx`` plus its external data.

Every stage output that holds a model uses this layout, so the weights file a large model
needs travels with it through every stage, checksum and bundle.
"""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError

if TYPE_CHECKING:
    import onnx

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
# below this many initializer bytes a model stays one file
EXTERNAL_DATA_THRESHOLD = 1 << 20
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inside model.onnx


def model_file(directory: Path) -> Path:
    return directory / MODEL_FILE


def external_data_files(path: Path) -> list[Path]:
    """Files that ``path`` references as external data, refusing any outside its folder.

    Refuses absolute locations, ``..`` segments and symlinks before any tensor is read, so a
    crafted model cannot make us read (or copy into a bundle) a file elsewhere on the machine.
    """
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    folder = path.parent.resolve()
    found: dict[str, Path] = {}
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        location = ExternalDataInfo(tensor).location
        candidate = path.parent / location
        if (
            Path(location).is_absolute()
            or ".." in Path(location).parts
            or candidate.is_symlink()
            or not candidate.resolve().is_relative_to(folder)
        ):
            raise InputError(
                f"{path}: tensor '{tensor.name}' keeps its data at '{location}', outside the "
                "model's folder; external data must be a plain file beside the model."
            )
        if not candidate.is_file():
            raise InputError(f"{path}: external data file '{location}' is missing.")
        found[location] = candidate
    return [found[name] for name in sorted(found)]


def load_model(path: Path) -> onnx.ModelProto:
    """Load a model with its external data, after checking where that data lives."""
    if not path.is_file():
        raise InputError(f"{path}: ONNX model not found.")
    import onnx

    external_data_files(path)
    return onnx.load(str(path), load_external_data=True)


def save_model(model: onnx.ModelProto, directory: Path) -> Path:
    """Write ``model`` as ``directory/model.onnx`` (+ ``model.onnx.data`` when large)."""
    import onnx
    from onnx.external_data_helper import _get_initializer_tensors, set_external_data

    directory.mkdir(parents=True, exist_ok=True)
    target = model_file(directory)
    weights = directory / WEIGHTS_FILE
    weights.unlink(missing_ok=True)  # onnx appends to a data file that is already there
    if sum(t.ByteSize() for t in model.graph.initializer) > EXTERNAL_DATA_THRESHOLD:
        # marked here, not by save_as_external_data: onnx then refuses to save when the
        # *working directory* holds a file named model.onnx.data (it checks the location
        # relative to the cwd, onnx 1.x), as a user's model folder may
        for tensor in _get_initializer_tensors(model):
            if tensor.HasField("raw_data") and len(tensor.raw_data) >= EXTERNAL_MIN_BYTES:
                set_external_data(tensor, WEIGHTS_FILE)
    onnx.save_model(model, str(target))  # writes the marked tensors beside the model
    return target


def model_files(directory: Path) -> list[Path]:
    """``model.onnx`` of ``directory`` and every external data file it references."""
    path = model_file(directory)
    return [path, *external_data_files(path)]


def copy_model(source: Path, destination: Path) -> Path:
    """Copy the model of directory ``source`` (with its external data) into ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for file in model_files(source):
        shutil.copyfile(file, destination / file.name)
    return model_file(destination)


def model_size(directory: Path) -> int:
    """Bytes on disk of the model and its external data."""
    return sum(f.stat().st_size for f in model_files(directory))


def model_stats(directory: Path) -> dict[str, Any]:
    """Node count, op-type histogram and bytes on disk (external data included) of a model dir.

    Nodes of subgraphs (If/Loop/Scan bodies) count too. Ops outside the default ONNX domain
    are keyed ``domain:Op`` so contrib ops stand out.
    """
    import onnx

    size = model_size(directory)  # also refuses external data outside the folder
    model = onnx.load(str(model_file(directory)), load_external_data=False)
    ops: Counter[str] = Counter()
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            domain = node.domain if node.domain not in ("", "ai.onnx") else ""
            ops[f"{domain}:{node.op_type}" if domain else node.op_type] += 1
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else attribute.graphs)
    return {"nodes": sum(ops.values()), "size": size, "ops": dict(sorted(ops.items()))}


def default_opset(directory: Path) -> int:
    """The ai.onnx opset the model in ``directory`` imports."""
    import onnx

    model = onnx.load(str(model_file(directory)), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
