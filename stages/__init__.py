"""Every stage kind edgekiln knows, registered by importing its module here (explicitly)."""

from stages import export, optimize, package, quantize, validate

__all__ = ["export", "optimize", "package", "quantize", "validate"]
