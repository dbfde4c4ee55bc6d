"""Settings of the ``optimize`` kind."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class OptimizeLevel(Enum):
    none = "none"
    basic = "basic"
    extended = "extended"
    # attention, skip-layer-norm and GELU fusions into com.microsoft contrib ops (onnxscript's
    # ORT fusions, which match the dynamo exporter's graphs), then the basic level
    transformer = "transformer"


@dataclass
class FusionSwitches:
    """Families of level=transformer's fusions; false leaves that family unfused."""

    attention: bool = True  # SDPA, MultiHeadAttention, Attention, GroupQueryAttention
    skip_layer_norm: bool = True  # residual Add + LayerNormalization (or RMS) into one op
    gelu: bool = True  # Erf/tanh GELU into Gelu, then BiasGelu
    rms_norm: bool = True
    rotary_embedding: bool = True


@dataclass
class OptimizeParams:
    level: OptimizeLevel = OptimizeLevel.basic
    shape_inference: bool = True
    # level=transformer only
    fusions: FusionSwitches = field(default_factory=FusionSwitches)
    # level=transformer: also keep the unfused graph, which the targets whose first execution
    # provider has no kernel for a fused com.microsoft op (NNAPI, CoreML, QNN, OpenVINO,
    # TensorRT) are built from instead; false ships the fused graph to every target
    portable: bool = True
