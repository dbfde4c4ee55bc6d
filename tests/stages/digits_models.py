"""Real tiny models for stage tests: a CNN trained on sklearn digits, in FP32 and INT8.

Built once per test session (training, dynamo export and static quantization take a few
seconds), into the session's base temp directory, and shared by every test module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from stages.support.datasets import load_dataset
from stages.support.onnx_files import model_file, save_model

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

INPUT = "image"
INPUTS = [{"name": INPUT, "dtype": "float32", "shape": ["batch", 1, 8, 8]}]
DIGITS = {"kind": "digits", "path": None, "image_size": 8, "channels": 1, "layout": "nchw",
          "mean": 0.0, "std": 1.0, "seed": 0, "calibration_size": 256, "evaluation_size": 512}


@dataclass(frozen=True)
class DigitsModels:
    fp32: Path  # model directories in the onnx_files layout
    int8: Path


_BUILT: dict[Path, DigitsModels] = {}


def digits_models(root: Path) -> DigitsModels:
    """The trained CNN exported under ``root``; built on the first call for that root."""
    if root not in _BUILT:
        import torch

        torch.manual_seed(0)
        fp32 = export_torch(_train_cnn(), (1, 8, 8), root / "digits_fp32")
        _BUILT[root] = DigitsModels(fp32=fp32, int8=_quantize(fp32, root / "digits_int8"))
    return _BUILT[root]


def export_torch(module: Any, sample_shape: tuple[int, ...], directory: Path) -> Path:
    """Export ``module`` with the dynamo exporter, batch dimension dynamic, into ``directory``."""
    import torch

    example = torch.zeros((1, *sample_shape))
    program = torch.onnx.export(module.eval(), (example,), dynamo=True, input_names=[INPUT],
                                output_names=["logits"], dynamic_shapes=({0: "batch"},))
    save_model(program.model_proto, directory)
    return directory


def mlp(hidden: int) -> Any:
    """An untrained 8x8-image classifier whose weights take about hidden * 296 bytes."""
    import torch

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 10))


def _train_cnn() -> Any:
    """About a second of full-batch Adam on all 1797 digits: ~97% accuracy, enough to measure."""
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32)
    labels = torch.tensor(digits.target)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.Adam(cnn.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(cnn(images), labels).backward()
        optimizer.step()
    return cnn


def _quantize(source: Path, directory: Path) -> Path:
    """Static INT8 (QDQ, per-channel weights) calibrated on the digits calibration split."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    split = load_dataset(OmegaConf.create(DIGITS), OmegaConf.create(INPUTS)).calibration

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(split.feeds[:64])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    directory.mkdir(parents=True, exist_ok=True)
    quantize_static(str(model_file(source)), str(model_file(directory)), Reader(),
                    quant_format=QuantFormat.QDQ, per_channel=True)
    return directory
