"""Settings of the ``export`` kind: the recipe's ``export:`` section or ``stages.<name>.params``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.bounds import at_least


class Exporter(Enum):
    """torch's ONNX exporter for torch (and Hugging Face) models."""

    dynamo = "dynamo"  # torch.export + onnxscript: torch's default, any opset it has
    torchscript = "torchscript"  # the legacy tracer (deprecated in torch): opsets 7-20


@dataclass
class ExportParams:
    opset: int = 18
    exporter: Exporter = Exporter.dynamo
    parity_samples: int = at_least(0, 4, "0 = no comparison with the source model")
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-3
