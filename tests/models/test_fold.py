"""BatchNorm folding and oneDNN fusion: the folded copy, and the folded copy with its convolutions,
additions and ReLUs fused (`resnets.models.fuse`), compute what the model computes, for every
registered CIFAR model and resnet18/50 (in fp32 within FP32_TOLERANCE plus what fp32 rounding
already does to the model, and folding in fp64 all but exactly; each fused call within fp32's
worst-case rounding, in any summation order, of its exact value), the model they were made
from is left as it was, and a folded copy never becomes a checkpoint. Every bound says how it
was derived, so that it holds on each CPU kind (AVX2, AVX-512, AVX-512 BF16, AMX)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets.models import create_model, list_models
from resnets.models.fold import check_not_folded, fold_batchnorm, is_folded
from resnets.models.fuse import (FusedConv, FusedUnit, describe_fusion, fuse_for_cpu,
                                 fusion_available, is_fused)
from resnets.models.zoo import describe
from resnets.train.inference import FP32_TOLERANCE

from calibration import trained_looking
from fp32_rounding import CHAOTIC, agree_to_fp32_rounding, own_rounding

CIFAR_MODELS = [name for name in list_models() if describe(name)["family"] == "cifar"]
needs_fusion = pytest.mark.skipif(not fusion_available(),
                                  reason="this PyTorch has no oneDNN fused convolution")


@pytest.fixture(autouse=True)
def no_denormals():
    """Tiny values flushed to zero: in a 1202-layer plain net at random weights some
    activations underflow, and denormal arithmetic would make the test minutes long."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def _calibrated(name: str, size: int, **kwargs) -> nn.Module:
    """`trained_looking` model `name` (10 classes), calibrated on 16 random images of `size`."""
    torch.manual_seed(0)
    channels = kwargs.get("in_channels", 3)
    return trained_looking(create_model(name, num_classes=10, **kwargs),
                            torch.randn(16, channels, size, size))

# fp32's unit roundoff, and Higham's gamma_n = n u / (1 - n u): a sum of n terms computed in fp32
# in ANY order (any blocking, any split of the reduction across threads or vector lanes, with
# or without FMA) is within gamma_{n-1} * sum |term| of the exact sum (Higham, "Accuracy and
# Stability of Numerical Algorithms", 2nd ed., section 3.1); each product's own rounding adds
# one more u, hence gamma_n for an n-term dot product. This holds on every CPU kind, whichever
# kernel oneDNN picks, so long as the kernel computes in fp32. A wrong post-op (ReLU before the
# addition, the addition or the bias missing) breaks it by orders of magnitude; so did, on
# resnet20, a FusedConv rounding its inputs and weights to bf16 (u = 2^-9) first.
FP32_UNIT_ROUNDOFF = 2.0 ** -24


def _gamma(n: int) -> float:
    return n * FP32_UNIT_ROUNDOFF / (1 - n * FP32_UNIT_ROUNDOFF)


def _conv64(conv: FusedConv, x: torch.Tensor, *, absolute: bool = False,
            bias: bool = True) -> torch.Tensor:
    """`conv` on `x` in fp64 (|W| and |b| when `absolute`): exact but for fp64's rounding,
    2^29 times finer than the fp32 bound it is compared with."""
    weight, shift = conv.weight.double(), conv.bias.double()
    if absolute:
        weight, shift = weight.abs(), shift.abs()
    return F.conv2d(x, weight, shift if bias else None, conv.stride, conv.padding,
                    conv.dilation, conv.groups)


def _fused_conv_bound(conv: FusedConv, x, x_error, other=None, other_error=None):
    """`conv` applied exactly (fp64) to the fp32-computed `x`, whose error is at most `x_error`,
    and an elementwise bound on how far its fp32 evaluation can be from that: the input's error
    through |W|, plus gamma_{k+2} times the sum of the magnitudes of the k products, the bias and
    the added `other` (k + 2 terms, each product rounded once). ReLU is exact and 1-Lipschitz."""
    fan_in = conv.weight[0].numel()
    value = _conv64(conv, x)
    magnitudes = _conv64(conv, x.abs() + x_error, absolute=True)
    error = _conv64(conv, x_error, absolute=True, bias=False)
    if other is not None:
        value, error = value + other, error + other_error
        magnitudes = magnitudes + other.abs() + other_error
    error = error + _gamma(fan_in + 2) * magnitudes
    return (value.relu() if conv.relu else value), error


