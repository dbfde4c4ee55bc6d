"""Settings of the ``optimize`` kind."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class OptimizeLevel(Enum):
    none = "none"
    basic = "basic"
    extended = "extended"
    # attention, skip-layer-norm and GELU fusions into com.microsoft contrib ops (onnxscript's
    # ORT fusions, which match the dynamo exporter's graphs), then the basic level
    transformer = "transformer"


@dataclass
class OptimizeParams:
    level: OptimizeLevel = OptimizeLevel.basic
    shape_inference: bool = True
