"""The ImageNet family speaks torchvision's state-dict layout, without importing torchvision.

The expected keys and shapes are written out here from torchvision's `models/resnet.py`
structure, and a functional forward pass written here from the same structure (stride on the
3x3 conv: torchvision's v1.5) checks that our model computes the same logits from such a dict.
"""

import pytest
import torch
import torch.nn.functional as F

from resnets.models import create_model

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix, channels):
    return {f"{prefix}.{k}": (() if k == "num_batches_tracked" else (channels,)) for k in BN}


def torchvision_layout(units, bottleneck, num_classes=1000):
    """key -> shape of torchvision's resnet with `units` per stage."""
    layout = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
    in_channels = 64
    for stage, count in enumerate(units):
        width = 64 * 2**stage
        out_channels = width * (4 if bottleneck else 1)
        for index in range(count):
            p = f"layer{stage + 1}.{index}"
            if bottleneck:
                layout[f"{p}.conv1.weight"] = (width, in_channels, 1, 1)
                layout.update(_bn(f"{p}.bn1", width))
                layout[f"{p}.conv2.weight"] = (width, width, 3, 3)
                layout.update(_bn(f"{p}.bn2", width))
                layout[f"{p}.conv3.weight"] = (out_channels, width, 1, 1)
                layout.update(_bn(f"{p}.bn3", out_channels))
            else:
                layout[f"{p}.conv1.weight"] = (width, in_channels, 3, 3)
                layout.update(_bn(f"{p}.bn1", width))
                layout[f"{p}.conv2.weight"] = (width, width, 3, 3)
                layout.update(_bn(f"{p}.bn2", width))
            if index == 0 and (stage > 0 or in_channels != out_channels):
                layout[f"{p}.downsample.0.weight"] = (out_channels, in_channels, 1, 1)
                layout.update(_bn(f"{p}.downsample.1", out_channels))
            in_channels = out_channels
    layout["fc.weight"] = (num_classes, in_channels)
    layout["fc.bias"] = (num_classes,)
    return layout


@pytest.mark.parametrize("name,units,bottleneck", [("resnet18", (2, 2, 2, 2), False), ("resnet50", (3, 4, 6, 3), True)])
def test_state_dict_keys_and_shapes_are_torchvisions(name, units, bottleneck):
    with torch.device("meta"):
        model = create_model(name)
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == torchvision_layout(units, bottleneck)


def _random_state_dict(layout, seed=0):
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.1
    return state


def _reference_forward(state, x, units, bottleneck):
    """torchvision's ResNet forward (v1.5), written with torch.nn.functional from the dict."""

    def bn(t, p):
        return F.batch_norm(t, state[f"{p}.running_mean"], state[f"{p}.running_var"],
                            state[f"{p}.weight"], state[f"{p}.bias"], training=False, eps=1e-5)

    x = F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, count in enumerate(units):
        for index in range(count):
            p = f"layer{stage + 1}.{index}"
            stride = 2 if (stage > 0 and index == 0) else 1
            if bottleneck:
                out = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"]), f"{p}.bn1"))
                out = F.relu(bn(F.conv2d(out, state[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn2"))
                out = bn(F.conv2d(out, state[f"{p}.conv3.weight"]), f"{p}.bn3")
            else:
                out = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
                out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            if f"{p}.downsample.0.weight" in state:
                identity = bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            else:
                identity = x
            x = F.relu(out + identity)
    x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
    return F.linear(x, state["fc.weight"], state["fc.bias"])


@pytest.mark.parametrize("name,units,bottleneck,kwargs", [
    ("resnet18", (2, 2, 2, 2), False, {}),
    ("resnet50", (3, 4, 6, 3), True, {"bottleneck_stride": "3x3"}),
])
def test_torchvision_state_dict_loads_strictly_and_gives_the_same_logits(name, units, bottleneck, kwargs):
    state = _random_state_dict(torchvision_layout(units, bottleneck))
    model = create_model(name, **kwargs).eval()
    model.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), _reference_forward(state, x, units, bottleneck), rtol=1e-4, atol=1e-4)
