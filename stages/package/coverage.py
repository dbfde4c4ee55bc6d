"""Coverage before shipping: which nodes a target's execution providers take, which go to CPU.

The target's EPs are tried in priority order, as onnxruntime assigns nodes: the first takes
what it supports, the next what is left, and the CPU EP runs the rest. NNAPI and CoreML are
judged by onnxruntime's own mobile usability checker (its op lists ship with onnxruntime); other
EPs by their published operator tables (``op_support/*.json``, see ``op_tables``). Partition
counts come from the checker's estimate of onnxruntime's partitioning. ``Constant`` nodes are
left out: onnxruntime turns them into initializers before any EP sees the graph.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import GateError, RecipeError
from stages.common.op_tables import DEFAULT_DOMAIN, OpTable, tables

if TYPE_CHECKING:
    import onnx

CPU = "CPUExecutionProvider"
MOBILE = {"NnapiExecutionProvider", "CoreMLExecutionProvider"}
LISTED = 20  # fallback nodes named in a gate failure; coverage.json lists them all


def report(model: onnx.ModelProto, target: Any, name: str) -> dict[str, Any]:
    """The coverage of ``model`` on target ``name`` (its section of the recipe)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(model)  # element types and shapes for the checks
    nodes = [n for n in model.graph.node if not _is_constant(n)]
    providers = [ep.name for ep in target.execution_providers]
    first = providers[0]
    result: dict[str, Any] = {
        "target": name, "execution_providers": providers, "first_choice": first,
        "nodes": len(nodes), "constant_nodes": len(model.graph.node) - len(nodes)}
    if first == CPU:
        return result | _all_on_cpu(nodes)
    checkers = {ep: _checker(ep, model, target) for ep in dict.fromkeys(providers) if ep != CPU}
    if checkers[first] is None:
        known = ", ".join(sorted({*tables(), *MOBILE}))
        return result | {"method": "none", "checked": False,
                         "note": f"no operator table is kept for {first} (tables: {known})"}
    return result | _place(nodes, providers, checkers)


def _all_on_cpu(nodes: list[onnx.NodeProto]) -> dict[str, Any]:
    return {"method": "cpu", "checked": True, "source": tables()[CPU].describe(),
            "on_first_choice": len(nodes), "partitions": 1,
            "by_provider": {CPU: len(nodes)}, "cpu_fallback_nodes": 0, "fallback": [],
            "unsupported_ops": [], "caveats": []}


def _place(nodes: list[onnx.NodeProto], providers: list[str],
           checkers: dict[str, Any]) -> dict[str, Any]:
    first = checkers[providers[0]]
    placed: dict[int, str] = {}
    for ep in providers:
        checker = checkers.get(ep)
        for node in nodes:
            if id(node) not in placed and (ep == CPU or (checker and checker.takes(node))):
                placed[id(node)] = ep
    fallback = [{"name": n.name, "op_type": f"{n.domain or DEFAULT_DOMAIN}:{n.op_type}",
                 "reason": first.reason(n), "runs_on": placed.get(id(n), CPU)}
                for n in nodes if placed.get(id(n)) != providers[0]]
    by_provider = {ep: sum(1 for n in nodes if placed.get(id(n), CPU) == ep)
                   for ep in dict.fromkeys([*providers, CPU])}
    return {"method": first.method, "checked": True, "source": first.describe(),
            "on_first_choice": by_provider[providers[0]], "partitions": first.partitions,
            "by_provider": by_provider, "cpu_fallback_nodes": by_provider[CPU],
            "fallback": fallback,
            "unsupported_ops": sorted({f["op_type"] for f in fallback}),
            "caveats": first.caveats()}


def _checker(provider: str, model: onnx.ModelProto, target: Any) -> Any:
    if provider in MOBILE:
        options = next(ep.options for ep in target.execution_providers if ep.name == provider)
        return MobileChecker(provider, model, dict(options or {}))
    table = tables().get(provider)
    return TableChecker(table, model) if table else None


def _is_constant(node: onnx.NodeProto) -> bool:
    return node.op_type == "Constant" and (node.domain or DEFAULT_DOMAIN) == DEFAULT_DOMAIN


