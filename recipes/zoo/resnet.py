"""ResNet-18 with deterministic random weights: a realistic graph that needs no download."""

from __future__ import annotations

from typing import Any


def resnet18(num_classes: int = 1000, seed: int = 0) -> Any:
    """torchvision's ResNet-18, initialised from ``seed`` (``weights=None`` never downloads)."""
    import torch
    from torchvision.models import resnet18 as build

    # the init draws from torch's global generator; fork it so the caller's stream is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build(weights=None, num_classes=num_classes)
