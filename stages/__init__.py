"""Every stage kind edgekiln knows, registered by importing its module here (explicitly)."""

from stages.export import stage as export
from stages.optimize import stage as optimize
from stages.package import stage as package
from stages.quantize import stage as quantize
from stages.validate import stage as validate

__all__ = ["export", "optimize", "package", "quantize", "validate"]
