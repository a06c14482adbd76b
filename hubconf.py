"""torch.hub entry points: one per registered model, made from the registry when loaded.

    model = torch.hub.load("<owner>/resnets", "resnet56")
    model = torch.hub.load("<owner>/resnets", "resnet50", weights="torchvision")
    model = torch.hub.load("path/to/resnets", "resnet20", source="local")

Each entry is `create_model(name, weights=..., **kwargs)`: keyword arguments go to the builder
(num_classes, shortcut, depth for the generic names...), `weights` as in `create_model`
("torchvision" downloads torchvision's ImageNet weights once into torch's hub cache).
"""

import os
import sys

dependencies = ["torch"]

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "src")
sys.path.insert(0, _SOURCE)  # this checkout's resnets, not another installed one
try:
    from resnets import create_model as _create_model
    from resnets import list_models as _list_models
finally:
    sys.path.remove(_SOURCE)


def _entry(name):
    def build(*, weights=None, **kwargs):
        return _create_model(name, weights=weights, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{name} from the resnets registry: create_model({name!r}, weights=None, "
                     f"**kwargs); weights='torchvision' starts from torchvision's weights.")
    return build


for _name in _list_models():
    globals()[_name] = _entry(_name)
