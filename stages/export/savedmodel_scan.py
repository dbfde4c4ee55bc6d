"""Refuse a SavedModel whose graph can touch files or run Python, before TensorFlow loads it.

``tf.saved_model.load`` restores the model and its functions run during export and parity:
a ``WriteFile`` in the serving function writes on the build host, a ``PyFunc`` runs Python.
So ``saved_model.pb`` is read with TensorFlow's protobufs (no graph is built) and every op of
every graph and function is checked against file, system and Python ops. A normal export has
``SaveV2``/``RestoreV2``/``MergeV2Checkpoints`` only in its saver, the functions that the
``saver_def`` nodes call: those ops are allowed there and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import InputError

if TYPE_CHECKING:
    from pathlib import Path

# ops that read, write, list or map files, log to files, or call back into Python
UNSAFE_OPS = frozenset({
    "ReadFile", "WriteFile", "MatchingFiles", "ImmutableConst",
    "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "Save", "SaveSlices", "SaveV2", "Restore", "RestoreSlice", "RestoreV2",
    "MergeV2Checkpoints", "LoadAndRemapMatrix",
    "WholeFileReader", "WholeFileReaderV2", "TextLineReader", "TextLineReaderV2",
    "TFRecordReader", "TFRecordReaderV2", "FixedLengthRecordReader",
    "FixedLengthRecordReaderV2", "LMDBReader", "IdentityReader", "IdentityReaderV2",
    "TFRecordDataset", "TFRecordDatasetV2", "TextLineDataset", "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2", "CSVDataset", "CSVDatasetV2", "ExperimentalCSVDataset",
    "SaveDataset", "SaveDatasetV2", "ExperimentalSaveDataset", "LoadDataset",
    "SnapshotDataset", "SnapshotDatasetV2", "CacheDataset", "CacheDatasetV2",
    "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "SqlDataset",
    "ExperimentalSqlDataset", "LMDBDataset", "ExperimentalLMDBDataset",
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteGraphSummary",
    "WriteRawProtoSummary", "ImportEvent", "FlushSummaryWriter", "CloseSummaryWriter",
    "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount",
    "DebugNumericSummary", "DebugNumericSummaryV2",
    "DecodeProtoV2", "EncodeProto",  # their descriptor_source may name a file
})
# what the saver of every SavedModel does with its checkpoint
SAVER_OPS = frozenset({"SaveV2", "RestoreV2", "MergeV2Checkpoints"})
CALL_ATTRS = ("f", "then_branch", "else_branch", "cond", "body", "branches")


def check_saved_model(directory: Path) -> None:
    """Raise InputError naming ``directory`` and the ops when its graph is unsafe to load."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    file = directory / "saved_model.pb"
    if not file.is_file():
        raise InputError(f"model.path: {directory} is not a SavedModel directory (it has no "
                         "saved_model.pb).")
    saved = saved_model_pb2.SavedModel()
    try:
        saved.ParseFromString(file.read_bytes())
    except DecodeError as exc:
        raise InputError(f"model.path: {file} is not a readable SavedModel: {exc}.") from exc
    found = sorted({f"{op} (in {where})" for meta in saved.meta_graphs
                    for op, where in unsafe_ops(meta)})
    if found:
        raise InputError(
            f"model.path: SavedModel {file} was refused before loading: its graph holds "
            f"{len(found)} op(s) that read or write files or run Python on the build host: "
            f"{', '.join(found)}. edgekiln loads only SavedModels whose functions compute on "
            "tensors; export the model without them (file I/O, tf.py_function, summaries).")


def unsafe_ops(meta: Any) -> list[tuple[str, str]]:
    """(op, graph or function name) of every unsafe op of one MetaGraphDef."""
    graph = meta.graph_def
    functions = {f.signature.name: f for f in graph.library.function}
    saver_nodes = {_node_name(meta.saver_def.save_tensor_name),
                   _node_name(meta.saver_def.restore_op_name)} - {""}
    saver = _closure([fn for node in graph.node if node.name in saver_nodes
                      for fn in _callees(node)], functions)
    # a saver function that a signature or the loaded object can also call is not the saver
    # any more: SaveV2 there would write a checkpoint wherever its caller says
    others = _closure([*(fn for node in graph.node if node.name not in saver_nodes
                         for fn in _callees(node)),
                       *meta.object_graph_def.concrete_functions], functions)
    saver -= others
    found = [(node.op, "the main graph") for node in graph.node if _unsafe(node, False)]
    for name, function in functions.items():
        found += [(node.op, name) for node in function.node_def
                  if _unsafe(node, name in saver)]
    return found


def _unsafe(node: Any, in_saver: bool) -> bool:
    if node.op == "PrintV2":  # tf.print may name a file as its output stream
        stream = node.attr["output_stream"].s.decode(errors="replace")
        return stream.startswith("file://")
    return node.op in UNSAFE_OPS and not (in_saver and node.op in SAVER_OPS)


def _closure(start: list[str], functions: dict[str, Any]) -> set[str]:
    """``start`` and every function they call, directly or not."""
    todo, seen = list(start), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        todo.extend(fn for node in functions[name].node_def for fn in _callees(node))
    return seen


def _callees(node: Any) -> list[str]:
    names = []
    for attr in CALL_ATTRS:
        if attr in node.attr:
            value = node.attr[attr]
            names += [value.func.name] if value.func.name else []
            names += [func.name for func in value.list.func]
    return names


def _node_name(tensor: str) -> str:
    return tensor.split(":", maxsplit=1)[0].lstrip("^")
