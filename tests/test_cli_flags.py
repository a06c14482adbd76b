"""Every flag of every command refuses a bad value itself: one line naming the flag, exit 2.

The flags are enumerated from the parser `resnets` builds (nested `study report` too), so a new
flag is tried as soon as it exists. A numeric flag gets values of the wrong type and out of
range; a flag with choices gets a value outside them; any other flag takes text and must either
list values it refuses in BAD_TEXT or be in ANY_TEXT with the reason it takes any text. The
commands' slow work is replaced by a tripwire, so a value that is not refused fails the test at
once instead of training anything: validation must come before the work (and, for commands
given a checkpoint or run that does not exist, before it is read: the refusal must name the
flag, not the missing file).
"""

import argparse

import pytest

from resnets.cli import build_parser, main

# Flags that take any text when parsed: paths, and names only a later stage can judge. Each
# says where a bad one is refused (one line too, tested elsewhere).
ANY_TEXT = {
    # folders and files: an unwritable one is refused when written (tests/train/test_no_tracebacks.py)
    "train --out", "train --data-dir", "study --out", "study --data-dir", "diagnose --out",
    "diagnose --data-dir", "eval --data-dir", "plot --out", "download --to", "export --onnx",
    "export --torchvision", "lesion --out", "landscape --out",
    # the page: a folder or an unwritable path is refused when written (tests/report)
    "report --out",
    # model and dataset names mean something only to the parts training uses (the registry and
    # resnets.data, or a test's stand-ins such as "tiny" and "fake"): refused by them when the
    # run loads its data and builds its model
    "train --model", "train --data", "study --data", "diagnose --data", "eval --data",
}

# Values each text flag must refuse.
BAD_TEXT = {
    "train --preset": ["abc", "../quick"],
    "train --config": ["no-such-file.toml"],
    "train --resume": ["no-such-run"],
    "train --weights": ["no-such-checkpoint", "torchvision:v9", "torchvision:v2"],  # resnet18: v1 only
    "train --name": ["a/b", "..", "."],
    "train --device": ["abc", "gpu", "cuda:x"],
    "train --milestones": ["abc", "-5", "0", "5,3", "1.5", str(2**63)],
    "train --milestone-epochs": ["abc", "-5", "0", "5,3", "1.5"],
    "train --model-args": ["abc", "=1", "num_classes=3", "in_channels=1"],
    "study --config": ["no-such-study"],
    "study --name": ["a/b", ".hidden"],
    "study --kinds": ["abc"],
    "study --preset": ["abc"],
    "study --set": ["abc", "=1", "seed=1", "model=resnet20", "lr=fast", "nope=1"],
    "study --shard": ["abc", "0/2", "3/2", "1/0", "2", "-1/2", "1/2/3"],
    "eval --device": ["abc", "cuda:x"],
    # --model goes with --weights; --weights with no checkpoint: these are given one
    "eval --model": ["abc"], "predict --model": ["abc"],
    "eval --weights": ["torchvision", "no-such-weights.pth"],
    "predict --weights": ["torchvision:v9", "no-such-weights.pth"],
    "predict --device": ["abc", "cuda:x"],
    "lesion --device": ["abc", "cuda:x"], "landscape --device": ["abc", "cuda:x"],
    "download --url": ["abc"],
    "plot --labels": ["a,b"],  # two labels for one run
}

# Out-of-range values beyond those every numeric flag is given (WRONG below).
OUT_OF_RANGE = {
    "train --lr": ["0"], "train --warmup-lr": ["0"], "train --gamma": ["0"],
    "train --backbone-lr-scale": ["0"],
    "train --momentum": ["1", "1.5"], "train --val-fraction": ["1", "2"],
    "train --batch-size": ["0"], "train --eval-batch-size": ["0"], "train --image-size": ["-1"],
    "train --image-crop": ["-1"],
    "train --iters": ["0", str(2**63)], "train --epochs": ["0"],
    "train --seed": ["1e23", str(2**63)], "train --split-seed": ["1e23", str(2**63)],
    "train --pad": [str(2**63)], "train --warmup": [str(2**63)],
    "eval --batch-size": ["0"], "predict --top": ["0"], "predict --max-pixels": ["0"],
    "info --input-size": ["0"], "info --num-classes": ["0"], "info --in-channels": ["0"],
    "info --depth": ["0"],
    "study --depths": ["0", "4"], "study --seeds": [str(2**63)], "study --epochs": ["0"],
    "study --iters": ["0"], "study --jobs": ["0"],
    "diagnose --batch-size": ["1"], "diagnose --lr": ["0"], "diagnose --seed": [str(2**63)],
    "landscape --points": ["1", "4"], "landscape --span": ["0"], "lesion --seed": [str(2**63)],
}

