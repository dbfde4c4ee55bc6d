"""Isolated environments: keyed by their requirements, built once, rebuilt when half-built.

These use environments with nothing pip-installed (a bare venv takes a fraction of a second);
the one real onnxruntime-openvino environment is built by tests/stages/test_validate.py.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
import pytest

from pipeline.errors import EnvironmentProblem, RecipeError
from stages.common import ort_worker as validate_worker
from stages.common import runtime_env
from stages.common.runtime_env import MARKER, choose_runtime, ensure_env, env_key
from tests.fixtures.digits_models import INPUT

if TYPE_CHECKING:
    from pathlib import Path

OV = "OpenVINOExecutionProvider"


def test_key_follows_the_requirements_not_their_order() -> None:
    key = env_key(["onnxruntime-openvino>=1.20", "numpy"])
    assert key == env_key(["numpy", "onnxruntime-openvino>=1.20"])
    assert key != env_key(["onnxruntime-openvino>=1.21", "numpy"])
    assert key != env_key(["onnxruntime", "numpy"])
    assert len(key) == 16


def test_env_is_built_once_then_reused(tmp_path: Path) -> None:
    first = ensure_env([], imports=("json",), root=tmp_path)
    assert first.created
    assert first.seconds > 0
    assert first.python.exists()
    assert (first.path / MARKER).is_file()
    assert first.path == tmp_path / env_key([])
    stamp = (first.path / MARKER).stat().st_mtime_ns
    second = ensure_env([], imports=("json",), root=tmp_path)
    assert (second.created, second.seconds, second.path) == (False, 0.0, first.path)
    assert (first.path / MARKER).stat().st_mtime_ns == stamp  # nothing was rewritten


def test_env_without_its_marker_is_rebuilt(tmp_path: Path) -> None:
    env = ensure_env([], root=tmp_path)
    (env.path / MARKER).unlink()  # as a build killed before it finished leaves it
    leftover = env.path / "half-installed.txt"
    leftover.write_text("from the killed build")
    again = ensure_env([], root=tmp_path)
    assert again.created
    assert not leftover.exists()
    assert (again.path / MARKER).is_file()


def test_concurrent_callers_build_one_env(tmp_path: Path) -> None:
    results = []

    def build() -> None:
        results.append(ensure_env([], root=tmp_path).created)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, True]


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentProblem, match=r"could not import the installed packages.*"
                                                 r"ModuleNotFoundError"):
        ensure_env([], imports=("edgekiln_no_such_module",), root=tmp_path)
    assert not (tmp_path / env_key([])).exists()


def test_env_root_comes_from_the_environment(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEKILN_ENV_DIR", str(tmp_path / "mine"))
    assert runtime_env.env_root() == tmp_path / "mine"
    monkeypatch.delenv("EDGEKILN_ENV_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime_env.env_root() == tmp_path / "xdg" / "edgekiln" / "envs"


def test_host_runtime_runs_in_process() -> None:
    host, version = runtime_env.host_runtime()
    choice = choose_runtime(host, f"=={version}", "CPUExecutionProvider", "targets.cpu.runtime")
    assert (choice.isolated, choice.reason) == (False, None)


def test_other_distribution_or_version_gets_an_env() -> None:
    assert choose_runtime("onnxruntime-openvino", ">=1.20", OV, "k").isolated
    # the host's distribution, but a version range the host's release is outside of
    old = choose_runtime("onnxruntime", "<1.0", "CPUExecutionProvider", "k")
    assert old.isolated
    assert old.requirement == "onnxruntime<1.0"


@pytest.mark.parametrize(("ep", "needs"), [
    ("TensorrtExecutionProvider", "needs an NVIDIA GPU"),
    ("NnapiExecutionProvider", "runs only on Android"),
    ("CoreMLExecutionProvider", "runs only on Apple devices"),
    ("QNNExecutionProvider", "needs a Qualcomm"),
    ("SomeFutureExecutionProvider", "needs a runtime edgekiln cannot install"),
])
def test_runtime_whose_ep_cannot_run_here_is_not_installed(ep: str, needs: str) -> None:
    choice = choose_runtime("onnxruntime-gpu", "", ep, "k")
    assert not choice.isolated
    assert needs in choice.reason
    assert "onnxruntime-gpu was not installed" in choice.reason


def test_isolation_can_be_turned_off() -> None:
    choice = choose_runtime("onnxruntime-openvino", "", OV, "k", isolate=False)
    assert not choice.isolated
    assert "validate.isolated_runtime is false" in choice.reason


@pytest.mark.parametrize(("dist", "version"), [
    ("onnxruntime-openvino", "1.24"), ("--index-url=http://x", ""),
    ("onnxruntime[extra]", ""), ("onnxruntime", ">=1.20; python_version<'3'")])
def test_requirement_must_be_a_plain_pypi_range(dist: str, version: str) -> None:
    with pytest.raises(RecipeError, match=r"targets\.ov\.runtime: .* is not a plain PyPI"):
        choose_runtime(dist, version, OV, "targets.ov.runtime")


def test_profiled_placement_for_older_onnxruntime(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Before onnxruntime 1.24 recorded graph assignment, a profiled run tells the placement."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = np.arange(640, dtype=np.float32).reshape(64, 10) / 640
    graph = helper.make_graph(
        [helper.make_node("Flatten", [INPUT], ["flat"], name="flatten", axis=1),
         helper.make_node("MatMul", ["flat", "w"], ["logits"], name="matmul"),
         helper.make_node("Relu", ["logits"], ["scores"], name="relu")],
        "mlp", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weights, "w")])
    path = tmp_path / "mlp.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                                ir_version=9), str(path))
    traces = tmp_path / "traces"
    traces.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(traces))
    feeds = [{INPUT: np.ones((1, 1, 8, 8), np.float32)}]
    request = {"providers": [{"name": "CPUExecutionProvider", "options": {}}],
               "jobs": [{"role": "c", "path": str(path), "placement": "profiling",
                         "outputs": "all"}]}
    result, arrays = validate_worker.run_request(request, feeds)
    placement = result["jobs"]["c"]["placement"]
    assert (placement["method"], placement["unit"]) == ("profiling", "kernels")
    assert placement["per_ep"] == {"CPUExecutionProvider": placement["total"]}
    assert placement["total"] == len(placement["cpu_nodes"]) >= 2
    assert "MatMul" in {n["op_type"] for n in placement["cpu_nodes"]}
    np.testing.assert_allclose(arrays["c|first"][0, 0], weights.sum(axis=0), rtol=1e-5)
    assert list(traces.iterdir()) == []  # the trace and its directory are gone
