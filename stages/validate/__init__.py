"""Stage kind ``validate``: a candidate against its FP32 reference on the target runtime."""
