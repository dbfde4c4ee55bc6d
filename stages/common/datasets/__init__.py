"""Calibration, evaluation and training samples from a recipe's ``dataset`` section."""
