"""resnets: residual networks (He et al. 2015) and their plain twins, at any depth."""

from resnets.errors import UserError

__version__ = "0.1.0"

__all__ = ["UserError", "__version__"]
