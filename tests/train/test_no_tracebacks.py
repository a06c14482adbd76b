"""Issue #9, "No tracebacks": each mistake a user can make is one line, `error: ...`, exit 2.

Each test reproduces a traceback that was seen (a non-UTF-8 TOML file, a seed torch cannot
take, model_args of the wrong type, an unwritable folder, a hand-edited checkpoint, a path the
terminal cannot encode) and checks the one line that replaces it.
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnets.cli import main
from resnets.train import load_checkpoint
from resnets.train.checkpoint import save_checkpoint

TINY = ["--model", "tiny", "--data", "fake", "--device", "cpu", "--batch-size", "16",
        "--pad", "0", "--progress", "none"]
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def run_dir(tmp_path, fake_rooms):
    assert main(["train", *TINY, "--iters", "2", "--out", str(tmp_path), "--name", "run"]) == 0
    return tmp_path / "run"


# ---------------------------------------------------------------- files that are not UTF-8


@pytest.mark.parametrize("command", ["train", "study"])
def test_a_toml_file_that_is_not_utf8_is_one_line(command, tmp_path, monkeypatch, one_error_line):
    monkeypatch.chdir(tmp_path)
    Path("bad.toml").write_bytes('lr = 0.1\nname = "café"\n'.encode("latin-1"))
    assert main([command, "--config", "bad.toml"]) == 2
    assert one_error_line() == ("error: bad.toml: not valid TOML (not UTF-8 text: byte 0xe9 at "
                                "position 20); save it as UTF-8\n")


# ---------------------------------------------------------------- seeds torch cannot take


@pytest.mark.parametrize("argv, words", [
    (["train", "--seed", "1e23"], "seed must be an integer in 0..9223372036854775807"),
    (["train", "--seed", "-1"], "seed must be an integer in 0..9223372036854775807"),
    (["train", "--split-seed", str(2**63)], "split_seed must be an integer in 0..9223372036854775807"),
    (["study", "--seeds", "0", "-5"], "study seeds must be an integer in 0..9223372036854775807"),
    (["diagnose", "--seed", str(2**64)], "argument --seed: must be in 0..9223372036854775807"),
])
def test_a_seed_out_of_torchs_range_is_one_line(argv, words, tmp_path, monkeypatch, one_error_line):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--iters", "1"] if argv[0] == "train" else argv) == 2
    assert words in one_error_line()
    assert list(tmp_path.iterdir()) == []  # refused before anything was written


def test_the_largest_seed_is_taken():
    from resnets.train.config import resolve_config

    config = resolve_config("quick", overrides={"seed": str(2**63 - 1), "split_seed": 0})
    torch.Generator().manual_seed(config.seed)  # what the range protects


# ---------------------------------------------------------------- model_args of the wrong type


@pytest.mark.parametrize("key_value, words", [
    ("width=abc", "resnet8: width must be an integer, got 'abc'"),
    ("width=1.5", "resnet8: width must be an integer, got 1.5"),
    ("depth=1.5", "resnet8: depth must be an integer, got 1.5"),
    ("shortcut=7", "unknown shortcut 7; valid: 'A', 'B', 'C', 'none'"),
    ("preact=abc", "resnet8: preact must be true or false, got 'abc'"),
    ("zero_init_last=3", "resnet8: zero_init_last must be true or false, got 3"),
])
def test_model_args_of_the_wrong_type_name_the_key(key_value, words):
    import resnets
    from resnets.train.config import resolve_config

    config = resolve_config("quick", overrides={"model": "resnet8", "model_args": key_value})
    with pytest.raises(resnets.UserError) as raised:
        resnets.create_model(config.model, **config.model_args)
    assert str(raised.value) == words


def test_model_args_of_the_wrong_type_are_one_line_from_train(tmp_path, one_error_line):
    assert main(["train", "--model", "resnet8", "--model-args", "preact=abc", "--iters", "1",
                 "--device", "cpu", "--progress", "none", "--out", str(tmp_path)]) == 2
    assert "preact must be true or false, got 'abc'" in one_error_line()


# ---------------------------------------------------------------- folders that cannot be written


def _blocked(kind: str, tmp_path: Path, read_only) -> tuple[Path, str]:
    """A folder nothing can be written in, and the words of the cause."""
    if kind == "file":  # a regular file where a folder should be: NotADirectoryError
        (tmp_path / "a-file").write_text("not a folder")
        return tmp_path / "a-file" / "out", "a-file"
    folder = tmp_path / "locked"
    folder.mkdir()
    number = {"read-only": errno.EACCES, "read-only mount": errno.EROFS}[kind]
    read_only(folder, number)
    return folder / "out", os.strerror(number)


def _writes(command: str, out: Path, run: Path) -> list[str]:
    return {
        "train": ["train", *TINY, "--iters", "2", "--out", str(out), "--name", "r"],
        "train (default name)": ["train", *TINY, "--iters", "2", "--out", str(out)],
        "plot": ["plot", str(run), "--out", str(out)],
        "study": ["study", "--out", str(out), "--kinds", "resnet", "--depths", "8", "--iters", "1"],
        "diagnose": ["diagnose", "resnet8", "--steps", "1", "--out", str(out)],
        "export": ["export", str(run), "--onnx", str(out / "m.onnx"), "--no-check"],
    }[command]


@pytest.mark.parametrize("kind", ["file", "read-only", "read-only mount"])
@pytest.mark.parametrize("command", ["train", "train (default name)", "plot", "study", "diagnose",
                                     "export"])
def test_every_writer_names_the_folder_and_the_cause_in_one_line(
        command, kind, run_dir, tmp_path, monkeypatch, read_only, one_error_line):
    import resnets.study.diagnostics
    import resnets.train

    def no_work(*args, **kwargs):
        raise AssertionError("the slow work started before the folder was checked")

    monkeypatch.setattr(resnets.study.diagnostics, "diagnose", no_work)
    if command == "study":  # train's own folder checks are in fit
        monkeypatch.setattr(resnets.train, "fit", no_work)
    out, cause = _blocked(kind, tmp_path, read_only)
    assert main(_writes(command, out, run_dir)) == 2
    err = one_error_line()
    assert str(out.parent) in err and (cause in err or "Not a directory" in err), err


def test_a_study_report_in_a_read_only_study_is_one_line(tmp_path, monkeypatch, read_only,
                                                         one_error_line):
    import resnets.study.report

    study = tmp_path / "s"
    study.mkdir()
    (study / "study.toml").write_text('name = "s"\n')
    monkeypatch.setattr(resnets.study.report, "collect", lambda study_dir: {"rows": []})
    read_only(study, errno.EROFS)
    assert main(["study", "report", str(study)]) == 2
    assert one_error_line() == (f"error: cannot write in {study / 'report'} (Read-only file "
                                f"system): expected a folder you can write to\n")


def test_a_full_disk_while_writing_metrics_names_the_file(tmp_path):
    from resnets.errors import UserError
    from resnets.train.metrics import MetricsWriter

    writer = MetricsWriter(tmp_path / "metrics.jsonl")

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    writer._file = FullDisk()
    with pytest.raises(UserError, match=r"cannot write .*metrics.jsonl \(No space left on device\)"):
        writer.write({"step": 1})


# ---------------------------------------------------------------- hand-edited checkpoints


def _edited(run_dir: Path, tmp_path: Path, **fields) -> Path:
    state = load_checkpoint(run_dir)
    state.update(fields)
    return save_checkpoint(state, tmp_path / "edited.pt")


@pytest.mark.parametrize("field, value, words", [
    ("classes", ["a", "b"], "classes is ['a', 'b']: expected 4 names, as model_kwargs num_classes says"),
    ("classes", "abcd", "classes is 'abcd': expected a list of class names"),
    ("classes", [1, 2, 3, 4], "expected a list of class names"),
    ("input_size", [1, 8], "input_size is [1, 8]: expected [C, H, W], three positive integers"),
    ("input_size", [1, 8, -8], "expected [C, H, W], three positive integers"),
    ("input_size", [1.0, 8, 8], "expected [C, H, W], three positive integers"),
    ("input_size", [3, 8, 8], "input_size is [3, 8, 8]: expected 1 channels, as model_kwargs in_channels says"),
    ("normalizer", "channel", "normalizer is 'channel': expected a dict"),
    ("normalizer", {"kind": "channel"}, "checkpoint field normalizer: no 'mean' entry"),
    ("normalizer", {"kind": "channel", "mean": torch.zeros(3, 1, 1), "std": torch.ones(3, 1, 1)},
     "normalizer does not fit input_size [1, 8, 8]"),
    ("normalizer", {"kind": "channel", "mean": [0.0], "std": [1.0]}, "checkpoint field normalizer"),
    # values that load but make no sense: every image would get the same answer
    ("normalizer", {"kind": "channel", "mean": torch.full((1, 1, 1), float("nan")),
                    "std": torch.zeros(1, 1, 1)}, "normalizer.mean holds nan: expected finite "
     "numbers"),
    ("normalizer", {"kind": "channel", "mean": torch.full((1, 1, 1), 100.0),
                    "std": torch.zeros(1, 1, 1)}, "normalizer.std holds 0.0: expected numbers > 0"),
    ("best", {"step": 3, "err": float("nan"), "split": "test"}, "best.err is nan: expected a "
     "finite number"),
    ("best", {"step": 3, "err": 250.0, "split": "test"}, "best.err is 250.0"),
    ("schedule", {"step": 3, "lr": float("inf")}, "schedule.lr is inf"),
    ("progress", {"counters": {"time": -5.0}, "meter": {}}, "progress.counters.time is -5.0"),
    ("step", "3", "step is '3': expected a number of steps (an integer >= 0)"),
    ("step", -1, "expected a number of steps"),
    ("step", 1.5, "expected a number of steps"),
    ("model", 7, "model is 7: expected a model name"),
    ("model_kwargs", [1], "model_kwargs is [1]: expected a dict of keyword arguments"),
    ("config", "lr=0.1", "config is 'lr=0.1': expected a dict"),
    ("config", {"lr": "fast"}, "checkpoint field config: lr must be a number"),
    ("precision", "fp16", "precision is 'fp16': expected bf16 or fp32"),
])
def test_a_hand_edited_checkpoint_names_the_field(field, value, words, run_dir, tmp_path,
                                                  one_error_line):
    edited = _edited(run_dir, tmp_path, **{field: value})
    assert main(["eval", str(edited), "--device", "cpu"]) == 2
    err = one_error_line()
    assert err.startswith(f"error: {edited}: ") and words in err, err


@pytest.mark.parametrize("key, value", [("fc.weight", float("nan")),
                                        ("conv.weight", float("inf")),
                                        ("bn.running_var", -1.0)])
def test_a_checkpoint_with_unusable_weights_is_refused_by_predict_in_one_line(
        key, value, run_dir, tmp_path, one_error_line):
    from PIL import Image

    state = load_checkpoint(run_dir)
    tensor = next(v for k, v in state["model_state"].items() if k.endswith(key))
    tensor.view(-1)[0] = value
    edited = save_checkpoint(state, tmp_path / "edited.pt")
    Image.new("L", (8, 8), 128).save(tmp_path / "image.png")
    assert main(["predict", str(edited), str(tmp_path / "image.png"), "--device", "cpu"]) == 2
    err = one_error_line()
    assert err.startswith(f"error: {edited}: checkpoint field model_state is not usable "
                          f"(non-finite or impossible values in ") and key in err, err


@pytest.mark.parametrize("field, value, words", [
    ("progress", {"counters": {}, "meter": {}}, "checkpoint field progress cannot be restored"),
    ("progress", [], "progress is []: expected a dict of counters and meter"),
    ("rng", {"torch": "abc"}, "checkpoint field rng cannot be restored"),
    ("optimizer_state", {"state": {}}, "checkpoint field optimizer_state cannot be restored"),
    ("best", None, "best is None: expected a dict"),
])
def test_resuming_from_a_hand_edited_checkpoint_names_the_field(field, value, words, run_dir,
                                                                tmp_path, one_error_line):
    state = load_checkpoint(run_dir)
    state[field] = value
    save_checkpoint(state, run_dir / "checkpoints" / "last.pt")
    (run_dir / "summary.json").unlink()
    assert main(["train", "--resume", str(run_dir), "--progress", "none"]) == 2
    assert words in one_error_line()


# ---------------------------------------------------------------- a terminal that speaks ASCII


def _ascii_resnets(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONIOENCODING": "ascii", "PYTHONPATH": str(SRC),
           "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, "-m", "resnets", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=300)


def test_a_unicode_path_on_an_ascii_terminal_is_printed_escaped(tmp_path):
    run = tmp_path / "café"
    run.mkdir()
    records = [{"split": "train", "step": s, "epoch": s / 4, "loss": 2.0 / s, "err": 50.0 / s}
               for s in (1, 2, 3, 4)] + [{"split": "test", "step": 4, "loss": 1.0, "err": 20.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = _ascii_resnets("plot", str(run), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [str(tmp_path / "caf\\xe9" / "plots" / name)
                                          for name in ("loss.png", "error.png")]
    assert (run / "plots" / "loss.png").is_file()
    result = _ascii_resnets("plot", str(tmp_path / "naïve"), cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"error: not a run directory (no metrics.jsonl): {tmp_path}/na\\xefve\n"


# ---------------------------------------------------------------- sizes that cannot fit


def test_predict_with_an_edited_huge_input_size_is_refused_before_an_image_is_read(
        run_dir, tmp_path, one_error_line, monkeypatch):
    from PIL import Image

    import resnets.train.inference as inference

    edited = _edited(run_dir, tmp_path, input_size=[1, 10**6, 10**6])  # 10^12 pixels
    Image.new("L", (8, 8), 128).save(tmp_path / "image.png")
    read = []
    monkeypatch.setattr(inference, "load_image", lambda *a, **k: read.append(a))
    assert main(["predict", str(edited), str(tmp_path / "image.png"), "--device", "cpu"]) == 2
    err = one_error_line()
    assert "input_size [1, 1000000, 1000000]" in err and "GiB, more than the" in err, err
    assert read == []  # refused before the first image was decoded


@pytest.mark.parametrize("argv", [
    ["train", *TINY, "--iters", "2"],
    ["eval", "{run}", "--device", "cpu"],
    ["predict", "{run}", "{image}", "--device", "cpu"],
])
def test_train_eval_and_predict_share_one_memory_check(argv, run_dir, tmp_path, monkeypatch,
                                                       one_error_line):
    """On a machine of 1 KiB every command that allocates from a size refuses in the same one
    line, before the work: they ask the one check (train.device.check_memory)."""
    from PIL import Image

    import resnets.train.device as device

    Image.new("L", (8, 8), 128).save(tmp_path / "image.png")
    monkeypatch.setattr(device, "memory_limit", lambda _: 1024)
    argv = [a.format(run=run_dir, image=tmp_path / "image.png") for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main([*argv, *(["--out", str(tmp_path / "new")] if argv[0] == "train" else [])]) == 2
    err = one_error_line()
    assert "GiB, more than the 0.0 GiB of cpu; " in err, err
    left = sorted(p.name for p in tmp_path.iterdir() if p.name != "new")
    assert left == before and not any((tmp_path / "new").glob("*"))  # no run directory left


# ---------------------------------------------------------------- messages that point the right way


def test_a_run_whose_last_checkpoint_write_failed_points_to_its_best_checkpoint(
        run_dir, one_error_line):
    """A failed write of last.pt (a full disk) leaves a run with best.pt only: resume and eval
    say so and which file to use, not that the run has no checkpoint."""
    (run_dir / "checkpoints" / "last.pt").unlink()
    (run_dir / "summary.json").unlink()
    best = run_dir / "checkpoints" / "best.pt"
    assert best.is_file()
    assert main(["train", "--resume", str(run_dir), "--progress", "none"]) == 2
    err = one_error_line()
    assert f"has no last.pt (its last checkpoint write failed?) but has {best}" in err
    assert "no checkpoint" not in err
    assert main(["eval", str(run_dir), "--device", "cpu"]) == 2
    err = one_error_line()
    assert "without checkpoints/last.pt" in err and f"give that file, {best}" in err
