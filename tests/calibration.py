"""A model that looks trained, for tests of paths that fold or export BatchNorm: at
initialisation BN's scales are 1, its shifts 0 and its running statistics those of no data, so
a folding or export bug in any of them would not show."""

from __future__ import annotations

import torch
from torch import nn


def trained_looking(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """`model` with BN scales and shifts away from 1 and 0 and running statistics of real
    activations (a forward pass in training mode with cumulative averages), in eval mode."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the calibration pass
    with torch.no_grad():
        model.train()(images)
    return model.eval()
