"""`resnets train` on the real bundled digits and the real resnet14 (the quick preset's model),
for a few steps, then every command that reads a run directory. One short training run serves
the whole module."""

import json

import subprocess
import sys

import pytest
from PIL import Image

from resnets.cli import main
from resnets.data import Dataset, load
from resnets.train import load_checkpoint


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    argv = ["train", "--iters", "3", "--batch-size", "32", "--device", "cpu", "--out",
            str(out), "--name", "quick", "--progress", "none"]
    assert main(argv) == 0
    return out / "quick"


def test_train_writes_a_complete_run_directory(run_dir):
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".lock", ".resnets-run", "checkpoints", "config.json", "metrics.jsonl", "plots",
        "summary.json"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["model"] == "resnet14" and summary["steps"] == 3
    assert 0 <= summary["final"]["test_err"] <= 100 and summary["best"]["split"] == "val"
    state = load_checkpoint(run_dir)
    # Input channels and classes come from the dataset: 1x28x28 digits, of which quick keeps
    # the centre 20 x 20; 10 classes.
    assert state["model_kwargs"] == {"num_classes": 10, "in_channels": 1}
    assert state["input_size"] == [1, 20, 20] and state["classes"][3] == "3"
    assert state["config"]["image_crop"] == 20
    assert state["config"]["precision"] == "auto"
    environment = json.loads((run_dir / "config.json").read_text())["environment"]
    # the measured choice (tests/conftest.py gives fp32 as the faster) and why, recorded
    assert environment["precision"] == "fp32"
    assert environment["precision_reason"] == "bf16 trains at 0.50x fp32 on this CPU (measured)"
    # pad and flip are left to the dataset: the digits' own 2-pixel shift and no flips
    assert state["config"]["pad"] is None and state["config"]["flip"] is None
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    # quick logs every 7 steps; a run shorter than that logs once, at its end, then evaluates.
    assert [(r["split"], r["step"]) for r in records] == [("train", 3), ("val", 3), ("test", 3)]


def test_eval_on_the_run(run_dir, capsys):
    assert main(["eval", str(run_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("resnet14 on bundled test (1000 images): top-1 error ")
    assert len(out) == 2 + 10


def test_predict_on_a_digit_photo(run_dir, tmp_path, capsys):
    digit = load("bundled", "test").images[0, 0].numpy()
    Image.fromarray(digit).convert("RGB").resize((100, 80)).save(tmp_path / "digit.jpg")
    assert main(["predict", str(run_dir), str(tmp_path / "digit.jpg")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 5 and out[1].split()[0] in [str(d) for d in range(10)]
    assert out[-1].startswith("(") and ("fp32" in out[-1] or "bf16" in out[-1])  # what ran


def test_predict_sees_a_digit_file_as_training_saw_the_digits_their_centre_20_pixels(
        run_dir, tmp_path):
    import torch

    from resnets.train.inference import eval_resize_size, load_image, load_trained

    trained = load_trained(run_dir)
    native = load("bundled", "test").images[0]  # (1, 28, 28)
    Image.fromarray(native[0].numpy()).save(tmp_path / "digit.png")
    seen = load_image(tmp_path / "digit.png", trained.input_size, None,
                      eval_resize_size(trained.config))
    assert torch.equal(seen, native[:, 4:24, 4:24])
    assert torch.equal(seen, load("bundled", "test", image_crop=20).images[0])


def test_plot_the_run(run_dir, tmp_path):
    assert main(["plot", str(run_dir), "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"loss.png", "error.png"}


def test_export_the_run_to_onnx_prints_one_line_and_nothing_of_the_exporters(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    command = [sys.executable, "-m", "resnets", "export", str(run_dir), "--onnx",
               str(tmp_path / "digits.onnx")]  # a fresh process: the exporter logs once each
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.count("\n") == 1 and "onnxruntime matches PyTorch" in result.stdout


def test_export_the_run_for_torchvision_is_refused_with_one_line(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), "--torchvision", str(tmp_path / "tv.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'resnet14' (torchvision has no such model)" in err


def test_resume_with_the_real_loader_and_model_matches_step_for_step(tmp_path, ctrl_c_after_step):

    from resnets.train import TrainingInterrupted, fit, resolve_config
    from resnets.train.metrics import read_metrics

    config = resolve_config("quick", overrides={
        "iters": 5, "batch_size": 32, "precision": "fp32", "log_every": 1, "eval_every": 5,
        "device": "cpu"})
    fit(config, tmp_path / "straight", progress="none")
    ctrl_c_after_step(2)
    with pytest.raises(TrainingInterrupted):
        fit(config, tmp_path / "resumed", progress="none")
    fit(config, tmp_path / "resumed", resume=True, progress="none")
    losses = {run: [r["loss"] for r in read_metrics(tmp_path / run) if r["split"] == "train"]
              for run in ("straight", "resumed")}
    assert len(losses["straight"]) == 5 and losses["resumed"] == losses["straight"]


def test_train_takes_any_kind_and_depth_name_the_registry_resolves(tmp_path):
    # plain8 is not a registered name; the registry resolves it (CIFAR, 6n+2), as study does.
    argv = ["train", "--model", "plain8", "--iters", "1", "--out", str(tmp_path),
            "--name", "p", "--progress", "none", "--eval-batch-size", "1000"]
    assert main(argv) == 0
    assert load_checkpoint(tmp_path / "p")["model"] == "plain8"


def test_each_dataset_brings_its_own_augmentation_unless_the_user_sets_it():
    from resnets.train import resolve_config
    from resnets.train.steps import augmentation

    digits = load("bundled", "train")
    photos = Dataset(digits.images[:4].expand(-1, 3, -1, -1), digits.labels[:4], digits.classes,
                     "cifar10")  # a Dataset with the defaults CIFAR and image folders use
    quick = resolve_config("quick")
    assert augmentation(quick, digits) == (2, False)
    # `--data cifar10` under the default preset: CIFAR's pad 4 and flips, not the digits'
    assert augmentation(quick.replace(data="cifar10"), photos) == (4, True)
    assert augmentation(quick.replace(pad=1, flip=False), photos) == (1, False)
    paper = resolve_config("paper-cifar")
    assert augmentation(paper, photos) == (4, True)