WRONG = {  # for every flag of the kind
    int: ["abc", "", "1.5", "-5", "1e400", "nan"],
    float: ["abc", "", "-5", "nan", "inf", "-inf", "1e400"],
    "choice": ["abc"],
}

# Commands given what they need besides the flag under test (files that need not exist).
POSITIONALS = {
    "list": [], "info": ["resnet20"], "train": [], "download": ["cifar10", "--to", "data"],
    "study": [], "study report": ["no-such-study"], "diagnose": ["resnet8"],
    "eval": ["no-such.pt"], "predict": ["no-such.pt", "no-such.png"], "export": ["no-such.pt"],
    "plot": ["no-such-run"], "lesion": ["no-such-run"], "landscape": ["no-such-run"],
    "weights": [], "report": ["no-such-run"],
}


def _commands(parser: argparse.ArgumentParser, words: tuple = ()):
    """(command words, parser) for every command and subcommand."""
    yield words, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*words, name))


def _flags():
    """(command, flag, action) for every option that takes a value."""
    for words, parser in _commands(build_parser()):
        for action in parser._actions:
            if action.option_strings and action.nargs != 0 and not isinstance(
                    action, (argparse._HelpAction, argparse._VersionAction)):
                yield " ".join(words), max(action.option_strings, key=len), action


FLAGS = {f"{command} {flag}": (command, flag, action) for command, flag, action in _flags()}


def _kind(command: str, action: argparse.Action):
    """int, float, "choice" or str (text)."""
    if action.choices:
        return "choice"
    if command == "train":
        from resnets.train.config import FIELDS, field_type

        if action.dest in FIELDS:
            if FIELDS[action.dest].metadata.get("choices"):
                return "choice"
            kind = field_type(action.dest)[0]
            return kind if kind in (int, float) else str
    if action.type in (None, str):
        return str
    try:
        action.type("7")  # a number type takes it; a text check (a device name) does not
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return str
    try:
        action.type("1.5")
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return int
    return float


class ReachedWork(Exception):
    """A command started its work: the value under test was not refused."""


@pytest.fixture
def tripwires(monkeypatch, tmp_path):
    import resnets.study.degradation
    import resnets.study.diagnostics
    import resnets.study.lesioning
    import resnets.study.loss_landscape
    import resnets.train

    def reached(*args, **kwargs):
        raise ReachedWork

    for module, name in ((resnets.train, "fit"), (resnets.study.degradation, "run_study"),
                         (resnets.study.diagnostics, "diagnose"),
                         (resnets.study.lesioning, "lesion"),
                         (resnets.study.loss_landscape, "landscape")):
        monkeypatch.setattr(module, name, reached)
    monkeypatch.chdir(tmp_path)


def test_every_command_is_known_here():
    commands = {" ".join(words) for words, _ in _commands(build_parser())} - {""}
    assert commands == set(POSITIONALS), "give a new command its positional arguments above"


def test_the_lists_name_only_flags_that_exist():
    for listed in (ANY_TEXT, BAD_TEXT, OUT_OF_RANGE):
        assert set(listed) <= set(FLAGS), sorted(set(listed) - set(FLAGS))
    assert not ANY_TEXT & set(BAD_TEXT)


@pytest.mark.parametrize("name", sorted(FLAGS))
def test_a_bad_value_is_refused_in_one_line_naming_the_flag(name, tripwires, capsys):
    command, flag, action = FLAGS[name]
    kind = _kind(command, action)
    if kind is str:
        if name in ANY_TEXT:
            return
        assert name in BAD_TEXT, f"{name} takes any text: list values it refuses in BAD_TEXT, " \
                                 f"or add it to ANY_TEXT with the reason"
    values = (BAD_TEXT.get(name, []) if kind is str else WRONG[kind]) + OUT_OF_RANGE.get(name, [])
    words = flag.lstrip("-")
    names = {words, words.replace("-", "_"), words.rstrip("s"), words.replace("-", " ")}
    problems = []
    for value in values:
        argv = [*command.split(), *POSITIONALS[command], f"{flag}={value}"]
        try:
            code = main(argv)
        except ReachedWork:
            problems.append(f"{flag}={value!r} was not refused: the command started its work")
            continue
        err = capsys.readouterr().err
        if code != 2 or err.count("\n") != 1 or not err.startswith("error: "):
            problems.append(f"{flag}={value!r}: exit {code}, stderr {err!r}")
        elif not any(n in err for n in names) and not (kind is str and value in err) \
                and not (kind is str and "=" in value and value.split("=")[0] + " " in err):
            # a text value is named by itself, or a KEY=VALUE one by its KEY
            problems.append(f"{flag}={value!r}: the error does not name the flag: {err!r}")
    assert not problems, "\n".join(problems)
