"""The fast inference path of eval, predict and the library: BatchNorm folded, channels_last,
bf16 where it measured faster (a measurement given here), under inference_mode; its logits against
the model's; and a trained model left as it was."""

import copy

import pytest
import torch
from torch import nn

import resnets.train.engine as engine
from resnets.cli import main
from resnets.models.fuse import fusion_available
from resnets.train import fit
from resnets.train.inference import (BF16_TOLERANCE, FP32_TOLERANCE, InferenceModel,
                                     evaluate_checkpoint, inference_precision, load_trained,
                                     predict_images)
from resnets.train.parts import Parts

from fp32_rounding import own_rounding
from train_fakes import (FakeLoader, FakeNormalizer, fake_load_dataset, make_dataset,
                         tiny_config)

CPU = torch.device("cpu")


def _fused_words(dtype: torch.dtype = torch.float32) -> str:
    """What eval adds to its line for a residual network fused in `dtype` on this CPU."""
    return ", conv+add+ReLU fused" if fusion_available(dtype) else ""


def _measured(fp32: float, bf16: float) -> dict:
    """A given inference measurement (seconds per image at each probed batch size)."""
    return {"fp32": [fp32] * len(engine.PROBE_BATCHES), "bf16": [bf16] * len(engine.PROBE_BATCHES)}


class _FakeClock:
    """time.perf_counter for engine's timing: each call of `calls_of` advances it by the next
    of `seconds` (no test times anything)."""

    def __init__(self, seconds):
        self.now, self.seconds, self.calls = 0.0, list(seconds), 0

    def perf_counter(self):
        return self.now

    def call(self, batch):
        self.calls += 1
        self.now += self.seconds.pop(0) if self.seconds else 1.0


def test_a_probe_cell_far_slower_than_its_rival_stops_after_one_timed_call(monkeypatch):
    clock = _FakeClock([9.0, 20.0])  # the untimed call, then 20 s for 4 images: 5 s each
    monkeypatch.setattr(engine.time, "perf_counter", clock.perf_counter)
    batch = torch.zeros(4, 3, 32, 32)
    assert engine._time_calls(clock.call, batch, seconds=0.5, decided_above=3.0) == 5.0
    assert clock.calls == 2
    clock = _FakeClock([9.0, 4.0, 8.0, 4.0, 4.0, 12.0])  # close: the median of 5 timed calls
    monkeypatch.setattr(engine.time, "perf_counter", clock.perf_counter)
    assert engine._time_calls(clock.call, batch, seconds=0.5, decided_above=3.0) == 1.0
    assert clock.calls == 6


def test_the_torch_table_times_bf16_in_full_only_where_it_is_close_to_fp32(monkeypatch):
    asked = []

    def time_calls(path, batch, decided_above=float("inf")):
        asked.append((path, len(batch), decided_above))
        return {"fp32": 1e-3, "bf16": 5e-3}[path] * len(batch)

    monkeypatch.setattr(engine, "_time_calls", time_calls)
    batches = [torch.zeros(b, 3, 32, 32) for b in engine.PROBE_BATCHES]
    rows = engine._torch_rows("fp32", "bf16", batches)
    assert rows == {p: [seconds * len(b) for b in batches]
                    for p, seconds in (("fp32", 1e-3), ("bf16", 5e-3))}
    fp32_asked = [entry for entry in asked if entry[0] == "fp32"]
    bf16_asked = [entry for entry in asked if entry[0] == "bf16"]
    assert all(limit == float("inf") for *_, limit in fp32_asked)  # fp32 always in full
    assert [limit for *_, limit in bf16_asked] == pytest.approx(
        [engine.probe.DECISIVE * 1e-3 * b for b in engine.PROBE_BATCHES])  # against fp32's cell


@pytest.mark.parametrize("times, expected", [(_measured(1.0, 0.35), "bf16"),  # EPYC: 2.9x
                                             (_measured(1.0, 8.0), "fp32"),   # AVX2: emulated
                                             (_measured(1.0, 1.1), "fp32")])
