"""edgekiln: recipes in, per-target ONNX Runtime bundles out."""

from pipeline.errors import PipelineError

__all__ = ["PipelineError"]
