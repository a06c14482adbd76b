"""The train/eval/predict/export/plot subcommands, end to end on the fake rooms."""

import json

import pytest
from PIL import Image

from resnets.cli import main
from resnets.train import load_checkpoint

from train_fakes import make_dataset

TINY = ["--model", "tiny", "--data", "fake", "--device", "cpu", "--batch-size", "16",
        "--pad", "0", "--progress", "none"]


@pytest.fixture
def run_dir(tmp_path, fake_rooms):
    assert main(["train", *TINY, "--iters", "4", "--out", str(tmp_path), "--name", "run"]) == 0
    return tmp_path / "run"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "plot"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: resnets " + command in capsys.readouterr().out


def test_train_writes_a_run_and_prints_its_summary(tmp_path, fake_rooms, capsys):
    args = ["train", *TINY[:-2], "--progress", "lines", "--iters", "6", "--out",
            str(tmp_path), "--name", "r", "--lr", "0.05", "--no-nesterov"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "epoch 1.0/1  step 6/6" in out and f"run directory: {tmp_path / 'r'}" in out
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["lr"] == 0.05 and config["iters"] == 6
    assert config["pad"] == 0 and config["nesterov"] is False


def test_train_reads_a_toml_config(tmp_path, fake_rooms):
    file = tmp_path / "tiny.toml"
    file.write_text('model = "tiny"\ndata = "fake"\niters = 2\nbatch_size = 16\npad = 0\n'
                    'device = "cpu"\n')
    assert main(["train", "--config", str(file), "--out", str(tmp_path), "--name", "t",
                 "--progress", "none"]) == 0
    assert load_checkpoint(tmp_path / "t")["step"] == 2


def test_eval_prints_top1_top5_and_per_class_error(run_dir, capsys):
    assert main(["eval", str(run_dir / "checkpoints" / "best.pt"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tiny on fake test (40 images): top-1 error ")
    assert "top-5 error 0.00%" in out[0]
    assert out[1].split() == ["class", "error"] and out[2].startswith("class0  ")
    assert out[1].index("error") == out[2].index(out[2].split()[1])  # aligned columns
    assert len(out) == 2 + 4


def test_predict_handles_any_size_and_mode(run_dir, tmp_path, capsys):
    digit = make_dataset(4, seed=5).images[1, 0].numpy()  # an 8x8 "class1" image
    big_rgba = Image.fromarray(digit).resize((40, 48)).convert("RGBA")
    big_rgba.save(tmp_path / "big.png")
    Image.fromarray(digit).convert("P").save(tmp_path / "palette.gif")
    assert main(["predict", str(run_dir), str(tmp_path / "big.png"),
                 str(tmp_path / "palette.gif"), "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(tmp_path / "big.png") and out[3] == str(tmp_path / "palette.gif")
    probabilities = [float(line.split()[1].rstrip("%")) for line in out[1:3] + out[4:6]]
    assert all(0 <= p <= 100 for p in probabilities)
    assert probabilities[0] >= probabilities[1] and out[1].split()[0].startswith("class")


def test_plot_redraws_and_overlays_runs(run_dir, tmp_path, capsys):
    assert main(["plot", str(run_dir), str(run_dir), "--out", str(tmp_path / "overlay"),
                 "--labels", "a,b"]) == 0
    assert sorted(p.name for p in (tmp_path / "overlay").iterdir()) == ["error.png",
                                                                         "loss.png"]
    assert main(["plot", str(run_dir)]) == 0
    assert str(run_dir / "plots" / "loss.png") in capsys.readouterr().out


def test_export_onnx(run_dir, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["export", str(run_dir), "--onnx", str(tmp_path / "m.onnx")]) == 0
    assert "onnxruntime matches PyTorch" in capsys.readouterr().out
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_resume_continues_a_stopped_run(run_dir, capsys):
    (run_dir / "summary.json").unlink()
    assert main(["train", "--resume", str(run_dir), "--iters", "6", "--progress", "none"]) == 2
    assert "iters=4 (given 6)" in _one_error_line(capsys)
    assert main(["train", "--resume", str(run_dir), "--progress", "none"]) == 0
    assert (run_dir / "summary.json").is_file()


def test_resume_with_a_changed_setting_is_refused_before_any_checkpoint_is_read(
        run_dir, capsys, monkeypatch):
    import resnets.train.checkpoint as checkpoint_module
    import resnets.train.loop as loop

    def no_reading(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the refusal")

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", no_reading)
    monkeypatch.setattr(loop, "load_checkpoint", no_reading)
    (run_dir / "summary.json").unlink()
    assert main(["train", "--resume", str(run_dir), "--lr", "0.5"]) == 2
    assert "lr=0.2 (given 0.5)" in _one_error_line(capsys)


@pytest.mark.parametrize("argv, words", [
    (["train", "--precision", "fp16"], "precision must be one of auto, bf16, fp32"),
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--lr", "fast"], "lr must be a number"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--resume", "no/such/run"], "run directory not found"),
    (["eval", "no/such.pt"], "checkpoint not found"),
    (["export", "no/such.pt"], "needs --onnx FILE and/or --torchvision FILE"),
    (["plot", "no/such/run"], "not a run directory"),
    (["predict", "x.pt"], "the following arguments are required: IMAGE"),
])
def test_bad_input_exits_2_with_one_line(argv, words, capsys):
    assert main(argv) == 2
    assert words in _one_error_line(capsys)


def test_checkpoint_problems_exit_2_with_one_line(run_dir, tmp_path, capsys):
    (run_dir / "summary.json").unlink()
    assert main(["train", "--resume", str(run_dir), "--model", "tiny2"]) == 2
    assert "model='tiny' (given 'tiny2')" in _one_error_line(capsys)
    not_ours = tmp_path / "notes.txt"
    not_ours.write_text("hello")
    assert main(["eval", str(not_ours)]) == 2
    assert "not a resnets checkpoint" in _one_error_line(capsys)
    assert main(["export", str(run_dir), "--torchvision", str(tmp_path / "tv.pt")]) == 2
    assert "torchvision has no such model" in _one_error_line(capsys)
    assert main(["predict", str(run_dir), str(not_ours)]) == 2
    assert "not an image" in _one_error_line(capsys)


def test_ctrl_c_writes_a_checkpoint_and_exits_130_with_one_line(tmp_path, fake_rooms,
                                                                 ctrl_c_after_step, capsys):
    ctrl_c_after_step(3)
    argv = ["train", *TINY, "--iters", "8", "--out", str(tmp_path), "--name", "r"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("interrupted at step 3/8; checkpoint")
    assert load_checkpoint(tmp_path / "r")["step"] == 3
    assert main(["train", "--resume", str(tmp_path / "r"), "--progress", "none"]) == 0
    assert load_checkpoint(tmp_path / "r")["step"] == 8
