"""The recipes' trained digits CNN (recipes/zoo) exported and optimized, and quantize-stage
configs built from the recipe schema's defaults, for the quantization tests.

The zoo CNN (two Conv and two Gemm layers, ~98% on the evaluation split) has enough layers for
the accuracy-aware search to choose among; it is exported once per session.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import make_context
from digits_models import INPUT, export_torch
from omegaconf import OmegaConf

from pipeline.schema import DatasetConfig, QuantizeConfig
from stages.optimize import optimize

ROOT = Path(__file__).resolve().parents[2]
INPUTS = [{"name": INPUT, "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
_BUILT: dict[Path, Path] = {}


def zoo_cnn(root: Path) -> Path:
    """The zoo digits CNN with its checkpoint, dynamo-exported and optimized (basic) under root."""
    if root not in _BUILT:
        import torch

        from recipes.zoo.digits import digits_cnn

        net = digits_cnn()
        net.load_state_dict(torch.load(ROOT / "recipes/zoo/digits_cnn.pt", weights_only=True))
        exported = export_torch(net, (1, 8, 8), root / "zoo_fp32")
        config = {"optimize": {"level": "basic", "shape_inference": True}}
        optimize(make_context(config, root / "zoo_optimized", {"model": exported}))
        _BUILT[root] = root / "zoo_optimized"
    return _BUILT[root]


def stage_config(dataset: dict[str, Any] | None = None, **quantize: Any) -> dict[str, Any]:
    """The quantize stage's config slice: schema defaults, static mode, then ``quantize``."""
    section = OmegaConf.merge(OmegaConf.structured(QuantizeConfig),
                              {"mode": "static", "calibration": {"samples": 64}}, quantize)
    data = OmegaConf.merge(OmegaConf.structured(DatasetConfig), {"kind": "digits"}, dataset or {})
    return {"quantize": OmegaConf.to_container(section, enum_to_str=True),
            "dataset": OmegaConf.to_container(data, enum_to_str=True),
            "model": {"inputs": INPUTS}}
