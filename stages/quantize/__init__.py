"""Stage kind ``quantize``: post-training (static, dynamic, FP16) and quantization-aware."""
