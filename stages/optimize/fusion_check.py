"""Is a fused graph still the model? It must load in onnxruntime and give the unfused graph's
outputs on a probe input; onnxscript 0.7.2's fusions broke the tiny GPT-2 (a Gemm fed a rank-3
tensor after the skip-layer-norm rewrite dropped its Reshape), which ORT refused to load."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

# the fused kernels reorder float sums: MiniLM's fused outputs were within 7e-7 of the unfused
RELATIVE_TOLERANCE = 1e-3
PROBE_SEQUENCE = 8  # symbolic dimensions after the first (batch = 1) get this size


def disagreement(fused: Path, unfused: Path) -> str | None:
    """Why ``fused`` is not the model ``unfused`` is, or None when it is."""
    import numpy as np
    import onnxruntime as ort

    reference = ort.InferenceSession(str(unfused), providers=["CPUExecutionProvider"])
    try:
        session = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph classes
        # ORT's message starts "Load model from <temp path> failed:"; the rest is the reason
        why = str(exc).splitlines()[0].rpartition(" failed:")[2]
        return f"onnxruntime cannot load the fused graph: {why[:300]}"
    feed = _probe(reference.get_inputs())
    expected = reference.run(None, feed)
    try:
        got = session.run(None, feed)
    except Exception as exc:
        return f"the fused graph fails to run: {str(exc).splitlines()[0][:300]}"
    for meta, wanted, had in zip(reference.get_outputs(), expected, got, strict=True):
        want, have = np.asarray(wanted, np.float64), np.asarray(had, np.float64)
        scale = 1.0 + float(np.abs(want).max(initial=0.0))
        if want.shape != have.shape or not np.allclose(have, want, rtol=0,
                                                       atol=RELATIVE_TOLERANCE * scale):
            diff = float(np.abs(have - want).max()) if want.shape == have.shape else None
            return (f"output '{meta.name}' differs from the unfused graph's "
                    f"({'shape ' + str(have.shape) if diff is None else f'max diff {diff:.3g}'})")
    return None


def _probe(inputs: list[Any]) -> dict[str, Any]:
    """One input per graph input: ones for integer ones (valid ids, masks, types), seeded noise
    for floats."""
    import numpy as np

    rng = np.random.default_rng(0)
    feed = {}
    for value in inputs:
        shape = [dim if isinstance(dim, int) else (1 if axis == 0 else PROBE_SEQUENCE)
                 for axis, dim in enumerate(value.shape)]
        name = value.type.removeprefix("tensor(").removesuffix(")")  # "tensor(int64)"
        dtype = np.dtype({"float": "float32", "double": "float64"}.get(name, name))
        feed[value.name] = (np.ones(shape, dtype) if np.issubdtype(dtype, np.integer)
                            or dtype == np.bool_ else rng.standard_normal(shape).astype(dtype))
    return feed
