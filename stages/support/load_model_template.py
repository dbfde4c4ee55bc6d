"""Load this bundle's model with ONNX Runtime on the device; `python load_model.py` smoke-tests it.

Needs only onnxruntime and numpy, plus the files beside this script: model.onnx (and
model.onnx.data for large models), providers.json and signature.json.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
CPU = "CPUExecutionProvider"


def create_session(folder: Path = HERE) -> ort.InferenceSession:
    """Open the model on the bundle's providers that this device has, in priority order."""
    config = json.loads((folder / "providers.json").read_text())
    available = ort.get_available_providers()
    chosen = [(p["name"], p["options"]) for p in config["providers"] if p["name"] in available]
    missing = [p["name"] for p in config["providers"] if p["name"] not in available]
    if missing:
        warnings.warn(f"providers not available here, skipped: {missing}", stacklevel=2)
    # the bundle was validated with CPU as last resort, so a device without its EP still runs
    if config["cpu_fallback"] and CPU not in [name for name, _ in chosen]:
        chosen.append((CPU, {}))
    if not chosen:
        raise RuntimeError(f"none of {[p['name'] for p in config['providers']]} is available")
    return ort.InferenceSession(str(folder / "model.onnx"), providers=[n for n, _ in chosen],
                                provider_options=[o for _, o in chosen])


def check_feed(feed: dict[str, np.ndarray], signature: dict) -> None:
    """Raise ValueError unless ``feed`` has the signature's input names, dtypes and fixed dims."""
    expected = {spec["name"]: spec for spec in signature["inputs"]}
    if set(feed) != set(expected):
        raise ValueError(f"feed has inputs {sorted(feed)}, the model takes {sorted(expected)}")
    for name, spec in expected.items():
        array, dims = feed[name], spec["shape"]
        if array.dtype != np.dtype(spec["dtype"]):
            raise ValueError(f"input '{name}' must be {spec['dtype']}, got {array.dtype}")
        # string dims are dynamic (batch, sequence) and accept any size; None is unknown rank
        if dims is not None and (array.ndim != len(dims) or any(
                isinstance(d, int) and d != n for d, n in zip(dims, array.shape, strict=True))):
            raise ValueError(f"input '{name}' must have shape {dims}, got {list(array.shape)}")


def random_feed(signature: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """One sample per input (dynamic dims set to 1), drawn within the input's value range."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in signature["inputs"]:
        shape = [d if isinstance(d, int) else 1 for d in spec["shape"]]
        low, high = spec.get("low", 0.0), spec.get("high", 1.0)
        feed[spec["name"]] = rng.uniform(low, high, size=shape).astype(spec["dtype"])
    return feed


def main() -> int:
    signature = json.loads((HERE / "signature.json").read_text())
    session = create_session()
    feed = random_feed(signature)
    check_feed(feed, signature)
    outputs = session.run(None, feed)
    print(f"{signature.get('model', 'model')} on {session.get_providers()[0]}")
    for meta, value in zip(session.get_outputs(), outputs, strict=True):
        print(f"  {meta.name}: shape {list(value.shape)} {value.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