def test_auto_is_bf16_only_where_bf16_inference_measured_faster(times, expected):
    assert inference_precision("auto", CPU, times) == expected
    assert inference_precision("fp32", CPU, times) == "fp32"  # forcible either way
    assert inference_precision("bf16", CPU, times) == "bf16"


def _resnet(name="resnet20", size=8):
    """A model with trained-looking BatchNorm statistics, in eval mode."""
    from resnets.models import create_model

    torch.manual_seed(0)
    model = create_model(name, num_classes=10)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
    with torch.no_grad():
        model.train()(torch.randn(16, 3, size, size))
    return model.eval()


def test_the_fp32_path_is_the_model_folded_in_channels_last_under_inference_mode():
    model = _resnet()
    fast = InferenceModel(model, CPU, "fp32")
    images = torch.randn(4, 3, 8, 8)  # contiguous: the model converts
    logits = fast(images)
    with torch.no_grad():
        expected = model(images)
        exact = copy.deepcopy(model).double()(images.double())
    assert logits.dtype == torch.float32 and logits.is_inference() and not logits.requires_grad
    # FP32_TOLERANCE itself holds where fp32 rounding does little to the logits (own below
    # FP32_TOLERANCE / 10, resnet20 ~1e-6): derived in tests/fp32_rounding.py.
    assert own_rounding(expected, exact) <= FP32_TOLERANCE / 10
    assert (logits - expected).abs().max() <= FP32_TOLERANCE * max(1.0, expected.abs().max())
    conv = fast.model.conv1
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert not fast.training
    with pytest.raises(ValueError, match="for inference only"):
        fast.train()


@pytest.mark.parametrize("name, size", [("resnet20", 8), ("resnet18", 32)])
def test_the_bf16_path_agrees_within_the_stated_tolerance(name, size):
    model = _resnet(name, size)
    images = torch.randn(8, 3, size, size)
    fast = InferenceModel(model, CPU, "bf16")
    assert next(fast.model.parameters()).dtype == torch.bfloat16
    logits = fast(images)
    with torch.no_grad():
        expected = model(images)
        own = copy.deepcopy(model).bfloat16()(images.bfloat16()).float()  # torch's own bf16
    assert logits.dtype == torch.float32
    # bf16 keeps 8 bits (u = 2^-8), and every CPU kind's bf16 convolution (AVX-512 BF16, AMX,
    # or emulated in fp32 on AVX2 and plain AVX-512) rounds inputs, weights and outputs to it and
    # sums in fp32; the network amplifies those roundings as it does fp32's (tests/fp32_rounding
    # .py). The model itself, cast to bf16, is one sample of that (resnet18 at these weights,
    # 3 batches: 3.9e-2..5.0e-2 of the largest logit, on an AVX-512 BF16 CPU); the fast path,
    # rounding at other points (folded weights, fused additions), another: 3.2e-2..4.6e-2, at
    # most 1.12 times the model's. So BF16_TOLERANCE, plus twice the model's own bf16 error
    # where the network amplifies it that much (BF16_TOLERANCE alone: torch's own bf16 model
    # exceeded it on one of those batches).
    scale = max(1.0, expected.abs().max().item())
    own_error = (own - expected).abs().max().item() / scale
    assert (logits - expected).abs().max().item() / scale <= BF16_TOLERANCE + 2 * own_error


def _resnet_parts():
    from resnets.models import cifar_resnet

    return Parts(create_model=lambda name, **kwargs: cifar_resnet(depth=8, width=4, **kwargs),
                 load_dataset=fake_load_dataset, fit_normalizer=FakeNormalizer.fit,
                 normalizer_from_state=FakeNormalizer.from_state_dict, make_loader=FakeLoader)


