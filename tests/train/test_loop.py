import json
import math

import pytest
import torch

import resnets.train.loop as loop
import resnets.train.setup as setup
from resnets.errors import UserError
from resnets.train import fit, load_checkpoint
from resnets.train.loop import TrainingDiverged, TrainingInterrupted, evaluate, train_step
from resnets.train.metrics import read_metrics

from train_fakes import FakeNormalizer, TinyNet, make_dataset, tiny_config


def _train_losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if r["split"] == "train"]


def test_a_few_steps_on_one_fixed_batch_lower_its_loss():
    torch.manual_seed(0)
    data = make_dataset(32, seed=0)
    images = FakeNormalizer.fit("channel", data.images)(data.images)
    model = TinyNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = [train_step(model, optimizer, images, data.labels)[0].item() for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0]


def test_bf16_and_fp32_agree_on_the_first_step_within_bf16_tolerance():
    data = make_dataset(32, seed=0)
    images = FakeNormalizer.fit("channel", data.images)(data.images)
    results = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = TinyNet()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        loss, _ = train_step(model, optimizer, images, data.labels, precision=precision)
        results[precision] = (loss.item(), model.fc.weight.detach().clone())
        assert model.fc.weight.dtype == torch.float32  # weights stay fp32 under autocast
    (loss32, w32), (loss16, w16) = results["fp32"], results["bf16"]
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    assert torch.allclose(w16, w32, atol=2e-3)


def test_evaluate_reports_top1_top5_and_per_class_error():
    data = make_dataset(20, seed=0, classes=4)

    class Oracle(torch.nn.Module):  # right on classes 0-2, always says 0 for class 3
        def forward(self, x):
            labels = x[:, 0, 0, 0].long()
            labels = torch.where(labels == 3, torch.zeros_like(labels), labels)
            return torch.nn.functional.one_hot(labels, 6).float() * 5

    images = data.labels.float().view(-1, 1, 1, 1).expand(-1, 1, 2, 2)
    result = evaluate(Oracle(), [(images[:8], data.labels[:8]), (images[8:], data.labels[8:])])
    assert result["err"] == pytest.approx(25.0) and result["n"] == 20
    assert result["err_top5"] == 0.0
    assert result["per_class_err"][:4] == [0.0, 0.0, 0.0, 100.0]
    assert result["per_class_err"][4:] == [None, None]  # classes without images


def test_fit_writes_a_complete_run_directory(tmp_path, fake_rooms):
    summary = fit(tiny_config(), tmp_path / "run", progress="none")
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        ".lock", ".resnets-run", "checkpoints", "config.json", "metrics.jsonl", "plots",
        "summary.json"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["error.png", "loss.png"]
    config = json.loads((run / "config.json").read_text())
    assert config["iters"] == 12 and config["environment"]["torch"] == torch.__version__
    records = read_metrics(run)
    train = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 13))
    assert set(train[0]) == {"split", "step", "epoch", "loss", "err", "lr", "img_s", "time"}
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [4, 8, 12]
    assert set(val[0]) == {"split", "step", "epoch", "loss", "err", "err_top5", "time"}
    assert train[0]["epoch"] == pytest.approx(1 / 6)  # 96 images / batch 16 = 6 steps/epoch
    assert summary["steps"] == 12 and summary["epochs"] == 2.0
    assert set(summary) == {"model", "params", "steps", "epochs", "time_s", "img_s", "final",
                            "best", "skipped_images"}
    assert summary["skipped_images"] == 0
    assert summary["final"]["test_err"] == [r for r in records if r["split"] == "test"][-1][
        "err"]
    assert summary["best"]["val_err"] == min(r["err"] for r in val)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 12 and state["classes"] == [f"class{k}" for k in range(4)]
    assert state["model_kwargs"] == {"num_classes": 4, "in_channels": 1}
    assert state["input_size"] == [1, 8, 8] and "mean" in state["normalizer"]
    assert json.loads((run / "summary.json").read_text()) == summary


