"""onnxruntime as an inference engine: on every registered CIFAR model kind and resnet18/50
(random weights, trained-looking BatchNorm) it gives PyTorch's top-1 and logits within the
derived tolerance (resnets.train.onnx_engine); the export is cached by the checkpoint's
content (a changed checkpoint exports again), a corrupt cached file is rebuilt, an engine that
disagrees falls back to PyTorch and says so, and "auto" runs whichever engine a (given)
measurement found faster at each batch size.

Depth, by cost: each registered CIFAR kind (residual, plain, pre-activation) at 20 layers, and
plain56, whose forward pass amplifies fp32 rounding (~5e-4 of its logits at random weights),
so the rounding term of the derived tolerance is exercised. Deeper ones only repeat these
units, while torch.onnx's exporter takes time linear in depth (minutes for each 110-layer net
on a 2-core CPU, the better part of an hour for a 1202-layer one). At 110 layers and beyond a
plain net's fp32 logits are ~20% rounding at random weights, so neither engine has a top-1 to
compare there: only the logits bound would say anything."""

import copy
import json

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")  # the optional extra resnets[onnx]; installed in CI

from calibration import trained_looking  # noqa: E402

import resnets.train.engine as engine  # noqa: E402
import resnets.train.onnx_engine as onnx_engine_module  # noqa: E402
import resnets.train.probe as probe  # noqa: E402
from resnets.models import cifar_resnet, create_model  # noqa: E402
from resnets.train.engine import InferenceModel, choose_engine  # noqa: E402
from resnets.train.onnx_engine import FP32_TOLERANCE, OnnxEngine, onnx_engine  # noqa: E402

CPU = torch.device("cpu")
MODELS = [(f"{kind}20", 32) for kind in ("resnet", "plain", "preact_resnet")] + [
    ("plain56", 32), ("resnet18", 32), ("resnet50", 32)]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """A fresh cache folder, nothing loaded in this process; denormals flushed (a deep plain
    net at random weights underflows, and denormal arithmetic is slow), as in test_fold."""
    monkeypatch.setattr(probe, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(onnx_engine_module, "_engines", {})
    torch.set_flush_denormal(True)
    yield tmp_path / "cache"
    torch.set_flush_denormal(False)


@pytest.fixture
def exports(monkeypatch):
    """Counts the exports made."""
    real, made = onnx_engine_module.export_model, []
    monkeypatch.setattr(onnx_engine_module, "export_model",
                        lambda *a, **k: made.append(1) or real(*a, **k))
    return made


def _images(size: int) -> torch.Tensor:
    """16 random (3, size, size) images to calibrate BatchNorm on."""
    return torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(2))


def _small() -> nn.Module:
    torch.manual_seed(0)
    return trained_looking(cifar_resnet(depth=8, width=4, num_classes=4), _images(8))


@pytest.mark.parametrize("name, size", MODELS)
def test_onnxruntime_gives_pytorchs_top1_and_logits_within_the_derived_tolerance(name, size):
    torch.manual_seed(0)
    model = trained_looking(create_model(name, num_classes=10), _images(size))
    runtime, detail = onnx_engine(model, (3, size, size))
    assert runtime is not None, detail
    images = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(images).double()
        exact = copy.deepcopy(model).double()(images.double())
    got = runtime(images).double()
    # Two fp32 evaluations in different summation orders: each within its rounding of the
    # exact (fp64) result; PyTorch's measured, onnxruntime's taken as at most twice it.
    scale = max(1.0, exact.abs().max().item())
    rounding = (expected - exact).abs().max().item()
    tolerance = FP32_TOLERANCE * scale + 3 * rounding
    assert (got - expected).abs().max().item() <= tolerance, name
    top2 = expected.topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 2 * tolerance  # closer: a tie to fp32's precision
    assert clear.sum() >= 4, name  # the top-1 comparison is not vacuous at these depths
    assert torch.equal(got.argmax(1)[clear], expected.argmax(1)[clear]), name
    fast = InferenceModel(model, CPU, "fp32", engine="onnxruntime")
    assert torch.equal(fast(images), runtime(images)) and fast.describe() == "onnxruntime, fp32"


