"""Coverage before shipping, version checks and target profiles, on real tiny ONNX graphs.

The graphs are built with onnx.helper (no framework), so each test runs in milliseconds; the
package stage is called as the executor calls it, with the target section of a real profile.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import pytest
from omegaconf import OmegaConf
from onnx import TensorProto, helper, numpy_helper

from pipeline import plan
from pipeline.errors import GateError, RecipeError
from pipeline.schema import TargetConfig
from stages.common.onnx_files import save_model
from stages.common.op_tables import tables
from stages.package import coverage
from stages.package import fit as compat
from stages.package.stage import package

if TYPE_CHECKING:
    from collections.abc import Callable

TARGETS = Path(__file__).resolve().parents[3] / "recipes" / "target"
INPUTS = [{"name": "image", "dtype": "float32", "shape": ["batch", 3, 16, 16],
           "low": 0.0, "high": 1.0}]


def target_section(profile: str, **changes: Any) -> dict[str, Any]:
    """A target's section as the executor hands it to a stage: schema defaults, the profile's
    YAML, ``changes`` on top, enums as strings, plus its name."""
    merged = OmegaConf.merge(OmegaConf.structured(TargetConfig),
                             OmegaConf.load(TARGETS / f"{profile}.yaml"), changes)
    return {**OmegaConf.to_container(merged, resolve=True, enum_to_str=True), "name": profile}


def package_config(target: dict[str, Any], gate: int | None = None) -> dict[str, Any]:
    return {"target": target, "model": {"name": "tiny", "inputs": INPUTS},
            "package": {"archive": False, "max_cpu_fallback_nodes": gate}}


def conv_net(opset: int = 18) -> onnx.ModelProto:
    """image -> Conv -> HardSwish -> GlobalAveragePool -> Flatten -> Gemm -> logits."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)
               for name, shape in (("w", (8, 3, 3, 3)), ("fc", (10, 8)))]
    nodes = [helper.make_node("Conv", ["image", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["c"], ["h"], name="hswish"),
             helper.make_node("GlobalAveragePool", ["h"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT,
                                                      ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=10)
    onnx.checker.check_model(model)
    return model


def qdq_conv(zero_point: int, dtype: int) -> onnx.ModelProto:
    """A QDQ Conv: activation Q->DQ and weight DQ in ``dtype`` with ``zero_point``."""
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    weight = np.ones((4, 3, 3, 3), dtype=np_type)
    inits = [numpy_helper.from_array(weight, "wq"),
             numpy_helper.from_array(np.array(0.02, np.float32), "s"),
             numpy_helper.from_array(np.array(zero_point, np_type), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["x"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["wq", "s", "zp"], ["w"], name="dq_w"),
             helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
    graph = helper.make_graph(
        nodes, "qdq", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def compose_with_target(profile: str) -> Any:
    """digits_torch with the target profile added, composed by Hydra as the CLI does."""
    from hydra import compose, initialize_config_dir

    from pipeline.cli import BUNDLED_RECIPES, register_primary_config

    register_primary_config()
    with initialize_config_dir(config_dir=str(BUNDLED_RECIPES), version_base="1.3"):
        return compose(config_name="edgekiln", overrides=[
            "recipe=digits_torch", f"+target@targets.{profile}={profile}",
            f"run.targets=[{profile}]"])


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Callable[..., Path]:
    def write(model: onnx.ModelProto | None = None) -> Path:
        return save_model(model or conv_net(), tmp_path / "quantized").parent
    return write


def as_config(section: dict[str, Any]) -> Any:
    return OmegaConf.create(section)


def test_every_published_table_names_its_source_and_version() -> None:
    found = tables()
    assert {"CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
            "OpenVINOExecutionProvider", "QNNExecutionProvider",
            "XnnpackExecutionProvider"} <= set(found)
    for table in found.values():
        assert table.source.startswith("https://")
        assert table.version
        assert table.all_ops or table.ops


def test_an_op_missing_from_the_ep_table_is_reported_as_cpu_fallback() -> None:
    report = coverage.report(conv_net(), as_config(target_section("intel_cpu_openvino")), "ov")
    assert report["method"] == "op_support_table"
    assert report["source"]["file"] == "op_support/openvino.json"
    assert (report["nodes"], report["on_first_choice"], report["cpu_fallback_nodes"]) == (5, 4, 1)
    assert report["partitions"] == 2  # HardSwish splits the OpenVINO graph in two
    assert report["fallback"] == [{
        "name": "hswish", "op_type": "ai.onnx:HardSwish", "runs_on": "CPUExecutionProvider",
        "reason": "ai.onnx:HardSwish is not in OpenVINOExecutionProvider's table"}]
    assert report["unsupported_ops"] == ["ai.onnx:HardSwish"]


def test_nodes_the_first_ep_rejects_cascade_to_the_next_before_cpu() -> None:
    report = coverage.report(conv_net(), as_config(target_section("arm64_cpu")), "arm")
    assert report["by_provider"] == {"XnnpackExecutionProvider": 2, "CPUExecutionProvider": 3}
    assert {f["name"] for f in report["fallback"]} == {"hswish", "gap", "flat"}
    assert any("Conv: 2D only" in caveat for caveat in report["caveats"])
    jetson = coverage.report(conv_net(), as_config(target_section("jetson_orin")), "orin")
    assert jetson["by_provider"]["TensorrtExecutionProvider"] == 5
    assert jetson["cpu_fallback_nodes"] == 0
    assert jetson["fallback"] == []


@pytest.mark.parametrize(("zero_point", "dtype", "reasons"), [
    pytest.param(0, TensorProto.INT8, {}, id="int8-symmetric"),
    pytest.param(3, TensorProto.INT8, {n: "zero point is not 0" for n in ("q", "dq_x", "dq_w")},
                 id="int8-asymmetric"),
    pytest.param(128, TensorProto.UINT8, {"q": "zero point is not 0", **{
        n: "input type uint8 not in float4e2m1, float8e4m3fn, int4, int8"
        for n in ("dq_x", "dq_w")}}, id="uint8"),
])
def test_tensorrt_takes_only_symmetric_int8_qdq(zero_point: int, dtype: int,
                                                reasons: dict[str, str]) -> None:
    target = as_config(target_section("jetson_orin"))
    report = coverage.report(qdq_conv(zero_point, dtype), target, "orin")
    assert {f["name"]: f["reason"] for f in report["fallback"]} == reasons
    # what TensorRT rejects, CUDA takes: nothing reaches the CPU
    assert report["cpu_fallback_nodes"] == 0


def test_cpu_target_reports_every_node_on_cpu() -> None:
    report = coverage.report(conv_net(), as_config(target_section("x86_cpu")), "cpu")
    assert (report["method"], report["on_first_choice"], report["fallback"]) == ("cpu", 5, [])


def test_gate_fails_the_build_naming_target_and_nodes(context_factory: Any,
                                                      tiny_dir: Callable[..., Path]) -> None:
    section = target_section("intel_cpu_openvino")
    ctx = context_factory(package_config(section, gate=0), inputs={"model": tiny_dir()},
                          target="intel_cpu_openvino")
    with pytest.raises(GateError, match=r"target 'intel_cpu_openvino': 1 of 5 nodes would fall "
                       r"back to CPUExecutionProvider \(OpenVINOExecutionProvider takes 4\), "
                       r"more than package.max_cpu_fallback_nodes=0: hswish \(ai.onnx:HardSwish"):
        package(ctx)
    ctx = context_factory(package_config(section, gate=1), "ok", inputs={"model": tiny_dir()},
                          target="intel_cpu_openvino")
    summary = package(ctx)
    assert summary["coverage"]["cpu_fallback_nodes"] == 1
    written = json.loads((ctx.out / "coverage.json").read_text())
    assert written["fallback"][0]["name"] == "hswish"
    assert written["model"] == "model.onnx"
    providers = json.loads((ctx.out / "providers.json").read_text())
    assert providers["session"]["graph_optimization_level"] == "disable_all"
    assert providers["runtime"]["distribution"] == "onnxruntime-openvino"


def test_opset_beyond_the_target_range_names_the_ops_and_versions(
        context_factory: Any, tiny_dir: Callable[..., Path]) -> None:
    section = target_section("x86_cpu", requires={"max_opset": 13})
    ctx = context_factory(package_config(section), inputs={"model": tiny_dir()}, target="cpu")
    with pytest.raises(RecipeError, match=r"targets.cpu.requires.max_opset: target 'cpu' loads "
                       r"ai.onnx opsets 7 to 13, but the model is opset 18. Ops defined after "
                       r"opset 13: ai.onnx:HardSwish \(opset 14\)\."):
        package(ctx)


def test_opset_imports_no_node_uses_are_dropped() -> None:
    model = conv_net()
    model.opset_import.extend([helper.make_opsetid("ai.onnx.ml", 5),
                               helper.make_opsetid("com.microsoft.nchwc", 1)])
    assert compat.drop_unused_opsets(model) == ["ai.onnx.ml", "com.microsoft.nchwc"]
    assert [(o.domain, o.version) for o in model.opset_import] == [("", 18)]


def test_nodes_out_of_topological_order_are_sorted() -> None:
    model = conv_net()
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([nodes[-1], *nodes[:-1]])  # the Gemm first, as fp16 casts end up
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    assert compat.sort_nodes(model) is True
    onnx.checker.check_model(model)
    assert [n.name for n in model.graph.node] == [n.name for n in conv_net().graph.node]
    assert compat.sort_nodes(model) is False


def test_ir_version_beyond_the_target_names_both_versions() -> None:
    requires = as_config(target_section("x86_cpu", requires={"max_ir_version": 8}))["requires"]
    with pytest.raises(RecipeError, match=r"max_ir_version: target 'cpu' loads ONNX IR versions "
                       r"up to 8, but the model has IR version 10 \(ops ai.onnx:Conv"):
        compat.check_versions(conv_net(), requires, "cpu")


def test_static_shapes_need_a_size_for_each_dynamic_dimension() -> None:
    section = target_section("android_nnapi")
    section["requires"]["fixed_dims"] = {}
    with pytest.raises(RecipeError, match=r"targets.phone.requires.fixed_dims: .* dynamic "
                       r"dimension\(s\) 'batch' \(input 'image' axis 0\)"):
        compat.fix_shapes(conv_net(), as_config(section)["requires"], "phone")


def test_an_ort_runtime_range_older_than_the_format_is_refused() -> None:
    runtime = as_config({"distribution": "onnxruntime-android", "version": ">=1.14,<2"})
    with pytest.raises(RecipeError, match=r"runtime.version: model.ort is ORT format v6 .* "
                       r"loads from 1.16 on, but the target allows '>=1.14,<2'"):
        compat.check_ort_runtime("6", runtime, "phone")
    assert compat.check_ort_runtime("6", as_config({"version": ">=1.20"}), "phone") == "1.16"


# the model variant each profile asks the quantize stage for (its `quantize:` overrides)
VARIANTS = {
    "jetson_orin": ("static", "int8", "int8", True), "cuda": ("fp16", "uint8", "int8", False),
    "intel_cpu_openvino": ("static", "uint8", "int8", False),
    "x86_cpu": ("static", "uint8", "int8", False), "arm64_cpu": ("none", "uint8", "int8", False),
    "android_nnapi": ("static", "uint8", "int8", False),
    "ios_coreml": ("none", "uint8", "int8", False),
    "qualcomm_qnn": ("static", "uint16", "uint8", False),
}
# the auto candidates of digits_torch (image input) on each profile: only the CPU EP gets two
CANDIDATES = {"x86_cpu": ["static", "static_per_tensor"], "jetson_orin": ["static"],
              "intel_cpu_openvino": ["static"], "android_nnapi": ["static"],
              "qualcomm_qnn": ["static"]}


@pytest.mark.parametrize("profile", sorted(p.stem for p in TARGETS.glob("*.yaml")))
def test_every_target_profile_composes_and_plans(profile: str) -> None:
    assert profile in VARIANTS, f"add {profile} to VARIANTS"
    the_plan = plan.build(compose_with_target(profile))
    # quantize.mode=auto fans out into candidates; targets that set their own mode do not
    candidates = [name for name in the_plan.nodes if name.startswith("quantize.")]
    assert list(the_plan.nodes) == ["export", "optimize", *candidates, *(
        f"{kind}@{profile}" for kind in ("quantize", "validate", "package"))]
    assert [c.removeprefix("quantize.").removesuffix(f"@{profile}") for c in candidates] == \
        CANDIDATES.get(profile, [])
    quantize = the_plan.nodes[(candidates or [f"quantize@{profile}"])[0]].config["quantize"]
    assert (quantize["mode"], quantize["activation_type"], quantize["weight_type"],
            quantize["activation_symmetric"]) == VARIANTS[profile]
    target = the_plan.nodes[f"package@{profile}"].config["target"]
    assert target["description"]
    assert target["runtime"]["version"]
    first = target["execution_providers"][0]["name"]
    assert first in tables() or first in coverage.MOBILE  # coverage can judge it
    assert target["requires"]["format"] == ("ort" if profile in ("android_nnapi", "ios_coreml")
                                            else "onnx")
