"""TensorBoard event files: read back with TensorBoard's own event reader, they hold what
metrics.jsonl holds; without TensorBoard installed, one line says how to get it."""

import importlib.util

import pytest

import resnets.train.tensorboard as tensorboard_module
from resnets.cli import main
from resnets.errors import UserError
from resnets.train import fit
from resnets.train.loop import TrainingInterrupted
from resnets.train.metrics import read_metrics

from train_fakes import tiny_config


def _events(run_dir):
    accumulator_module = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    accumulator = accumulator_module.EventAccumulator(
        str(run_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def _scalars(events, tag):
    return [(e.step, e.value) for e in events.Scalars(tag)]


def _records(run_dir, split, key):
    return [(r["step"], r[key]) for r in read_metrics(run_dir) if r["split"] == split]


def _same(events, records):
    assert [step for step, _ in events] == [step for step, _ in records]
    assert [value for _, value in events] == pytest.approx([v for _, v in records], rel=1e-6)


def test_a_short_run_writes_events_holding_the_metrics(tmp_path, fake_rooms):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    fit(tiny_config(tensorboard=True, lr=1e-5), run, progress="none")  # it stays wrong on some
    assert list(run.glob("events.out.tfevents.*"))
    events = _events(run)
    _same(_scalars(events, "train/loss"), _records(run, "train", "loss"))
    _same(_scalars(events, "train/error"), _records(run, "train", "err"))
    _same(_scalars(events, "train/lr"), _records(run, "train", "lr"))
    _same(_scalars(events, "train/images_per_s"), _records(run, "train", "img_s"))
    for split in ("val", "test"):
        _same(_scalars(events, f"{split}/loss"), _records(run, split, "loss"))
        _same(_scalars(events, f"{split}/error"), _records(run, split, "err"))
        _same(_scalars(events, f"{split}/error_top5"), _records(run, split, "err_top5"))
    images = events.Images("test/misclassified")
    assert [image.step for image in images] == [s for s, _ in _records(run, "test", "err")]
    first = images[0]
    assert first.height == 8 and first.encoded_image_string.startswith(b"\x89PNG")
    assert "test/misclassified/text_summary" in events.Tags()["tensors"]


def test_a_resumed_run_has_no_doubled_stretch(tmp_path, fake_rooms, ctrl_c_after_step):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    ctrl_c_after_step(6)  # checkpointed at step 6; lines the first process wrote after it go
    with pytest.raises(TrainingInterrupted):
        fit(tiny_config(tensorboard=True), run, progress="none")
    with open(run / "metrics.jsonl") as file:
        written = file.read()
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run)) as late:  # as if the process had gone on a step past it
        late.add_scalar("train/loss", 123.0, 7)
    fit(tiny_config(tensorboard=True), run, resume=True, progress="none")
    assert (run / "metrics.jsonl").read_text().startswith(written)
    events = _events(run)
    _same(_scalars(events, "train/loss"), _records(run, "train", "loss"))
    assert [s for s, _ in _scalars(events, "train/loss")] == list(range(1, 13))


def test_a_run_without_tensorboard_writes_no_events(tmp_path, fake_rooms):
    fit(tiny_config(), tmp_path / "run", progress="none")
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_without_the_extra_one_line_says_how_to_install_it(tmp_path, fake_rooms, monkeypatch,
                                                           one_error_line):
    real = importlib.util.find_spec
    monkeypatch.setattr(tensorboard_module.importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(UserError, match=r"needs TensorBoard: pip install 'resnets\[tensorboard\]'"):
        fit(tiny_config(tensorboard=True), tmp_path / "run", progress="none")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    assert main(["train", "--model", "tiny", "--data", "fake", "--iters", "2", "--tensorboard",
                 "--out", str(tmp_path), "--name", "cli", "--progress", "none"]) == 2
    assert "pip install 'resnets[tensorboard]'" in one_error_line()
    assert not (tmp_path / "cli").exists()


def test_a_run_that_died_before_its_first_checkpoint_starts_its_events_afresh(
        tmp_path, fake_rooms, ctrl_c_after_step):
    pytest.importorskip("tensorboard")
    run, config = tmp_path / "run", tiny_config(iters=6, eval_every=4, tensorboard=True)
    ctrl_c_after_step(1)
    with pytest.raises(TrainingInterrupted):
        fit(config, run, progress="none")
    (run / "checkpoints" / "last.pt").unlink()  # as if it had died before its first checkpoint
    fit(config, run, progress="none")
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    _same(_scalars(_events(run), "train/loss"), _records(run, "train", "loss"))
