"""``quantize.mode: auto``'s candidates: which quantizations suit a model on a target.

The plan fans an auto node out into one quantize node per candidate (``quantize.static@cpu``,
...), each cached on its own, so adding a candidate rebuilds only that one; the auto node then
measures them (``stages.quantize.auto``). A candidate is the node's own params (the recipe's
section with the target's overrides, so a TensorRT target's symmetric int8 stays) with a few
keys changed. Which ones suit, from what is known before export:

- token inputs (int64/int32 ids: a transformer-like graph) on the CPU EP: dynamic per-channel
  INT8 first (measured on MiniLM: mean cosine 0.993 where static INT8 gave 0.39), dynamic of
  MatMul only (embeddings float), then static QDQ of MatMul/Gemm, then of everything, then
  weight-only INT4 RTN (the CPU EP runs MatMulNBits);
- float inputs (images, signals) on the CPU EP: static QDQ per-channel and per-tensor;
- any other EP: the static QDQ its target profile describes (TensorRT, QNN and OpenVINO take
  their INT8 from the graph's Q/DQ nodes; dynamic quantization's integer ops are CPU kernels).
"""

from __future__ import annotations

import copy
from typing import Any

from pipeline.errors import RecipeError, did_you_mean
from stages.common import fused_graphs

CPU = "CPUExecutionProvider"
CANDIDATES: dict[str, dict[str, Any]] = {
    "static": {"mode": "static"},
    "static_per_tensor": {"mode": "static", "per_channel": False},
    "static_matmul": {"mode": "static", "op_types_to_quantize": ["MatMul", "Gemm"]},
    "dynamic": {"mode": "dynamic", "per_channel": True},
    # the embedding tables (Gather) stay float; ORT's dynamic mode cannot quantize Gemm. On
    # all-MiniLM-L6-v2 the worst sentence's cosine with FP32 went 0.9898 -> 0.9909
    "dynamic_matmul": {"mode": "dynamic", "per_channel": True, "op_types_to_quantize": ["MatMul"]},
    # weight-only INT4 of the MatMuls (the CPU EP runs MatMulNBits); the recipe's quantize.int4
    # settings stay, the algorithm is RTN. On MiniLM its worst sentence's cosine was 0.965,
    # under the default gate of 0.98, and it ran 1.05x FP32 at seq 64 (dynamic INT8: 2.7x):
    # it wins where the gates allow it and it is the fastest
    "int4_rtn": {"mode": "int4", "int4": {"algorithm": "rtn"}},
}
TOKEN_DTYPES = ("int64", "int32")
# the auto and search settings steer the choice, not one candidate's bytes: every candidate
# gets the defaults, so changing them does not rebuild the candidates
STEERING = {"auto", "search"}


def variants(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The quantize params of each candidate of an auto node; none for any other mode."""
    params = config["quantize"]
    if params["mode"] != "auto":
        return {}
    if params["search"]["candidates"]:
        raise RecipeError("quantize.search.candidates: mode=auto chooses among its own "
                          "candidates (quantize.auto.candidates); set one or the other.")
    names = params["auto"]["candidates"] or suited(config)
    return {name: candidate(params, name) for name in names}


def reads_with(params: dict[str, Any], recipe: dict[str, Any]) -> tuple[str, ...]:
    """auto reads the whole target. The other modes read its EPs only in a recipe that fuses
    transformer ops, where the EPs decide whether the fused graph or its unfused twin is
    quantized (stages/common/fused_graphs.py); elsewhere their nodes share keys across
    targets with equal settings."""
    if params["mode"] == "auto":
        return ("target",)
    return ("target.execution_providers",) if fused_graphs.fuses(recipe) else ()


def suited(config: dict[str, Any]) -> list[str]:
    """Candidate names for the node's model inputs and its target's first EP, best first."""
    first = config["target"]["execution_providers"][0]["name"]
    if first != CPU:
        return ["static"]
    tokens = any(spec["dtype"] in TOKEN_DTYPES for spec in config["model"]["inputs"])
    if tokens:
        return ["dynamic", "dynamic_matmul", "static_matmul", "static", "int4_rtn"]
    return ["static", "static_per_tensor"]


def candidate(params: dict[str, Any], name: str) -> dict[str, Any]:
    """``params`` with candidate ``name``'s keys changed and the steering keys at defaults."""
    if name not in CANDIDATES:
        raise RecipeError(f"quantize.auto.candidates: unknown candidate '{name}'."
                          f"{did_you_mean(name, CANDIDATES)} Candidates: "
                          f"{', '.join(CANDIDATES)}.")
    from stages.quantize.params import AutoParams, QuantSearchParams

    defaults = {"auto": _plain(AutoParams()), "search": _plain(QuantSearchParams())}
    chosen = {key: copy.deepcopy(value) for key, value in params.items()
              if key not in STEERING}
    changed = copy.deepcopy(CANDIDATES[name])
    for key, value in changed.items():  # a nested section changes only the keys it names
        if isinstance(value, dict):
            changed[key] = {**chosen.get(key, {}), **value}
    return chosen | defaults | changed


def _plain(params: Any) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(params), enum_to_str=True)  # type: ignore[return-value]
