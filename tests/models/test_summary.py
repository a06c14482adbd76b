"""Parameters and multiply-add FLOPs, counted by running the model, against the paper's Table 1."""

import json

import pytest

from resnets.models import format_info, list_models, model_info
from resnets.models.figures import measure, stored_figures

TABLE_1_FLOPS = {"resnet18": 1.8e9, "resnet34": 3.6e9, "resnet50": 3.8e9, "resnet101": 7.6e9, "resnet152": 11.3e9}


@pytest.mark.parametrize("name,flops", sorted(TABLE_1_FLOPS.items()))
def test_multiply_adds_at_224_within_2_percent_of_table_1(name, flops):
    info = model_info(name, bottleneck_stride="1x1") if name in ("resnet50", "resnet101", "resnet152") else model_info(name)
    assert info["input_size"] == [3, 224, 224]
    assert abs(info["macs"] - flops) / flops < 0.02


def test_stage_rows_add_up_to_totals_and_follow_table_1():
    info = model_info("resnet34")
    assert [row["stage"] for row in info["stages"]] == ["conv1", "layer1", "layer2", "layer3", "layer4", "head"]
    assert sum(row["params"] for row in info["stages"]) == info["params"] == 21_797_672
    assert sum(row["macs"] for row in info["stages"]) == info["macs"]
    assert [row["output"][1:] for row in info["stages"][:5]] == [[56, 56], [56, 56], [28, 28], [14, 14], [7, 7]]
    assert info["stages"][2]["layout"] == "[3x3, 128 | 3x3, 128] x 4"


def test_cifar_info_at_another_input_size():
    info = model_info("resnet20", input_size=(1, 28, 28))
    assert info["input_size"] == [1, 28, 28]
    assert info["stages"][-2]["output"] == [64, 7, 7]
    text = format_info(info)
    assert "[3x3, 64 | 3x3, 64] x 3" in text and "8.75% error" in text


DEEPEST = [name for name in list_models() if name.endswith("1202")]


@pytest.mark.parametrize("name", [name for name in list_models() if name not in DEEPEST])
def test_stored_figures_match_a_fresh_count(name):
    assert stored_figures()[name] == json.loads(json.dumps(measure(name)))


@pytest.mark.parametrize("name", DEEPEST)
def test_stored_figures_of_1202_layers_follow_from_fresh_counts_at_20_and_56(name):
    """Depth 6n+2 adds the same units to each stage for each n, so params and multiply-adds
    grow linearly in n: the 1202-layer figures are checked against that line through fresh
    counts at 20 and 56 (the same builder and counting code), and against the paper's 19.4M
    parameters, instead of a direct count (about 9 s a model here)."""
    small, large = measure(name.replace("1202", "20")), measure(name.replace("1202", "56"))
    per_n = {key: (large[key] - small[key]) // (9 - 3) for key in ("params", "macs")}
    assert all((large[key] - small[key]) % (9 - 3) == 0 for key in per_n)
    expected = {key: small[key] + (200 - 3) * per_n[key] for key in per_n}
    stored = stored_figures()[name]
    assert {key: stored[key] for key in per_n} == expected
    assert stored["input_size"] == small["input_size"] == [3, 32, 32]
    assert round(stored["params"] / 1e6, 1) == 19.4  # Table 6: 19.4M


@pytest.mark.parametrize("name, shape", [("resnet20", (1, 20, 20)), ("plain20", (3, 32, 32)),
                                         ("resnet50", (3, 64, 64)), ("resnet18", (3, 56, 48))])
def test_activation_bytes_are_the_layer_outputs_of_a_real_forward_pass(name, shape):
    """The estimate (a forward pass of an empty batch on uninitialised weights) counts what a
    forward pass of one real image leaves: every leaf module's output, 4 bytes an element."""
    import torch

    from resnets.models import create_model
    from resnets.models.summary import activation_bytes

    real = create_model(name, in_channels=shape[0], num_classes=10)
    sizes = []
    leaves = [m for m in real.modules() if next(m.children(), None) is None]
    for module in leaves:
        module.register_forward_hook(lambda m, a, out: sizes.append(out.numel() * 4))
    with torch.no_grad():
        real.eval()(torch.randn(1, *shape))
    with torch.device("meta"):
        probe = create_model(name, in_channels=shape[0], num_classes=10)
    assert activation_bytes(probe, shape) == sum(sizes)


def test_a_huge_input_is_estimated_without_memory_or_torchdynamo():
    """10^10 pixels: the empty batch holds nothing, so the estimate is made (and a command can
    refuse the size) at once; and no TorchDynamo or SymPy import (the meta device's Python
    operators would take about 1 s of every command's start-up, SymPy about 0.3 s)."""
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from resnets.models import create_model\n"
            "from resnets.models.summary import _largest_output_bytes\n"
            "with torch.device('meta'):\n"
            "    m = create_model('resnet50', num_classes=1000)\n"
            "print(_largest_output_bytes(m, (3, 100000, 100000)), 'torch._dynamo' in sys.modules,\n"
            "      'sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    largest, dynamo, sympy = out.stdout.split()
    assert int(largest) == 64 * 50000 * 50000 * 4  # the stem's output, at half the side
    assert dynamo == "False" and sympy == "False"
