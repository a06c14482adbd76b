"""The train/eval/predict/export/plot subcommands, end to end on the fake rooms."""

import json

import pytest
import torch
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
    import resnets.train.runs as runs

    def no_reading(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the refusal")

    monkeypatch.setattr(checkpoint_module, "load_checkpoint", no_reading)
    monkeypatch.setattr(runs, "load_checkpoint", no_reading)
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
    (["predict", "x.pt"], "predict needs a checkpoint (or run directory) and image files"),
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
    assert main(["train", "--resume", str(run_dir / "checkpoints" / "last.pt")]) == 2
    assert (f"cannot resume from a file ({run_dir / 'checkpoints' / 'last.pt'}): --resume takes "
            f"a run directory, e.g. {run_dir} ") in _one_error_line(capsys)
    assert main(["train", "--resume", str(not_ours)]) == 2  # not in a run: weights, perhaps
    assert (f"cannot resume from a file ({not_ours}): --resume takes a run directory; to start "
            f"a new run from these weights, use --weights {not_ours}") in _one_error_line(capsys)


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


def _digit(tmp_path, name, seed=5, index=1):
    digit = make_dataset(4, seed=seed).images[index, 0].numpy()  # an 8x8 "class<index>" image
    Image.fromarray(digit).save(tmp_path / name)
    return tmp_path / name


def _huge_png_header(path, width, height):
    """A PNG whose header claims width x height (its pixels would not decode): what Pillow's
    decompression-bomb guard sees first."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


def test_predict_takes_folders_and_globs_and_reports_unreadable_files_at_the_end(run_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("b.png", "a.gif", "c.bmp"):
        _digit(photos, name)
    (photos / "notes.txt").write_text("not an image, not in a folder's images")
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["predict", str(run_dir), str(photos), str(photos / "*.png"), "--top", "1"]) == 0
    captured = capsys.readouterr()
    *names, how = [line for line in captured.out.splitlines() if not line.startswith("  ")]
    assert names == [str(photos / n) for n in ("a.gif", "b.png", "c.bmp", "b.png")]
    assert how.startswith("(") and "BatchNorm folded" in how  # what ran, last
    assert captured.err.splitlines() == [
        f"warning: skipped {photos / 'broken.png'}: not an image this program can read (cannot identify image file)"] * 2


def test_predict_exits_2_in_one_line_when_no_image_can_be_classified(run_dir, tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"junk")
    assert main(["predict", str(run_dir), str(tmp_path / "x.png"), str(tmp_path / "missing.png"),
                 str(tmp_path / "none-*.jpg")]) == 2
    err = _one_error_line(capsys)
    assert f"none of the 3 images could be classified: {tmp_path / 'x.png'}: not an image" in err
    assert "(and 2 more)" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(run_dir), str(empty)]) == 2
    assert f"{empty}: a folder without images" in _one_error_line(capsys)


def test_predict_prints_json_and_csv(run_dir, tmp_path, capsys):
    import csv

    images = [str(_digit(tmp_path, "one.png")), str(_digit(tmp_path, "two.png", index=2))]
    assert main(["predict", str(run_dir), *images, "--top", "2", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["path"] for row in rows] == images and len(rows[0]["top"]) == 2
    first = rows[0]["top"]
    assert first[0]["class"].startswith("class") and first[0]["probability"] >= first[1]["probability"]
    # a program gets the index, the label and the readable name apart (here the name is the label)
    assert first[0]["class"] == f"class{first[0]['index']}" == first[0]["name"]
    assert main(["predict", str(run_dir), *images, "--top", "2", "--format", "csv"]) == 0
    table = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert table[0] == ["path", "rank", "index", "class", "name", "probability"]
    assert len(table) == 1 + 2 * 2
    assert table[1][:5] == [images[0], "1", str(first[0]["index"]), first[0]["class"],
                            first[0]["name"]]
    assert [float(row[5]) for row in table[1:3]] == [top["probability"] for top in first]


def test_predict_refuses_a_decompression_bomb_in_one_line_and_says_how_to_allow_it(run_dir, tmp_path, capsys,
                                                                                    monkeypatch):
    bomb = _huge_png_header(tmp_path / "bomb.png", 15000, 15000)
    assert main(["predict", str(run_dir), str(bomb)]) == 2
    err = _one_error_line(capsys)
    assert f"{bomb}: 15000x15000 is 225,000,000 pixels, more than the limit of 89,478,485" in err
    assert "--max-pixels 225000000" in err
    # Pillow's own warning zone (between its limit and twice it) is one line too, and --max-pixels allows it.
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    big = _digit(tmp_path, "big.png")  # 64 pixels
    assert main(["predict", str(run_dir), str(big)]) == 2
    assert "64 pixels, more than the limit of 50" in _one_error_line(capsys)
    assert main(["predict", str(run_dir), str(big), "--max-pixels", "64"]) == 0
    assert capsys.readouterr().err == "" and Image.MAX_IMAGE_PIXELS == 50  # Pillow's setting restored


def test_predict_scales_16_bit_images_to_8_bits(tmp_path):
    import numpy as np

    from resnets.train.inference import load_image

    ramp = (np.arange(8, dtype=np.uint32) * 65535 // 7).astype(np.uint16)[None].repeat(8, 0)
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # mode I;16
    pixels = load_image(tmp_path / "deep.png", [1, 8, 8])
    assert pixels[0, 4].tolist() == [round(v * 255 / 65535) for v in ramp[0].tolist()]


def test_bare_resnets_prints_the_help(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: resnets ") and "train" in out and "predict" in out


@pytest.mark.parametrize("argv, prog", [
    (["train", "--bogus"], "resnets train"),
    (["predict", "x.pt", "y.png", "--bogus", "1"], "resnets predict"),
    (["study", "report", "dir", "--bogus"], "resnets study report"),
])
def test_an_unknown_flag_points_to_its_subcommands_help(argv, prog, capsys):
    assert main(argv) == 2
    unknown = " ".join(argv[argv.index("--bogus"):])
    assert _one_error_line(capsys) == (f"error: {prog}: unrecognized arguments: {unknown} "
                                       f"(see `{prog} --help`)\n")


def test_a_checkpoint_carrying_code_is_refused_without_torchs_advice_to_run_it(tmp_path, capsys):
    import pathlib

    import torch

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (tmp_path / "pwned",))

    torch.save({"format": "resnets-checkpoint", "version": 1, "x": Payload()}, tmp_path / "evil.pt")
    for command in (["eval"], ["export", "--onnx", str(tmp_path / "m.onnx"), "--force"]):
        assert main([command[0], str(tmp_path / "evil.pt"), *command[1:]]) == 2
        err = _one_error_line(capsys)
        assert "refused to load: it holds code or objects other than plain data" in err
        assert "weights_only" not in err and "trust" not in err and "\x1b" not in err
    assert not (tmp_path / "pwned").exists()


def test_a_checkpoint_of_another_architecture_names_the_keys_and_shapes(run_dir, tmp_path, capsys):
    import torch

    from resnets.train.checkpoint import save_checkpoint

    state = load_checkpoint(run_dir)
    weights = state["model_state"]
    weights["fc.weight"] = torch.zeros(5, 32)
    weights["conv.extra"] = weights.pop("bn.running_mean")
    save_checkpoint(state, tmp_path / "other.pt")
    assert main(["eval", str(tmp_path / "other.pt")]) == 2
    err = _one_error_line(capsys)
    assert "the checkpoint does not fit model 'tiny' (missing keys: bn.running_mean; unexpected keys: " \
           "conv.extra; shapes differ: fc.weight: checkpoint (5, 32) vs model (4, 32))" in err


def test_print_config_prints_toml_that_config_reads_back(tmp_path, capsys):
    assert main(["train", "--print-config", "--lr", "0.3", "--data", "cifar10"]) == 0
    text = capsys.readouterr().out
    assert "[optim]" in text and "lr = 0.3" in text and 'data = "cifar10"' in text
    (tmp_path / "printed.toml").write_text(text)
    assert main(["train", "--config", str(tmp_path / "printed.toml"), "--print-config"]) == 0
    assert capsys.readouterr().out == text
    assert not (tmp_path / "runs").exists()


def test_help_shows_what_each_flag_defaults_to_under_the_default_preset(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "peak learning rate [quick: 0.2]" in out and "[quick: resnet14]" in out


def test_weights_of_a_run_start_a_new_run_from_trained_weights(run_dir, tmp_path, fake_rooms):
    # lr ~ 0, no momentum or decay: two steps leave the weights where the first run ended.
    assert main(["train", *TINY, "--iters", "2", "--weights", str(run_dir), "--lr", "1e-12",
                 "--momentum", "0", "--no-nesterov", "--wd", "0", "--warmup", "0", "--out", str(tmp_path),
                 "--name", "tuned"]) == 0
    before = load_checkpoint(run_dir)["model_state"]
    after = load_checkpoint(tmp_path / "tuned")
    assert after["step"] == 2 and after["config"]["weights"] == str(run_dir)
    for key in ("conv.weight", "fc.weight", "fc.bias"):
        assert torch.allclose(after["model_state"][key], before[key], atol=1e-9)
    assert not torch.equal(load_checkpoint(tmp_path / "tuned")["model_state"]["fc.weight"],
                           fake_rooms.create_model("tiny").fc.weight)  # not a fresh init


def test_weights_of_a_different_architecture_are_one_line(run_dir, tmp_path, fake_rooms,
                                                          one_error_line):
    assert main(["train", *TINY, "--iters", "2", "--weights", str(run_dir), "--model-args",
                 "width=4", "--out", str(tmp_path), "--name", "other"]) == 2
    assert "the weights do not fit model 'tiny'" in one_error_line()


@pytest.mark.parametrize("order", ["checkpoint first", "weights first"])
def test_predict_with_a_checkpoint_and_weights_says_they_exclude_each_other(run_dir, tmp_path,
                                                                          capsys, order):
    image = str(_digit(tmp_path, "one.png"))
    argv = ([str(run_dir), "--weights", "torchvision", image] if order == "checkpoint first"
            else ["--weights", "torchvision", str(run_dir), image])
    assert main(["predict", "--model", "resnet18", *argv]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: a checkpoint ({run_dir}) and --weights torchvision exclude each "
                   f"other: give one of them\n")