def test_the_export_is_cached_by_the_checkpoints_content(exports, own_cache):
    model = _small()
    images = torch.randn(3, 3, 8, 8)
    first, _ = onnx_engine(model, (3, 8, 8))
    assert len(exports) == 1
    onnx_engine_module._engines.clear()  # a new process: read from the cache, not exported
    again, detail = onnx_engine(model, (3, 8, 8))
    assert len(exports) == 1 and detail == "cached" and torch.equal(again(images), first(images))
    with torch.no_grad():  # another checkpoint of the same model: exported again
        model.fc.weight.add_(0.5)
    changed, _ = onnx_engine(model, (3, 8, 8))
    assert len(exports) == 2 and not torch.equal(changed(images), first(images))
    assert len(list((own_cache / "onnx").glob("*.onnx"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "record"])
def test_a_corrupt_cached_onnx_file_is_rebuilt(exports, own_cache, damage):
    model = _small()
    onnx_engine(model, (3, 8, 8))
    (path,) = (own_cache / "onnx").glob("*.onnx")
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not an onnx model" * 100)
    elif damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.with_suffix(".json").write_text("{not json")
    onnx_engine_module._engines.clear()
    rebuilt, detail = onnx_engine(model, (3, 8, 8))
    assert rebuilt is not None and len(exports) == 2, detail
    record = json.loads(path.with_suffix(".json").read_text())
    import hashlib

    assert record["agrees"] and record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(rebuilt(images), model(images), atol=1e-4)


def test_an_engine_that_disagrees_runs_pytorch_and_says_why(monkeypatch):
    monkeypatch.setattr(onnx_engine_module, "check_outputs",
                        lambda *a: (False, "onnxruntime's top-1 differs from PyTorch's (x)"))
    model = _small()
    fast = InferenceModel(model, CPU, "fp32", engine="onnxruntime")
    reference = InferenceModel(model, CPU, "fp32", engine="torch")
    images = torch.randn(2, 3, 8, 8)
    assert torch.equal(fast(images), reference(images))
    assert fast.describe().endswith("; onnxruntime not used: onnxruntime's top-1 differs from "
                                    "PyTorch's (x)")
    assert not list((probe.cache_root() / "onnx").glob("*.onnx"))  # nothing cached to reuse


def _tables(monkeypatch, torch_fp32, torch_bf16, runtime):
    monkeypatch.setattr(engine, "torch_table", lambda: {"fp32": torch_fp32, "bf16": torch_bf16})
    monkeypatch.setattr(engine, "onnxruntime_table", lambda: {"onnxruntime": runtime})


def _model_timings(monkeypatch, onnxruntime_s, torch_s):
    """The model's own check (where the tables chose onnxruntime) given, not timed; returns
    the list of engines timed."""
    timed = []

    def given(call, batch, **options):
        on_onnxruntime = isinstance(call, OnnxEngine)
        timed.append("onnxruntime" if on_onnxruntime else "torch")
        return onnxruntime_s if on_onnxruntime else torch_s

    monkeypatch.setattr(engine, "_time_calls", given)
    return timed


def test_auto_runs_the_engine_measured_faster_at_each_batch_size(monkeypatch):
    # as measured on an AVX-512 BF16 EPYC: onnxruntime ahead at batch 1, PyTorch bf16 at 64
    _tables(monkeypatch, [1.7e-3, 4e-4, 2.4e-4], [1.7e-3, 3e-4, 2.4e-4], [5e-4, 4.5e-4, 4.8e-4])
    _model_timings(monkeypatch, onnxruntime_s=5e-4, torch_s=1.7e-3)
    assert [choose_engine("bf16", b) for b in (1, 2, 6, 8, 30, 64, 500)] == \
        ["onnxruntime", "onnxruntime", "torch", "torch", "torch", "torch", "torch"]
    assert [choose_engine("fp32", b) for b in (1, 8, 64)] == ["onnxruntime", "torch", "torch"]
    model = _small()
    fast = InferenceModel(model, CPU, "bf16", engine="auto")
    fast(torch.randn(1, 3, 8, 8))
    assert fast.describe() == "onnxruntime, fp32" and fast.used_precision == "fp32"
    fast(torch.randn(64, 3, 8, 8))
    assert fast.describe().startswith("onnxruntime, fp32 and bf16, BatchNorm folded")
    assert InferenceModel(model, CPU, "fp32", engine="torch").engine_for(1) == "torch"


def test_where_the_tables_choose_onnxruntime_the_model_itself_is_timed_once_per_batch_size(
        monkeypatch):
    # resnet20's tables put onnxruntime ahead at batch 1; a large model runs faster in bf16
    # PyTorch there (resnet50 at 224 x 224: 42 against 25 images/s on the EPYC)
    _tables(monkeypatch, [1.7e-3, 4e-4, 2.4e-4], [1.7e-3, 3e-4, 2.4e-4], [5e-4, 4.5e-4, 4.8e-4])
    timed = _model_timings(monkeypatch, onnxruntime_s=4e-2, torch_s=2.4e-2)
    fast = InferenceModel(_small(), CPU, "bf16", engine="auto")
    for _ in range(3):
        fast(torch.randn(1, 3, 8, 8))
    assert fast.describe().startswith("bf16, BatchNorm folded") and timed == ["torch", "onnxruntime"]
    fast(torch.randn(64, 3, 8, 8))  # the tables say torch: nothing timed
    assert timed == ["torch", "onnxruntime"] and fast.engine_for(64) == "torch"
    # the other way round: onnxruntime kept
    timed = _model_timings(monkeypatch, onnxruntime_s=1e-3, torch_s=3e-3)
    other = InferenceModel(_small(), CPU, "bf16", engine="auto")
    other(torch.randn(1, 3, 8, 8))
    assert other.describe() == "onnxruntime, fp32" and len(timed) == 2


def test_the_onnxruntime_engine_computes_in_fp32_only():
    from resnets.errors import UserError

    with pytest.raises(UserError, match="computes in fp32"):
        InferenceModel(_small(), CPU, "bf16", engine="onnxruntime")
    with pytest.raises(UserError, match="engine must be one of auto, torch, onnxruntime"):
        InferenceModel(_small(), CPU, "fp32", engine="ort")
