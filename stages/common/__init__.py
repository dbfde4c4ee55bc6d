"""Helpers shared by several stages (ONNX files, datasets, sessions); not stages themselves."""
