"""`create_model`: a registered model, built fresh or from trained weights.

It stands above the registry (`zoo`) and the weights (`weights`), which both sit below it, so
neither has to ask the other.
"""

from __future__ import annotations

from torch import nn

from resnets.models.weights import create_pretrained
from resnets.models.zoo import get_entry


def create_model(name: str, *, weights: str | None = None, **kwargs) -> nn.Module:
    """Build a registered model: `create_model("resnet56")`, `create_model("cifar_resnet", depth=74)`.

    Keyword arguments go to the builder (num_classes, in_channels, width, shortcut, preact,
    zero_init_last, bottleneck_stride, and depth for the generic names).

    weights: start from trained weights instead of a random initialisation: "torchvision"
    (torchvision's ImageNet weights for resnet18/34/50/101/152, downloaded once into torch's hub
    cache; bottleneck_stride is set to their "3x3"), "torchvision:v2" (torchvision's newer
    release, for resnet50/101/152), a resnets checkpoint or run directory, or a state-dict file
    in torchvision's layout. The model gets the weights' classes unless `num_classes` says
    otherwise; then its classifier `fc` is new, initialised as usual (`resnets.models.weights`).
    """
    if weights is not None:
        return create_pretrained(name, weights, **kwargs)
    return get_entry(name).build(**kwargs)
