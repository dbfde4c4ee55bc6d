"""Stage kind ``export``: a torch, TensorFlow or ONNX model in, a checked ONNX model out."""
