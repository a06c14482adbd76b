"""Registered models: the paper's parameter counts, depths, twins, gradients and errors."""

import copy
import io
import pickle

import pytest
import torch

import resnets
from resnets.models.zoo import describe
from resnets.models import count_parameters, create_model, list_models

from fp32_rounding import agree_to_fp32_rounding


@pytest.mark.parametrize(
    "depth,params",
    [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962), (1202, 19_421_274)],
)
def test_cifar_shortcut_a_parameter_counts_equal_plain_twin(depth, params):
    assert count_parameters(create_model(f"resnet{depth}")) == params
    assert count_parameters(create_model(f"plain{depth}")) == params


@pytest.mark.parametrize("depth,params", [(20, 272_474), (56, 855_770), (110, 1_730_714)])
def test_cifar_shortcut_b_parameter_counts(depth, params):
    assert count_parameters(create_model("cifar_resnet", depth=depth, shortcut="B")) == params


@pytest.mark.parametrize(
    "depth,params",
    [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160), (152, 60_192_808)],
)
def test_imagenet_parameter_counts(depth, params):
    with torch.device("meta"):
        model = create_model(f"resnet{depth}")
    assert count_parameters(model) == params


@pytest.mark.parametrize("name,stages", [("resnet18", (2, 2, 2, 2)), ("resnet34", (3, 4, 6, 3)),
                                         ("resnet50", (3, 4, 6, 3)), ("resnet101", (3, 4, 23, 3)),
                                         ("resnet152", (3, 8, 36, 3))])
def test_imagenet_stages_follow_table_1(name, stages):
    with torch.device("meta"):
        model = create_model(name)
    assert tuple(len(stage) for stage in model.stages) == stages
    assert model.depth == int(name.removeprefix("resnet"))


def test_resnet34_has_3_4_6_3_units():
    with torch.device("meta"):
        model = create_model("resnet34")
    assert [len(model.layer1), len(model.layer2), len(model.layer3), len(model.layer4)] == [3, 4, 6, 3]


@pytest.mark.parametrize("depth", [8, 14, 20, 74, 110])
def test_cifar_any_6n_plus_2_depth(depth):
    model = create_model("cifar_resnet", depth=depth, num_classes=100)
    n = (depth - 2) // 6
    assert [len(stage) for stage in model.stages] == [n, n, n]
    assert model.depth == depth
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_cifar_stages_have_16_32_64_channels_on_32_16_8_maps():
    model = create_model("resnet20").eval()
    _, outputs = model.forward_features(torch.randn(1, 3, 32, 32), return_stages=True)
    assert [tuple(o.shape[1:]) for o in outputs] == [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]


