"""The digits CNN with unbalanced channel ranges: the same function, fragile under PTQ.

Run from the repository root: ``python -m recipes.zoo.digits_unbalanced``. Writes
``digits_cnn_unbalanced.pt`` from ``digits_cnn.pt``: each output channel k of the first
convolution is multiplied by s_k (weights and bias) and the matching input channel of the
second convolution divided by s_k, with s_k drawn log-uniformly over ``SPREAD`` decades. ReLU
commutes with a positive scale, so the FP32 model computes the same logits (up to float
rounding). Its first activation, though, now spans channels whose ranges differ 1000-fold, as
after folding BatchNorm into a convolution (MobileNet's depthwise layers are the known case):
an 8-bit per-tensor activation grid fitted to the widest channel erases the narrow ones.
Post-training quantization loses about 12 points of digits accuracy on it; QAT retrains the
weights around the grid (recipes/recipe/digits_qat.yaml, docs/qat.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
SOURCE, TARGET = HERE / "digits_cnn.pt", HERE / "digits_cnn_unbalanced.pt"
SPREAD, SEED = 3.0, 0


def unbalance(state: dict[str, Any], spread: float = SPREAD, seed: int = SEED) -> dict[str, Any]:
    """A copy of the digits_cnn state dict with conv 1's channels rescaled (see above)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    scale = torch.tensor(10 ** rng.uniform(-spread / 2, spread / 2, len(state["0.bias"])),
                         dtype=torch.float32)
    result = dict(state)
    result["0.weight"] = state["0.weight"] * scale[:, None, None, None]
    result["0.bias"] = state["0.bias"] * scale
    result["2.weight"] = state["2.weight"] / scale[None, :, None, None]
    return result


def main() -> None:
    import torch

    state = torch.load(SOURCE, map_location="cpu", weights_only=True)
    torch.save(unbalance(state), TARGET)
    print(f"wrote {TARGET}")


if __name__ == "__main__":
    main()
