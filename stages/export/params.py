"""Settings of the ``export`` kind: the recipe's ``export:`` section or ``stages.<name>.params``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ExportParams:
    opset: int = 18
    parity_samples: int = 4
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-3