def _fused_conv_agrees(conv: FusedConv, x: torch.Tensor, other: torch.Tensor | None = None) -> bool:
    """`conv(x, other)` within the fp32 bound of its exact value (fp64, the same weights)."""
    zero = torch.zeros_like(x, dtype=torch.float64)
    extra = (None, None) if other is None else (other.double(), torch.zeros_like(other.double()))
    value, error = _fused_conv_bound(conv, x.double(), zero, *extra)
    return bool(((conv(x, other).double() - value).abs() <= error).all())


def _check_fused_units(fused: nn.Module, images: torch.Tensor) -> int:
    """Each fused call (the stem's conv+ReLU, every unit), fed the fp32 input it saw in the
    fused model's forward pass, gives an output within the bound above of that unit computed
    exactly (fp64, the same fp32 weights): what fusing must keep, whatever the network does to
    rounding between units. Returns how many were checked."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
             for m in fused.modules()
             if isinstance(m, FusedUnit) or (m is fused.conv1 and isinstance(m, FusedConv))]
    with torch.no_grad():
        fused(images)
    for hook in hooks:
        hook.remove()
    for module, x, out in seen:
        x, zero = x.double(), torch.zeros_like(x, dtype=torch.float64)
        if isinstance(module, FusedConv):
            value, error = _fused_conv_bound(module, x, zero)
        else:
            value, error = x, zero
            for conv in module.convs[:-1]:
                value, error = _fused_conv_bound(conv, value, error)
            other = other_error = None
            if isinstance(module.downsample, FusedConv):  # a folded projection
                other, other_error = _fused_conv_bound(module.downsample, x, zero)
            elif module.downsample is not None:  # identity or zero padding: exact
                assert not list(module.downsample.parameters()) + list(module.downsample.buffers())
                other = module.downsample(x)
                other_error = torch.zeros_like(other)
            value, error = _fused_conv_bound(module.convs[-1], value, error, other, other_error)
        assert ((out.double() - value).abs() <= error).all(), module
    return len(seen)

def _check_fold(name: str, size: int) -> None:
    """Folded against unfolded logits, in fp32 and in fp64 (folded from fp64 weights)."""
    torch.manual_seed(0)
    model = trained_looking(create_model(name, num_classes=10), torch.randn(32, 3, size, size))
    images = torch.randn(4, 3, size, size)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    double = copy.deepcopy(model).double()
    folded = fold_batchnorm(model)  # one copy each (a 1202-layer copy takes seconds)
    assert is_folded(folded) and not is_folded(model) and not folded.training
    with torch.no_grad():
        expected, got = model(images), folded(images)
        exact, got64 = double(images.double()), fold_batchnorm(double)(images.double())
        fused = fuse_for_cpu(folded)  # in place: `got` was computed before
        got_fused = fused(images.contiguous(memory_format=torch.channels_last))
    own = own_rounding(expected, exact)
    if own < CHAOTIC:
        assert agree_to_fp32_rounding(got, expected, exact), name
        assert agree_to_fp32_rounding(got_fused, expected, exact), name
        # The arithmetic is the same up to rounding: in fp64, all but equal.
        scale = max(1.0, exact.abs().max().item())
        assert (got64 - exact).abs().max().item() / scale <= 1e-8, name
    # (A deep plain network at random weights, plain1202, is chaotic: its logits keep no digit
    # of any rounding, fp64's included; its folds are the same code as plain20's, checked
    # here, and its fused units are checked one by one, where no amplification enters.)
    post_activation = not model.preact
    assert is_fused(fused) == (fusion_available() and post_activation), name
    if is_fused(fused):
        assert _check_fused_units(fused, images) > 0, name
    # The model itself is untouched, BN and all.
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_folded_cifar_models_give_the_same_logits(name):
    _check_fold(name, size=8)  # any size works for the CIFAR family; 8x8 keeps 1202 quick


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_folded_resnet18_and_50_give_the_same_logits(name):
    _check_fold(name, size=32)


def test_residual_networks_fold_within_the_stated_fp32_tolerance():
    # Where fp32 rounding does little to the logits (own <= FP32_TOLERANCE / 10, checked here),
    # FP32_TOLERANCE itself holds (tests/fp32_rounding.py): these CIFAR residual networks
    # amplify rounding little (own ~1e-6). resnet50 at random weights amplifies it ~100x, to
    # own ~6e-5, beyond that: _check_fold covers it with the general bound.
    for name, size in (("resnet110", 8), ("preact_resnet56", 8)):
        torch.manual_seed(0)
        model = trained_looking(create_model(name, num_classes=10),
                                 torch.randn(16, 3, size, size))
        images = torch.randn(4, 3, size, size)
        with torch.no_grad():
            expected, got = model(images), fold_batchnorm(model)(images)
            exact = copy.deepcopy(model).double()(images.double())
        assert own_rounding(expected, exact) <= FP32_TOLERANCE / 10, name
        scale = max(1.0, expected.abs().max().item())
        assert (got - expected).abs().max().item() <= FP32_TOLERANCE * scale, name


def test_what_is_folded_and_what_stays():
    post = fold_batchnorm(create_model("resnet20"))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in post.modules())
    assert all(m.bias is not None for m in post.modules() if isinstance(m, nn.Conv2d))
    # Pre-activation: the BN after each inner conv folds; the one before it (after an
    # addition) and bn_final stay.
    pre = fold_batchnorm(create_model("preact_resnet20"))
    unit = pre.layer1[0]
    assert isinstance(unit.bn1, nn.BatchNorm2d) and isinstance(unit.bn2, nn.Identity)
    assert isinstance(pre.bn_final, nn.BatchNorm2d)
    projection = fold_batchnorm(create_model("resnet50")).layer1[0].downsample
    assert isinstance(projection[1], nn.Identity) and projection[0].bias is not None


def test_the_folded_copy_shares_no_tensor_or_module_with_its_model():
    """The copy is made with the folded layers already in place of the pairs (deepcopy's
    memo); everything else is copied: changing the copy leaves the model as it was."""
    model = trained_looking(create_model("resnet8", in_channels=1, num_classes=10),
                            torch.randn(8, 1, 12, 12))
    model.train()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    folded = fold_batchnorm(model)
    model_modules = {id(m) for m in model.modules()}
    assert not any(id(m) in model_modules for m in folded.modules())
    model_tensors = {t.data_ptr() for t in model.state_dict().values()}
    assert not any(t.data_ptr() in model_tensors for t in folded.state_dict().values())
    with torch.no_grad():
        for tensor in folded.state_dict().values():
            tensor.zero_()
    assert model.training and not folded.training
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(type(m) is nn.Conv2d and not m.weight.is_meta
               for m in folded.modules() if isinstance(m, nn.Conv2d))


def test_a_folded_model_is_never_checkpointed(tmp_path):
    from resnets.train.config import resolve_config
    from resnets.train.state import Counters, Meter, TrainState

    model = fold_batchnorm(create_model("resnet8", num_classes=4, in_channels=1))
    with pytest.raises(ValueError, match="never written to a checkpoint"):
        check_not_folded(model)
    state = TrainState(config=resolve_config("quick"), model=model, model_kwargs={},
                       normalizer=None, classes=["a", "b", "c", "d"], input_size=[1, 8, 8],
                       precision="fp32", optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                       meter=Meter.zero(torch.device("cpu")), counters=Counters())
    with pytest.raises(ValueError, match="never written to a checkpoint"):
        state.save(tmp_path / "folded.pt", lr=0.1)
    assert not (tmp_path / "folded.pt").exists()


def _fused_units(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, FusedUnit)]


@needs_fusion
def test_what_is_fused_and_what_stays():
    # Post-activation: the stem's conv+ReLU and every unit (option A, B and plain alike).
    for name, units in (("resnet20", 9), ("plain20", 9), ("resnet50", 16)):
        fused = fuse_for_cpu(fold_batchnorm(create_model(name)))
        assert isinstance(fused.conv1, FusedConv) and fused.conv1.relu, name
        assert isinstance(fused.act1, nn.Identity), name
        assert len(_fused_units(fused)) == units, name
        assert not any(isinstance(m, nn.ReLU) for m in fused.modules()), name
    # (Where each ReLU sits, before or after the addition, is what the logits tests check.)
    # Pre-activation units (BN-ReLU before the conv) stay as they are.
    pre = fuse_for_cpu(fold_batchnorm(create_model("preact_resnet20")))
    assert not _fused_units(pre) and not is_fused(pre)
    # Only a folded copy is fused: the model itself, with its BN, is returned as it is.
    model = create_model("resnet20")
    assert fuse_for_cpu(model) is model and not is_fused(model)


@needs_fusion
@pytest.mark.parametrize("name, kwargs, size, says", [
    ("resnet18", {"shortcut": "C"}, 32, "conv+add+ReLU fused"),
    ("resnet50", {"bottleneck_stride": "3x3"}, 32, "conv+add+ReLU fused"),
    ("resnet20", {"in_channels": 1}, 8, "conv+add+ReLU fused"),
    ("plain20", {}, 8, "conv+ReLU fused"),
    ("preact_resnet18", {}, 32, "conv+ReLU fused"),  # its stem only
    ("preact_resnet20", {}, 8, ""),
])
def test_other_configurations_fuse_to_the_same_logits(name, kwargs, size, says):
    model = _calibrated(name, size, **kwargs)
    images = torch.randn(3, kwargs.get("in_channels", 3), size, size)
    fused = fuse_for_cpu(fold_batchnorm(model))
    with torch.no_grad():
        expected, got = model(images), fused(images)
        exact = copy.deepcopy(model).double()(images.double())
    assert own_rounding(expected, exact) < CHAOTIC, name  # else the next line means nothing
    assert agree_to_fp32_rounding(got, expected, exact), name
    if is_fused(fused):
        assert _check_fused_units(fused, images) > 0, name
    assert describe_fusion(fused) == says, name


@needs_fusion
def test_a_fused_model_copies_and_pickles_without_its_packed_weights():
    import io
    import pickle

    fused = fuse_for_cpu(fold_batchnorm(_calibrated("resnet8", 8)))
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = fused(images)  # packs its weights
        for copied in (copy.deepcopy(fused), pickle.loads(pickle.dumps(fused))):
            assert all(m._packed == {} for m in copied.modules() if isinstance(m, FusedConv))
            assert torch.equal(copied(images), expected)
        buffer = io.BytesIO()
        torch.save(fused.state_dict(), buffer)  # buffers only: plain tensors
        assert buffer.getbuffer().nbytes > 0


def test_without_the_operators_the_folded_copy_is_kept(monkeypatch):
    from resnets.models import fuse

    monkeypatch.setattr(fuse, "fusion_available", lambda dtype=torch.float32: False)
    folded = fold_batchnorm(create_model("resnet20"))
    assert fuse.fuse_for_cpu(folded) is folded and not is_fused(folded)
    assert not _fused_units(folded)


@needs_fusion
def test_fused_takes_any_memory_format_and_bf16():
    model = _calibrated("resnet8", 8)
    fused = fuse_for_cpu(fold_batchnorm(model))
    images = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = model(images)
        exact = copy.deepcopy(model).double()(images.double())
        for batch in (images, images.contiguous(memory_format=torch.channels_last)):
            assert agree_to_fp32_rounding(fused(batch), expected, exact)
            assert _check_fused_units(fused, batch) == 4  # the stem and 3 units
        fused16 = fuse_for_cpu(fold_batchnorm(model).to(torch.bfloat16))
        got16 = fused16(images.to(torch.bfloat16)).float()
    # bf16: fused where oneDNN has the CPU's bf16 kernels, else the folded copy as it is.
    assert is_fused(fused16) == fusion_available(torch.bfloat16)
    # bf16 rounds inputs, weights and outputs to 8 bits and sums in fp32 on every CPU kind
    # (fused here where oneDNN has bf16 kernels, the folded copy's own elsewhere): resnet8, which
    # amplifies rounding little, measured 7.2e-3 fused and 7.3e-3 unfused, a seventh of the bound.
    scale = max(1.0, expected.abs().max().item())
    assert (got16 - expected).abs().max().item() <= 5e-2 * scale


@needs_fusion
def test_a_fused_conv_packs_its_weights_per_input_shape():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1).eval()
    fused, plain = FusedConv(conv, relu=True), FusedConv(conv, relu=False)
    with torch.no_grad():
        for shape in ((1, 8, 9, 9), (5, 8, 16, 16), (2, 8, 7, 11), (3, 8, 4, 4), (1, 8, 9, 9),
                      (6, 8, 5, 5)):
            images = torch.randn(shape)
            assert _fused_conv_agrees(fused, images), shape
            other = torch.randn_like(conv(images))
            assert _fused_conv_agrees(plain, images, other), shape
        assert len(fused._packed) == FusedConv.PACKED_SHAPES  # the last shapes only
        fused.float()  # a move or cast drops the packed copies, made again on the next call
        assert fused._packed == {}
        assert _fused_conv_agrees(fused, images)
        fused.weight.mul_(2)  # weights changed in place: packed again, not the old ones used
        assert _fused_conv_agrees(fused, images)  # against the doubled weights


@needs_fusion
def test_a_fused_conv_serves_several_threads_at_once():
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1).eval()
    fused = FusedConv(conv, relu=True)
    batches = [torch.randn(1 + n % 6, 4, 6 + n % 5, 6) for n in range(40)]  # > 4 shapes

    def check(images):
        with torch.no_grad():
            return _fused_conv_agrees(fused, images)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(check, batches))
    assert len(fused._packed) <= FusedConv.PACKED_SHAPES
