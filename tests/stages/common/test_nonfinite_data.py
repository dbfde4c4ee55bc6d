"""NaN or infinite values in the data are bad input (exit 3) naming the split, the model input,
the sample's place in its split and where it comes from, in whichever stage reads it first."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from pipeline.errors import InputError
from tests.fixtures.cli import ROOT, run_cli
from tests.fixtures.dataset_helpers import TABLE, load

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def _table(path: Path, rows: int, bad: dict[int, float]) -> Path:
    a = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
    for index, value in bad.items():
        a[index, 1] = value
    np.savez(path, a=a, b=np.ones((rows, 2), np.int64))
    return path


def nan_rows(count: int = 6, bad: int = 2) -> Iterator[dict[str, Any]]:
    """A dataset factory whose sample ``bad`` holds a NaN."""
    for i in range(count):
        yield {"a": np.array([0.0, np.nan if i == bad else 1.0, 2.0], np.float32),
               "b": np.zeros(2, np.int64)}


@pytest.mark.parametrize(("value", "counts"), [(np.nan, "1 NaN and 0 infinite"),
                                                (np.inf, "0 NaN and 1 infinite"),
                                                (-np.inf, "0 NaN and 1 infinite")])
def test_a_non_finite_calibration_sample_is_named(tmp_path: Path, value: float,
                                                  counts: str) -> None:
    calibration = _table(tmp_path / "cal.npz", 8, {3: value})
    data = load(TABLE, kind="npz", calibration_path=str(calibration),
                evaluation_path=str(_table(tmp_path / "eval.npz", 8, {})), training_size=0)
    assert len(list(data.evaluation.feeds)) == 8  # the clean split loads
    position = data.calibration.ids.index(f"{tmp_path / 'cal.npz'}[3]")
    with pytest.raises(InputError, match=rf"^dataset \(kind=npz\): calibration sample "
                       rf"{position} \({tmp_path}/cal\.npz\[3\]\): model input 'a' holds "
                       rf"{counts} value\(s\)"):
        list(data.calibration.feeds)


def test_a_non_finite_evaluation_sample_is_named(tmp_path: Path) -> None:
    data = load(TABLE, kind="npz", path=str(_table(tmp_path / "all.npz", 40, {17: np.nan})),
                calibration_size=8, evaluation_size=16, training_size=0)
    split = next(name for name in ("calibration", "evaluation", "training")
                 if f"{tmp_path / 'all.npz'}[17]" in data.splits[name].ids)
    with pytest.raises(InputError, match=rf"{split} sample \d+ \(.*all\.npz\[17\]\): "
                       r"model input 'a' holds 1 NaN"):
        data.split(split).feeds[:]


def test_a_factory_sample_with_nan_is_named_by_its_index() -> None:
    # a factory's samples are all checked when the splits are dealt (seed 0 puts factory[2]
    # second in calibration)
    with pytest.raises(InputError, match=r"calibration sample 1 \(factory\[2\]\): model "
                       r"input 'a' holds 1 NaN"):
        load(TABLE, kind="callable", factory=f"{__name__}:nan_rows", calibration_size=3,
             evaluation_size=3, training_size=0)


def test_integer_inputs_are_not_checked(tmp_path: Path) -> None:
    data = load(TABLE, kind="npz", path=str(_table(tmp_path / "ok.npz", 12, {})),
                calibration_size=4, evaluation_size=4)
    assert all(np.isfinite(feed["a"]).all() for feed in data.calibration.feeds)


@pytest.mark.slow
def test_the_cli_refuses_nan_calibration_data_with_exit_3(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images[:64] / 16.0).astype(np.float32)[:, None]
    bad = pixels[:32].copy()
    bad[5, 0, 3, 3] = np.nan
    np.savez(tmp_path / "cal.npz", pixels=bad, labels=digits.target[:32])
    np.savez(tmp_path / "eval.npz", pixels=pixels[32:], labels=digits.target[32:64])
    result = run_cli("recipe=digits_torch", "dataset.kind=npz",
                     f"+dataset.calibration_path={tmp_path / 'cal.npz'}",
                     f"+dataset.evaluation_path={tmp_path / 'eval.npz'}",
                     f"model.checkpoint={ROOT / 'recipes/zoo/digits_cnn.pt'}",
                     "run.progress=false", f"run.artifacts_dir={tmp_path / 'artifacts'}",
                     cwd=tmp_path)
    assert result.code == 3, result.stderr[-3000:]
    assert "bad input: stage 'quantize." in result.stderr
    assert "calibration sample" in result.stderr
    assert f"({tmp_path / 'cal.npz'}[5]): model input 'pixels' holds 1 NaN" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "artifacts/digits_torch/cpu").exists()  # nothing was published
