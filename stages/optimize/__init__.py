"""Stage kind ``optimize``: shape inference and graph optimization of an ONNX model."""