class TableChecker:
    """An EP judged by its published table; also the op checker onnxruntime's estimate takes."""

    method = "op_support_table"

    def __init__(self, table: OpTable, model: onnx.ModelProto) -> None:
        from onnxruntime.tools.mobile_helpers import usability_checker

        self.table = table
        self.opsets = {(o.domain or DEFAULT_DOMAIN): o.version for o in model.opset_import}
        self.types = _element_types(model)
        self.initializers = {t.name: t for t in model.graph.initializer}
        self.seen: set[str] = set()
        info = usability_checker.check_partitioning(model.graph, self, False)
        self.taken = {id(n) for group in info.supported_groups for n in group}
        self.partitions = info.num_partitions

    def takes(self, node: onnx.NodeProto) -> bool:
        return id(node) in self.taken

    def is_op_supported(self, node: onnx.NodeProto) -> bool:
        return self.reason(node) is None

    def reason(self, node: onnx.NodeProto) -> str | None:
        """Why the EP would not take ``node``; None when it would."""
        if _is_constant(node):
            return None
        domain = node.domain or DEFAULT_DOMAIN
        entry = self.table.entry(domain, node.op_type)
        if entry is None:
            return f"{domain}:{node.op_type} is not in {self.table.execution_provider}'s table"
        self.seen.add(node.op_type)
        for check in (self._opset, self._version, self._type, self._zero_point):
            why = check(node, domain, entry)
            if why:
                return why
        return None

    def _opset(self, node: onnx.NodeProto, domain: str, entry: dict[str, Any]) -> str | None:
        low, high = self.table.opset.get(domain, (0, 10**6))
        opset = self.opsets.get(domain, 0)
        return None if low <= opset <= high else f"{domain} opset {opset} outside {low}..{high}"

    def _version(self, node: onnx.NodeProto, domain: str, entry: dict[str, Any]) -> str | None:
        from onnx import defs

        if "since" not in entry and "until" not in entry:
            return None
        opset = self.opsets.get(domain, 1)
        version = opset
        if domain == DEFAULT_DOMAIN:
            try:
                version = defs.get_schema(node.op_type, opset, "").since_version
            except defs.SchemaError:
                return None
        since, until = entry.get("since", 1), entry.get("until", 10**6)
        if since <= version <= until:
            return None
        last = entry.get("until", "")
        return f"{node.op_type} version {version} is outside the EP's versions {since}..{last}"

    def _type(self, node: onnx.NodeProto, domain: str, entry: dict[str, Any]) -> str | None:
        given = next((self.types.get(i) for i in node.input if i), None)
        allowed = entry.get("types")
        if allowed is None or given is None or given in allowed:
            return None
        return f"input type {given} not in {', '.join(allowed)}"

    def _zero_point(self, node: onnx.NodeProto, domain: str, entry: dict[str, Any]) -> str | None:
        from onnx import numpy_helper
        from onnx.external_data_helper import uses_external_data

        if entry.get("zero_point") is None or len(node.input) < 3:
            return None
        tensor = self.initializers.get(node.input[2])
        if tensor is None or uses_external_data(tensor):
            return None
        if (numpy_helper.to_array(tensor) != entry["zero_point"]).any():
            return f"zero point is not {entry['zero_point']}"
        return None

    def caveats(self) -> list[str]:
        return [f"{DEFAULT_DOMAIN}:{op}: {e['caveat']}" for op in sorted(self.seen)
                if (e := self.table.entry(DEFAULT_DOMAIN, op)) and "caveat" in e]

    def get_caveats(self) -> list[str]:
        return self.caveats()

    def describe(self) -> dict[str, str]:
        return self.table.describe()


class MobileChecker:
    """NNAPI or CoreML, judged by onnxruntime's mobile usability checker (static shapes)."""

    method = "mobile_usability_checker"

    def __init__(self, provider: str, model: onnx.ModelProto, options: dict[str, Any]) -> None:
        from onnxruntime.tools.mobile_helpers import usability_checker

        if provider == "NnapiExecutionProvider":
            self.ops_file = "nnapi_supported_ops.md"
            self.info = usability_checker.check_nnapi_partitions(model, True)
        else:
            kind = "mlprogram" if options.get("ModelFormat") == "MLProgram" else "neuralnetwork"
            self.ops_file = f"coreml_supported_{kind}_ops.md"
            self.info = usability_checker.check_coreml_partitions(model, True, self.ops_file)
        self.provider = provider
        self.taken = {id(n) for group in self.info.supported_groups for n in group}
        self.partitions = self.info.num_partitions

    def takes(self, node: onnx.NodeProto) -> bool:
        return id(node) in self.taken

    def reason(self, node: onnx.NodeProto) -> str:
        op = f"{node.domain or DEFAULT_DOMAIN}:{node.op_type}"
        if not self.info.supported_ops_checker.is_op_supported(node):
            return f"{op} is not in onnxruntime's {self.ops_file}"
        return "an input has a dynamic shape or a rank the EP does not take"

    def caveats(self) -> list[str]:
        return [" ".join(c.split()) for c in self.info.supported_ops_checker.get_caveats()]

    def describe(self) -> dict[str, str]:
        import onnxruntime

        return {"tool": "onnxruntime.tools.mobile_helpers.usability_checker",
                "ops_file": f"onnxruntime/tools/mobile_helpers/{self.ops_file}",
                "version": f"onnxruntime {onnxruntime.__version__}"}


def _element_types(model: onnx.ModelProto) -> dict[str, str]:
    from onnx import TensorProto

    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values
             if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type}
    types |= {t.name: t.data_type for t in model.graph.initializer}
    return {name: TensorProto.DataType.Name(t).lower() for name, t in types.items()}


def gate(coverage: dict[str, Any], limit: int | None, target: str) -> None:
    """Fail the build when more than ``limit`` nodes would run on the CPU EP."""
    if limit is None:
        return
    if not coverage.get("checked"):
        raise RecipeError(f"package.max_cpu_fallback_nodes: set to {limit}, but target "
                          f"'{target}' cannot be checked: {coverage['note']}.")
    on_cpu = [f for f in coverage["fallback"] if f["runs_on"] == CPU]
    if len(on_cpu) <= limit:
        return
    named = ", ".join(f"{f['name'] or '(unnamed)'} ({f['op_type']})" for f in on_cpu[:LISTED])
    more = f" and {len(on_cpu) - LISTED} more" if len(on_cpu) > LISTED else ""
    raise GateError(
        f"target '{target}': {len(on_cpu)} of {coverage['nodes']} nodes would fall back to "
        f"{CPU} ({coverage['first_choice']} takes {coverage['on_first_choice']}), more than "
        f"package.max_cpu_fallback_nodes={limit}: {named}{more}. coverage.json says why for "
        "each; change the model or the target's quantize settings, or raise the gate.")
