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
