"""Seeded random feeds shaped like a recipe's ``model.inputs``: what export traces and checks
parity with, and what quantization-aware training exports from."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.errors import RecipeError

if TYPE_CHECKING:
    import numpy as np

    from stages.common.datasets.sources import Feed

SAMPLE_SEED = 0


def make_samples(inputs: Any, dynamic_size: int, count: int) -> list[Feed]:
    """``count`` seeded random feeds for recipe ``inputs``; dynamic dims get ``dynamic_size``."""
    import numpy as np

    rng = np.random.default_rng(SAMPLE_SEED)
    return [{spec.name: _random(rng, spec, dynamic_size) for spec in inputs}
            for _ in range(count)]


def _random(rng: np.random.Generator, spec: Any, dynamic_size: int) -> np.ndarray:
    import numpy as np

    shape = [dynamic_size if isinstance(size, str) else size for size in spec.shape]
    dtype = np.dtype(spec.dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        low, high = int(spec.low), int(spec.high)
        if high <= low:
            raise RecipeError(f"model.inputs '{spec.name}': integer samples are drawn from "
                              f"[low, high), which is empty for low={low}, high={high}.")
        return rng.integers(low, high, size=shape, dtype=dtype)
    return rng.uniform(spec.low, spec.high, size=shape).astype(dtype)