@pytest.fixture
def resnet_run(tmp_path):
    parts = _resnet_parts()
    fit(tiny_config(model="resnet8", iters=12, compile=False), tmp_path / "run",
        progress="none", parts=parts)
    return tmp_path / "run", parts


def test_eval_and_predict_run_the_fast_path_and_leave_the_model_alone(resnet_run, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setattr(engine, "torch_table", lambda: _measured(1.0, 2.0))  # auto: fp32 here
    run, parts = resnet_run
    trained = load_trained(run, parts=parts)
    state = {k: v.clone() for k, v in trained.model.state_dict().items()}
    fast = evaluate_checkpoint(trained, parts=parts)
    plain = evaluate_checkpoint(trained, parts=parts, fast=False)
    assert fast["precision"] == "fp32, BatchNorm folded" + _fused_words()
    assert plain["precision"] == "fp32"
    assert fast["err"] == plain["err"] and fast["loss"] == pytest.approx(plain["loss"], rel=1e-4)
    assert trained.inference_model("auto") is trained.inference_model("fp32")  # made once
    kept = trained.inference_model("fp32")
    with torch.no_grad():  # the model changes (a lesion, a load_state_dict): a new copy
        trained.model.conv1.weight.mul_(2)
    assert trained.inference_model("fp32") is not kept
    trained.model.load_state_dict(state)
    assert trained.model.state_dict().keys() == state.keys()
    assert all(torch.equal(trained.model.state_dict()[k], v) for k, v in state.items())
    assert any(isinstance(m, nn.BatchNorm2d) for m in trained.model.modules())

    from PIL import Image

    paths = []
    for index, image in enumerate(make_dataset(6, seed=3).images[:, 0].numpy()):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(image).save(paths[-1])
    ours = predict_images(trained, paths, top=2)
    reference = predict_images(trained, paths, top=2, fast=False)
    for got, want in zip(ours, reference):
        assert [name for name, _ in got] == [name for name, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-4)


def test_eval_says_how_it_computed(resnet_run, monkeypatch, capsys):
    import resnets.train.parts as parts_module

    run, parts = resnet_run
    monkeypatch.setattr(parts_module, "default_parts", lambda: parts)
    monkeypatch.setattr(engine, "torch_table", lambda: _measured(1.0, 0.35))  # bf16 faster
    assert main(["eval", str(run), "--device", "cpu"]) == 0  # the run's precision: fp32
    assert capsys.readouterr().out.splitlines()[0].endswith(
        f"(fp32, BatchNorm folded{_fused_words()})")
    assert main(["eval", str(run), "--device", "cpu", "--precision", "bf16"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(
        f"(bf16, BatchNorm folded{_fused_words(torch.bfloat16)}; the run's own figures were "
        f"computed in fp32)")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_eval_of_a_run_reproduces_the_test_error_its_summary_reports(tmp_path, monkeypatch,
                                                                     precision):
    """`resnets eval RUN` evaluates in the precision the run evaluated in, whichever inference
    measured faster here (given: the other one), so it reports the run's own figure; forced to
    another precision, it says the run's figures used another."""
    other = "bf16" if precision == "fp32" else "fp32"
    faster = _measured(1.0, 0.35) if other == "bf16" else _measured(1.0, 2.0)
    monkeypatch.setattr(engine, "torch_table", lambda: faster)
    parts = _resnet_parts()
    summary = fit(tiny_config(model="resnet8", iters=12, compile=False, precision=precision),
                  tmp_path / "run", progress="none", parts=parts)
    trained = load_trained(tmp_path / "run", parts=parts)
    result = evaluate_checkpoint(trained, parts=parts)
    assert result["precision"].startswith(f"{precision}, BatchNorm folded")
    assert "the run's own figures" not in result["precision"]
    assert result["err"] == summary["final"]["test_err"]
    forced = evaluate_checkpoint(trained, parts=parts, precision=other)
    assert forced["precision"].startswith(f"{other}, BatchNorm folded")
    assert forced["precision"].endswith(f"; the run's own figures were computed in {precision}")