def test_training_lowers_the_loss(tmp_path, fake_rooms):
    fit(tiny_config(iters=30, log_every=6), tmp_path / "run", progress="none")
    losses = _train_losses(tmp_path / "run")
    assert losses[-1] < 0.5 * losses[0]


def test_best_checkpoint_falls_back_to_test_error_without_a_val_split(tmp_path, fake_rooms):
    summary = fit(tiny_config(val_fraction=0.0), tmp_path / "run", progress="none")
    assert summary["best"]["split"] == "test" and summary["final"]["val_err"] is None
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


@pytest.mark.parametrize("stop_at", [5, 6])  # mid-epoch and at an epoch boundary
def test_resume_after_ctrl_c_matches_an_uninterrupted_run_step_for_step(
        tmp_path, fake_rooms, ctrl_c_after_step, stop_at):
    config = tiny_config(iters=14, precision="fp32", pad=1)
    fit(config, tmp_path / "straight", progress="none")

    ctrl_c_after_step(stop_at)
    with pytest.raises(TrainingInterrupted, match=f"interrupted at step {stop_at}/14"):
        fit(config, tmp_path / "resumed", progress="none")
    assert load_checkpoint(tmp_path / "resumed")["step"] == stop_at
    assert len(_train_losses(tmp_path / "resumed")) == stop_at
    # A line written after the checkpoint (a crash before the next one) must be dropped.
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"split": "train", "step": stop_at + 1, "loss": 123.0}) + "\n")
    fit(config, tmp_path / "resumed", resume=True, progress="none")

    assert _train_losses(tmp_path / "resumed") == _train_losses(tmp_path / "straight")
    straight = load_checkpoint(tmp_path / "straight")["model_state"]
    resumed = load_checkpoint(tmp_path / "resumed")["model_state"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    val = lambda run: [(r["step"], r["err"]) for r in read_metrics(run) if r["split"] == "val"]
    assert val(tmp_path / "resumed") == val(tmp_path / "straight")


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
        tmp_path, fake_rooms, monkeypatch):
    real_step = loop.train_step
    calls = {"n": 0}

    def poisoned(model, optimizer, images, labels, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            images = images * float("nan")
        return real_step(model, optimizer, images, labels, **kwargs)

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"loss is nan near step 6.*step 4\)"):
        fit(tiny_config(), tmp_path / "run", progress="none")
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model_state"].values()
               if v.is_floating_point())
    assert not (tmp_path / "run" / "summary.json").exists()


def test_resume_refuses_a_checkpoint_for_another_model(tmp_path, fake_rooms):
    fit(tiny_config(iters=4), tmp_path / "run", progress="none")
    (tmp_path / "run" / "summary.json").unlink()
    with pytest.raises(UserError, match="model='tiny' \\(given 'tiny2'\\)"):
        fit(tiny_config(iters=4, model="tiny2"), tmp_path / "run", resume=True,
            progress="none")


def test_fresh_run_refuses_an_existing_run_and_resume_needs_one(tmp_path, fake_rooms):
    fit(tiny_config(iters=2), tmp_path / "run", progress="none")
    with pytest.raises(UserError, match="already holds a run"):
        fit(tiny_config(iters=2), tmp_path / "run", progress="none")
    with pytest.raises(UserError, match="run directory not found"):
        fit(tiny_config(iters=2), tmp_path / "nowhere", resume=True, progress="none")


def test_finished_run_resume_returns_its_summary(tmp_path, fake_rooms):
    summary = fit(tiny_config(iters=2), tmp_path / "run", progress="none")
    assert fit(tiny_config(iters=2), tmp_path / "run", resume=True, progress="none") == summary


def test_line_progress_prints_one_line_per_epoch(tmp_path, fake_rooms, capsys):
    fit(tiny_config(iters=18, eval_every=0, log_every=0), tmp_path / "run", progress="lines")
    first, second, *lines = capsys.readouterr().out.strip().splitlines()
    assert first.startswith("precision: fp32 (auto): ")  # and why (tests/test_probe.py)
    assert second.startswith("compile: off (auto): 18 steps, fewer than 1,000")  # and why
    assert len(lines) == 3  # 18 steps / 6 per epoch
    assert lines[0].startswith("epoch 1.0/3  step 6/18  loss ")
    assert "val_err" in lines[0] and "left" in lines[0]


