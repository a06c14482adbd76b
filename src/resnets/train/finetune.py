"""Fine-tuning: the weights a new run starts from, what stays frozen, the optimizer's groups.

- `start_weights(config, base_kwargs)`: `config.weights` read (`resnets.models.weights`) and the
  model's keyword arguments for them (torchvision's bottleneck stride, a checkpoint's options).
- `load_start(model, start, name, classes)`: the weights loaded strictly; the classifier `fc`
  keeps the model's fresh initialisation when the run's classes are not the weights' (another
  number of classes, or, for a resnets checkpoint, other class names).
- `freeze(model, what)`: "none", "stem" (conv1, bn1), "layerK" (the stem and stages 1..K) or
  "backbone" (everything but `fc`). Frozen parameters take no gradient and are left out of
  the optimizer, and frozen BatchNorm layers keep their running statistics: they normalise
  with them, as in evaluation, and never update them. So a frozen layer is the same after
  training, bit for bit.
- `optimizer(model, config, lr)`: SGD over the trainable parameters; with `backbone_lr_scale`
  other than 1, two groups: every layer but `fc` (the pretrained part) at lr x scale, `fc` at lr.
  Each group carries its `lr_scale`, which the loop multiplies into the schedule's lr.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from resnets.errors import UserError
from resnets.models.weights import (HEAD, Pretrained, architecture, check_weights, load_body,
                                    load_pretrained)
from resnets.train.sgd import SGD

FREEZE = ("none", "stem", "layer1", "layer2", "layer3", "layer4", "backbone")
STEM = ("conv1", "bn1")


def start_weights(config: Any, base_kwargs: dict) -> tuple[Pretrained | None, dict]:
    """(the weights a new run starts from, or None; the model's keyword arguments).

    `base_kwargs` is what the dataset and config give (num_classes, in_channels, model_args);
    the weights add the options they imply, and a contradiction is one line."""
    if config.weights is None:
        return None, dict(base_kwargs)
    check_weights(config.weights, config.model, config.model_args)  # before any download
    start = load_pretrained(config.weights, config.model)
    if start.in_channels != base_kwargs.get("in_channels", start.in_channels):
        raise UserError(f"{start.source} take {start.in_channels}-channel images; "
                        f"{config.data} has {base_kwargs['in_channels']}-channel images")
    return start, architecture(config.model, start, base_kwargs)


def load_start(model: nn.Module, start: Pretrained, name: str, classes: list[str]) -> bool:
    """Load `start` into `model`; returns whether the classifier was kept (the run's classes
    are the weights' own) rather than left new."""
    if start.checkpoint is not None:
        same = list(classes) == list(start.classes)
    else:  # torchvision's: any 1,000 folders are taken to be ImageNet's, in their order
        same = len(classes) == start.num_classes
    return load_body(model, start, name, keep_head=same)


def resumed_kwargs(config: Any, checkpoint: dict, base_kwargs: dict, where: Any) -> dict:
    """The keyword arguments a resumed run's model was built with: the checkpoint's, checked
    to agree with what the dataset and config give (the weights may have added options)."""
    saved = checkpoint["model_kwargs"]
    added = set(saved) - set(base_kwargs)
    if checkpoint["model"] != config.model or (added and config.weights is None) \
            or any(saved.get(key) != value for key, value in base_kwargs.items()):
        raise UserError(f"{where}: checkpoint is for {checkpoint['model']} {saved}, not "
                        f"{config.model} {base_kwargs}")
    return dict(saved)


def frozen_names(model: nn.Module, what: str) -> list[str]:
    """The top-level modules `what` freezes, or a UserError when the model has no such part."""
    if what not in FREEZE:
        raise UserError(f"freeze must be one of {', '.join(FREEZE)}, got {what!r}")
    children = dict(model.named_children())
    if what == "none":
        return []
    if what == "backbone":
        if HEAD not in children:
            raise UserError(f"freeze backbone keeps the classifier {HEAD!r} training, but this "
                            f"model has none")
        return [name for name in children if name != HEAD]
    stem = [name for name in STEM if name in children]
    if not stem:
        raise UserError(f"freeze {what}: this model has no stem ({', '.join(STEM)})")
    if what == "stem":
        return stem
    last = int(what[len("layer"):])
    stages = [f"layer{k}" for k in range(1, last + 1)]
    if any(stage not in children for stage in stages):
        have = [name for name in children if name.startswith("layer")]
        raise UserError(f"freeze {what}: this model has {len(have)} stages "
                        f"({', '.join(have) or 'none'}); freeze at most layer{len(have)}, or "
                        f"backbone")
    return stem + stages


def _hold_statistics(module: nn.Module, inputs) -> None:
    """Forward pre-hook of a frozen BatchNorm layer: normalise with the running statistics
    and leave them alone, whatever mode the rest of the model is in."""
    module.train(False)


def freeze(model: nn.Module, what: str) -> list[str]:
    """Freeze the parts `what` names (see the module docstring); returns their module names."""
    names = frozen_names(model, what)
    for name in names:
        part = getattr(model, name)
        for parameter in part.parameters():
            parameter.requires_grad_(False)
        for module in part.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.register_forward_pre_hook(_hold_statistics)
                module.train(False)
    return names


def param_groups(model: nn.Module, lr: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """The optimizer's parameter groups: the trainable parameters, in one group at `lr`, or,
    with a scale other than 1, the backbone (all but `fc`) at lr x scale and `fc` at lr."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise UserError("nothing left to train: every parameter is frozen (freeze backbone "
                        "keeps the classifier fc training)")
    if backbone_lr_scale == 1:
        return [{"params": [p for _, p in trainable]}]
    body = [p for name, p in trainable if not name.startswith(HEAD + ".")]
    head = [p for name, p in trainable if name.startswith(HEAD + ".")]
    groups = []
    if body:
        groups.append({"params": body, "lr": lr * backbone_lr_scale,
                       "lr_scale": backbone_lr_scale, "name": "backbone"})
    if head:
        groups.append({"params": head, "lr": lr, "lr_scale": 1.0, "name": "head"})
    return groups


def optimizer(model: nn.Module, config: Any, lr: float) -> SGD:
    """SGD with the config's momentum, weight decay and Nesterov setting over `param_groups`
    (`resnets.train.sgd.SGD`: torch.optim.SGD's update and state dict, without importing
    TorchDynamo)."""
    return SGD(param_groups(model, lr, config.backbone_lr_scale), lr=lr,
               momentum=config.momentum, weight_decay=config.wd, nesterov=config.nesterov)