def _shapes(model):
    return {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize("residual,plain,kwargs", [("resnet56", "plain56", {}), ("resnet34", "plain34", {"shortcut": "A"}),
                                                   ("resnet50", "plain50", {"shortcut": "A"})])
def test_plain_twin_has_same_parameter_names_and_shapes(residual, plain, kwargs):
    with torch.device("meta"):
        a, b = create_model(residual, **kwargs), create_model(plain)
    assert _shapes(a) == _shapes(b)


def test_projection_shortcuts_add_only_downsample_parameters_to_the_plain_layout():
    with torch.device("meta"):
        a, b = _shapes(create_model("resnet34")), _shapes(create_model("plain34"))
    assert set(b) < set(a)
    assert all(".downsample." in key for key in set(a) - set(b))


def test_plain_twin_shares_initialisation_with_same_seed():
    torch.manual_seed(3)
    a = create_model("resnet20")
    torch.manual_seed(3)
    b = create_model("plain20")
    b_parameters = dict(b.named_parameters())
    assert set(b_parameters) == {name for name, _ in a.named_parameters()}
    for name, p in a.named_parameters():
        assert torch.equal(p, b_parameters[name]), name


def test_plain_and_residual_twins_compute_different_functions():
    torch.manual_seed(0)
    a = create_model("resnet20").eval()
    b = create_model("plain20").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(a(x), b(x))


@pytest.mark.parametrize("name", list_models())
def test_every_parameter_receives_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    x = torch.randn(2, 3, 64, 64) if model.family == "imagenet" else torch.randn(2, 3, 16, 16)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def test_zero_init_last_flag_makes_every_residual_unit_start_as_identity():
    model = create_model("resnet20", zero_init_last=True).eval()
    assert all(torch.count_nonzero(unit.bn2.weight) == 0 for unit in model.units)
    x = torch.rand(2, 16, 8, 8)
    for unit in model.layer1:  # shortcuts are identities here: each unit passes x through
        assert torch.equal(unit(x), x)
    plain = create_model("plain20", zero_init_last=True)  # plain units are left alone
    assert all(torch.count_nonzero(unit.bn2.weight) > 0 for unit in plain.units)


def test_forward_features_and_head_compose_to_forward():
    model = create_model("resnet18", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, 512, 2, 2)
    assert model.forward_head(features, pre_logits=True).shape == (2, 512)
    assert torch.allclose(model.forward_head(features), model(x))


def test_grayscale_input_and_any_input_size():
    model = create_model("resnet20", in_channels=1)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert model.conv1.in_channels == 1


def test_torch_save_load_weights_only_and_pickle_round_trips():
    torch.manual_seed(0)
    model = create_model("preact_resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    copy = create_model("preact_resnet20").eval()
    copy.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(copy(x), model(x))
    clone = pickle.loads(pickle.dumps(model))
    assert torch.equal(clone(x), model(x))


def test_channels_last_gives_same_output():
    torch.manual_seed(0)
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    exact = copy.deepcopy(model).double()(x.double())
    model = model.to(memory_format=torch.channels_last)
    got = model(x.contiguous(memory_format=torch.channels_last))  # other kernels, other order
    assert agree_to_fp32_rounding(got, expected, exact)  # the bound: tests/fp32_rounding.py


def test_bad_depth_names_the_two_nearest_valid_depths():
    with pytest.raises(resnets.UserError, match=r"21 is not: the nearest valid depths are 20 and 26"):
        create_model("cifar_resnet", depth=21)
    with pytest.raises(resnets.UserError, match=r"nearest valid depths are 8 and 14"):
        create_model("cifar_plain", depth=5)
    with pytest.raises(resnets.UserError, match=r"18, 34, 50, 101, 152"):
        create_model("imagenet_resnet", depth=20)


def test_unknown_name_lists_the_closest_names():
    with pytest.raises(resnets.UserError, match=r"unknown model 'resnt56'; closest: resnet56"):
        create_model("resnt56")


def test_kind_and_depth_names_resolve_for_any_valid_depth():
    assert create_model("plain74").depth == 74 and create_model("resnet8").depth == 8
    assert describe("plain74") == {"name": "plain74", "family": "cifar", "kind": "plain", "depth": 74}
    assert describe("preact_resnet14")["kind"] == "preact_resnet"
    # The depths of Table 1 mean the ImageNet networks, though 50 and 152 are also 6n+2.
    assert describe("resnet50")["family"] == "imagenet" and describe("plain152")["family"] == "imagenet"
    assert describe("cifar_resnet")["depth"] is None
    plain74 = create_model("plain74")
    twin = create_model("cifar_plain", depth=74)
    assert [n for n, _ in plain74.named_parameters()] == [n for n, _ in twin.named_parameters()]


def test_a_kind_and_depth_name_with_an_invalid_depth_names_the_valid_ones():
    with pytest.raises(resnets.UserError, match=r"unknown model 'resnet5'.*18, 34, 50, 101, 152.*"
                                                r"nearest valid depths are 8 and 14"):
        create_model("resnet5")


def test_user_errors_are_value_errors_and_exported():
    assert issubclass(resnets.UserError, ValueError)
    with pytest.raises(resnets.UserError, match="shortcut 'D'"):
        create_model("resnet20", shortcut="D")
    with pytest.raises(resnets.UserError, match="resnet56 fixes depth=56"):
        create_model("resnet56", depth=20)
    with pytest.raises(resnets.UserError, match="unexpected keyword"):
        create_model("resnet56", colour="red")


def test_list_models_pattern():
    names = resnets.list_models("resnet*")
    assert "resnet20" in names and "resnet1202" in names and "resnet152" in names
    assert all(name.startswith("resnet") for name in names)
    required = [f"{kind}{d}" for kind in ("resnet", "plain") for d in (18, 34, 50, 101, 152, 20, 32, 44, 56, 110, 1202)]
    assert set(required) <= set(resnets.list_models())
    assert {"preact_resnet20", "preact_resnet50", "cifar_resnet", "cifar_plain"} <= set(resnets.list_models())
