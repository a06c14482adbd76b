"""resnets: residual networks (He et al. 2015) and their plain twins, at any depth."""

from resnets.errors import UserError
from resnets.models import create_model, imagenet_classes, imagenet_wnids, list_models, model_info

__version__ = "0.1.0"

__all__ = ["UserError", "create_model", "imagenet_classes", "imagenet_wnids", "list_models", "model_info",
           "__version__"]
