"""What a target's runtime can load: opset and IR range, static shapes, the ORT-format model.

A model outside the target's ``requires`` range is a recipe error (exit 2), not bad input: the
pipeline made the model from the recipe, and the fix is a recipe change (``export.opset``, the
quantize settings or the target profile), so the message names those keys.
"""

from __future__ import annotations

import heapq
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError, StageError
from stages.common import onnx_files

if TYPE_CHECKING:
    import onnx

DEFAULT_DOMAIN = "ai.onnx"
ORT_FILE = "model.ort"
# ORT format version -> first onnxruntime that loads it; onnxruntime loads older format
# versions but never newer ones (docs: ort-format-models.html "Backwards Compatibility";
# v6 arrived in 1.16, microsoft/onnxruntime#20670)
ORT_FORMAT_MIN_RUNTIME = {"5": "1.13", "6": "1.16"}
# mobile targets run on ARM: lets the converter pick ARM-specific layouts (QDQ int8, NHWC)
ORT_TARGET_PLATFORM = "arm"


def check_versions(model: onnx.ModelProto, requires: Any, target: str) -> None:
    """Refuse a model whose ai.onnx opset or IR version the target's runtime cannot load."""
    opset = _opsets(model).get(DEFAULT_DOMAIN)
    key = f"targets.{target}.requires"
    if opset is not None and not requires.min_opset <= opset <= requires.max_opset:
        bound = "max_opset" if opset > requires.max_opset else "min_opset"
        ops = _ops_beyond(model, opset, requires) if bound == "max_opset" else _op_names(model)
        raise RecipeError(
            f"{key}.{bound}: target '{target}' loads ai.onnx opsets {requires.min_opset} to "
            f"{requires.max_opset}, but the model is opset {opset}. {ops} Export at an opset in "
            f"range (export.opset) or use a target whose runtime takes opset {opset}.")
    if model.ir_version > requires.max_ir_version:
        raise RecipeError(
            f"{key}.max_ir_version: target '{target}' loads ONNX IR versions up to "
            f"{requires.max_ir_version}, but the model has IR version {model.ir_version} (ops "
            f"{_op_names(model, limit=6)}). Its runtime is older than the exporter that wrote "
            "the model; pin an older onnx, or target a newer runtime.")


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {(o.domain or DEFAULT_DOMAIN): o.version for o in model.opset_import}


def _ops_beyond(model: onnx.ModelProto, opset: int, requires: Any) -> str:
    """Name the ops whose definition is newer than the highest opset the target takes."""
    from onnx import defs

    newer = {}
    for node in model.graph.node:
        if (node.domain or DEFAULT_DOMAIN) != DEFAULT_DOMAIN:
            continue
        try:
            since = defs.get_schema(node.op_type, opset, "").since_version
        except defs.SchemaError:
            continue
        if since > requires.max_opset:
            newer[f"{DEFAULT_DOMAIN}:{node.op_type}"] = since
    if not newer:
        return (f"No op in it changed after opset {requires.max_opset}: stamping the model "
                f"with opset {requires.max_opset} (export.opset) would load.")
    listed = ", ".join(f"{op} (opset {since})" for op, since in sorted(newer.items()))
    return f"Ops defined after opset {requires.max_opset}: {listed}."


def _op_names(model: onnx.ModelProto, limit: int = 12) -> str:
    names = sorted({f"{n.domain or DEFAULT_DOMAIN}:{n.op_type}" for n in model.graph.node})
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def drop_unused_opsets(model: onnx.ModelProto) -> list[str]:
    """Remove opset imports of domains no node uses; an older runtime may refuse one anyway."""
    used = {node.domain or DEFAULT_DOMAIN for node in model.graph.node} | {DEFAULT_DOMAIN}
    dropped = [o.domain for o in model.opset_import if (o.domain or DEFAULT_DOMAIN) not in used]
    keep = [o for o in model.opset_import if (o.domain or DEFAULT_DOMAIN) in used]
    del model.opset_import[:]
    model.opset_import.extend(keep)
    return sorted(dropped)


