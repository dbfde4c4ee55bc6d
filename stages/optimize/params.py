"""Settings of the ``optimize`` kind."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class OptimizeLevel(Enum):
    none = "none"
    basic = "basic"
    extended = "extended"


@dataclass
class OptimizeParams:
    level: OptimizeLevel = OptimizeLevel.basic
    shape_inference: bool = True
