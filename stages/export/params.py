"""Settings of the ``export`` kind: the recipe's ``export:`` section or ``stages.<name>.params``."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.bounds import at_least


@dataclass
class ExportParams:
    opset: int = 18
    parity_samples: int = at_least(0, 4, "0 = no comparison with the source model")
    parity_atol: float = 1e-4
    parity_rtol: float = 1e-3