def sort_nodes(model: onnx.ModelProto) -> bool:
    """Put the nodes in topological order, in place; True when they were not.

    onnx requires it and tools walking the graph (the checker, onnxruntime's usability checker)
    depend on it; onnxruntime itself sorts on load, so an unsorted model can pass validation.
    (The float16 converter appends its input casts last.)
    """
    nodes = list(model.graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
    waiting = [{producer[i] for i in node.input if i in producer} for node in nodes]
    consumers: dict[int, list[int]] = {}
    for index, needs in enumerate(waiting):
        for need in needs:
            consumers.setdefault(need, []).append(index)
    # Kahn's algorithm, always taking the earliest ready node: a sorted graph keeps its order
    queue = [i for i, needs in enumerate(waiting) if not needs]
    order = []
    while queue:
        index = heapq.heappop(queue)
        order.append(index)
        for consumer in consumers.get(index, []):
            waiting[consumer].discard(index)
            if not waiting[consumer]:
                heapq.heappush(queue, consumer)
    if len(order) != len(nodes) or order == sorted(order):
        return False  # already sorted, or a cycle: leave the order alone
    copies = [type(nodes[i])() for i in order]
    for copy, index in zip(copies, order, strict=True):
        copy.CopyFrom(nodes[index])
    del model.graph.node[:]
    model.graph.node.extend(copies)
    return True


def fix_shapes(model: onnx.ModelProto, requires: Any, target: str) -> dict[str, int]:
    """Give every dynamic input dimension its ``requires.fixed_dims`` size, in place.

    Uses onnxruntime's own helpers (the ``make_dynamic_shape_fixed`` tool), then infers the
    intermediate and output shapes again so no symbolic dimension is left behind.
    """
    import onnx
    from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed

    wanted = _dynamic_dims(model, target)
    sizes = dict(requires.fixed_dims)
    missing = sorted(set(wanted) - set(sizes))
    if missing:
        where = "; ".join(f"'{name}' ({wanted[name]})" for name in missing)
        raise RecipeError(
            f"targets.{target}.requires.fixed_dims: target '{target}' needs static shapes, "
            f"but no size is given for the dynamic dimension(s) {where}. Add e.g. "
            f"fixed_dims: {{{missing[0]}: 1}} to the target.")
    for name in sorted(wanted):
        make_dim_param_fixed(model.graph, name, int(sizes[name]))
    del model.graph.value_info[:]
    inferred = onnx.shape_inference.infer_shapes(model)
    model.graph.value_info.extend(inferred.graph.value_info)
    fix_output_shapes(model)
    return {name: int(sizes[name]) for name in sorted(wanted)}


def _dynamic_dims(model: onnx.ModelProto, target: str) -> dict[str, str]:
    """Named dynamic dimensions of the graph inputs -> where they occur."""
    initializers = {t.name for t in model.graph.initializer}
    found: dict[str, str] = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            if not dim.dim_param:
                raise RecipeError(
                    f"targets.{target}.requires.static_shapes: input '{value.name}' axis "
                    f"{axis} is dynamic and unnamed, so fixed_dims cannot size it; name it "
                    "in model.inputs (a string in its shape) and re-export.")
            found.setdefault(dim.dim_param, f"input '{value.name}' axis {axis}")
    return found


def save(model: onnx.ModelProto, directory: Path) -> Path:
    """Replace the model files of ``directory`` with ``model``.

    The old files go first: onnx appends external data to an existing weights file.
    """
    for file in onnx_files.model_files(directory):
        file.unlink()
    return onnx_files.save_model(model, directory)


def convert_to_ort(model_path: Path, out: Path, style: str) -> tuple[Path, onnx.ModelProto]:
    """Convert with onnxruntime's own tool; returns model.ort and the ONNX graph it holds.

    The tool runs in a subprocess: it prints progress and sets global session state, and
    stages run in threads beside each other. The graph returned is what model.ort stores: for
    the "fixed" style the tool's optimized ONNX twin; for "runtime" the graph after basic
    optimizations (the Q/DQ nodes a compiling EP takes stay; the saved runtime optimizations
    apply later, only to what the EP leaves), as onnxruntime's usability checker prepares it.
    """
    import onnx
    from onnxruntime.tools.onnx_model_utils import optimize_model

    with tempfile.TemporaryDirectory(dir=out, prefix=".ort-") as tmp:
        work = Path(tmp)
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort",
               str(model_path), "--output_dir", str(work), "--optimization_style",
               style.capitalize(), "--target_platform", ORT_TARGET_PLATFORM,
               *(["--save_optimized_onnx_model"] if style == "fixed" else [])]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
        converted = sorted(work.glob("*.ort"))
        if proc.returncode != 0 or len(converted) != 1:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise StageError(f"convert_onnx_models_to_ort failed on {model_path.name} (exit "
                             f"{proc.returncode}): {' | '.join(tail)}")
        if style == "fixed":
            stored = next(work.glob("*.optimized.onnx"))
        else:
            stored = work / "basic.onnx"
            optimize_model(model_path, stored)
        graph = onnx.load(str(stored), load_external_data=False)
        return converted[0].replace(out / ORT_FILE), graph


def ort_format_version(path: Path) -> str:
    """The ORT format version a model.ort was written in (its flatbuffer header field)."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    session = InferenceSession.InferenceSession.GetRootAsInferenceSession(path.read_bytes(), 0)
    return (session.OrtVersion() or b"").decode()


def check_ort_runtime(format_version: str, runtime: Any, target: str) -> str:
    """The lowest onnxruntime that loads ``format_version``; refuse a runtime range below it."""
    import onnxruntime

    needed = ORT_FORMAT_MIN_RUNTIME.get(format_version, onnxruntime.__version__)
    lowest = _lowest_version(runtime.version)
    if lowest is None or _version(lowest) < _version(needed):
        raise RecipeError(
            f"targets.{target}.runtime.version: model.ort is ORT format v{format_version} "
            f"(written by onnxruntime {onnxruntime.__version__}), which onnxruntime loads from "
            f"{needed} on, but the target allows '{runtime.version or 'any version'}'. Set a "
            f"range starting at {needed} or later, e.g. '>={needed}'.")
    return needed


def _lowest_version(spec: str) -> str | None:
    from packaging.specifiers import SpecifierSet

    bounds = [s.version for s in SpecifierSet(spec) if s.operator in (">=", ">", "==", "~=")]
    return max(bounds, key=_version) if bounds else None


def _version(text: str) -> Any:
    from packaging.version import Version

    return Version(text.rstrip(".*"))


def check_ort_loads(path: Path) -> list[str]:
    """Load model.ort in this onnxruntime (CPU EP); returns its input names."""
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph classes
        raise StageError(f"{path.name} does not load in onnxruntime "
                         f"{onnxruntime.__version__}: {exc}") from exc
    return [i.name for i in session.get_inputs()]