def test_a_run_that_died_before_its_first_checkpoint_starts_afresh(tmp_path, fake_rooms, ctrl_c_after_step):
    ctrl_c_after_step(1)  # Ctrl-C after step 1 writes last.pt; delete it to mimic a
    with pytest.raises(TrainingInterrupted):  # crash before the first checkpoint
        fit(tiny_config(iters=6, eval_every=4), tmp_path / "run", progress="none")
    (tmp_path / "run" / "checkpoints" / "last.pt").unlink()
    assert (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.raises(UserError, match="has no checkpoint .* start it again without --resume"):
        fit(tiny_config(iters=6, eval_every=4), tmp_path / "run", resume=True, progress="none")
    fit(tiny_config(iters=6, eval_every=4), tmp_path / "run", progress="none")
    steps = [r["step"] for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # the dead run's lines are gone


def test_resume_keeps_the_precision_the_run_started_with(tmp_path, fake_rooms, monkeypatch,
                                                          ctrl_c_after_step):
    monkeypatch.setattr(setup, "training_precision", lambda precision, device: ("fp32", "why"))
    ctrl_c_after_step(2)
    with pytest.raises(TrainingInterrupted):
        fit(tiny_config(iters=6, precision="auto"), tmp_path / "run", progress="none")
    assert load_checkpoint(tmp_path / "run")["precision"] == "fp32"
    used = []
    real_step = loop.train_step

    def recording_step(*args, **kwargs):
        used.append(kwargs["precision"])
        return real_step(*args, **kwargs)

    # on "another machine", auto would now mean bf16; the resumed run keeps fp32
    monkeypatch.setattr(setup, "training_precision", lambda precision, device: ("bf16", "why"))
    monkeypatch.setattr(loop, "train_step", recording_step)
    fit(tiny_config(iters=6, precision="auto"), tmp_path / "run", resume=True, progress="none")
    assert used and set(used) == {"fp32"}


def test_resuming_a_finished_run_with_changed_settings_is_refused(tmp_path, fake_rooms):
    fit(tiny_config(iters=2), tmp_path / "run", progress="none")
    with pytest.raises(UserError, match="iters"):
        fit(tiny_config(iters=4), tmp_path / "run", resume=True, progress="none")


def test_a_file_that_is_not_a_torch_file_is_named_as_such(tmp_path):
    (tmp_path / "config.json").write_text('{"a": 1}')
    with pytest.raises(UserError, match="not a resnets checkpoint \\(not a torch file\\)"):
        load_checkpoint(tmp_path / "config.json")


def test_ten_crop_scores_of_an_overconfident_model_stay_finite():
    """A badly calibrated model (logits in the thousands) gives the true class a probability
    below fp32's smallest number in every crop: averaged in linear space, its log was -inf and
    the loss inf. In log space it is the float64 reference's finite value."""
    from resnets.train.steps import class_scores, evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5)).eval()
    with torch.no_grad():
        model[1].weight.mul_(2000.0)
    images = torch.randn(6, 10, 3, 4, 4)  # (B, K crops, C, H, W)
    labels = torch.arange(6) % 5
    with torch.no_grad():
        logits = model(images.flatten(0, 1)).double().view(6, 10, 5)
    reference = logits.log_softmax(dim=2).logsumexp(dim=1) - math.log(10)  # float64
    assert torch.isinf(logits.float().softmax(dim=2).mean(dim=1).log()).any()  # the old way
    scores = class_scores(model, images)
    assert torch.isfinite(scores).all()
    # fp32 log-softmax of values of size L is off by a few ulps of L (2.4e-7 L); 1e-5 L is 40x that
    assert torch.allclose(scores.double(), reference, rtol=1e-5, atol=1e-5)
    result = evaluate(model, [(images, labels)], num_classes=5)
    expected = -reference[torch.arange(6), labels].mean().item()
    assert math.isfinite(result["loss"]) and result["loss"] == pytest.approx(expected, rel=1e-5)
