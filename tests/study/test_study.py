"""`resnets study`: a micro study writes every output, skips finished runs, survives a kill."""

import json
import signal
import subprocess
import sys
import time

import pytest

import resnets
from resnets.cli import main
from resnets.study import degradation, spec
from resnets.study.degradation import Study, read_study, run_study

TRAIN = {"data": "bundled", "iters": 8, "batch_size": 16, "log_every": 2, "eval_every": 4,
         "eval_batch_size": 500, "precision": "fp32"}


def micro_study(name="micro", depths=(8, 14), iters=8):
    return Study(name=name, kinds=["plain", "resnet"], depths=list(depths), seeds=[0], preset="quick",
                 train={**TRAIN, "iters": iters}).validate()


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("studies")
    run_study(micro_study(), root, progress="none", log=lambda line: None)
    return root / "micro"


def test_micro_study_writes_every_output(finished_study):
    assert read_study(finished_study / "study.toml") == micro_study()
    for run in ("plain8-seed0", "resnet8-seed0", "plain14-seed0", "resnet14-seed0"):
        run_dir = finished_study / "runs" / run
        for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoints/last.pt"):
            assert (run_dir / name).is_file(), f"{run}/{name}"
    report = finished_study / "report"
    assert (report / "figure6.png").stat().st_size > 10_000
    assert (report / "figure6.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (report / "table.md").read_text().startswith("| model | layers | params")
    assert len((report / "table.csv").read_text().splitlines()) == 5
    summary = json.loads((report / "summary.json").read_text())
    assert {(row["kind"], row["depth"]) for row in summary["rows"]} == {
        ("plain", 8), ("resnet", 8), ("plain", 14), ("resnet", 14)}


def test_table_numbers_equal_those_in_the_runs_metrics(finished_study):
    summary = json.loads((finished_study / "report" / "summary.json").read_text())
    table = (finished_study / "report" / "table.md").read_text()
    for row in summary["rows"]:
        run_dir = finished_study / "runs" / f"{row['kind']}{row['depth']}-seed0"
        records = _records(run_dir)
        train = [r for r in records if r["split"] == "train"]
        # 8 steps are less than one epoch: every training record lies in the last epoch
        steps = [r["step"] for r in train]
        weights = [b - a for a, b in zip([0] + steps[:-1], steps)]
        expected_train = sum(r["err"] * w for r, w in zip(train, weights)) / sum(weights)
        expected_test = [r for r in records if r["split"] == "test"][-1]["err"]
        assert row["train_err_mean"] == pytest.approx(expected_train, rel=1e-12)
        assert row["test_err_mean"] == expected_test
        assert row["params"] == json.loads((run_dir / "summary.json").read_text())["params"]
        assert f"| {row['kind']}{row['depth']} | {row['depth']} | {row['params']:,} | {expected_train:.2f} | " \
               f"{expected_test:.2f} | 1 |" in table


def test_running_again_trains_nothing(finished_study, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("resnets.train.fit", no_training)
    before = {p: p.stat().st_mtime_ns for p in finished_study.glob("runs/*/metrics.jsonl")}
    lines = []
    run_study(micro_study(), finished_study.parent, progress="none", log=lines.append)
    assert sum("skipped" in line for line in lines) == 4
    assert {p: p.stat().st_mtime_ns for p in finished_study.glob("runs/*/metrics.jsonl")} == before


def test_report_command_redraws_from_metrics_alone(finished_study, capsys):
    (finished_study / "report" / "figure6.png").unlink()
    assert main(["study", "report", str(finished_study)]) == 0
    assert (finished_study / "report" / "figure6.png").is_file()
    assert "figure6.png" in capsys.readouterr().out


def test_killed_study_finishes_when_run_again_with_no_run_trained_twice(tmp_path):
    study = micro_study(name="killed", depths=(8,), iters=16)
    study_file = tmp_path / "killed.toml"
    study_file.write_text(study.to_toml())
    command = [sys.executable, "-m", "resnets", "study", "--config", str(study_file),
               "--out", str(tmp_path), "--progress", "none"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = tmp_path / "killed" / "runs" / "resnet8-seed0" / "checkpoints" / "last.pt"
    first_summary = tmp_path / "killed" / "runs" / "plain8-seed0" / "summary.json"
    deadline = time.monotonic() + 240
    while not second.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the study ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert first_summary.is_file() and not (second.parent.parent / "summary.json").exists()
    first_finished = first_summary.stat().st_mtime_ns

    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "plain8-seed0: finished earlier, skipped" in result.stderr
    assert "resuming resnet8-seed0" in result.stderr
    assert first_summary.stat().st_mtime_ns == first_finished
    steps = [r["step"] for r in _records(second.parent.parent) if r["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 16  # no step logged twice


def test_bad_study_settings_are_one_line_errors(tmp_path, capsys):
    assert main(["study", "--depths", "21", "--out", str(tmp_path)]) == 2
    assert "nearest valid depths are 20 and 26" in capsys.readouterr().err
    assert main(["study", "--kinds", "wide", "--out", str(tmp_path)]) == 2
    assert "unknown model kind 'wide'" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text("depths = [20]\ncolour = 'red'\n")
    assert main(["study", "--config", str(tmp_path / "bad.toml")]) == 2
    assert "unknown study keys ['colour']" in capsys.readouterr().err
    assert main(["study", "report", str(tmp_path)]) == 2
    assert "not a study directory" in capsys.readouterr().err


def test_a_saved_study_must_match_the_one_asked_for(finished_study):
    different = micro_study(depths=(8,))
    with pytest.raises(resnets.UserError, match="holds a different study"):
        degradation.prepare(different, finished_study.parent)


def test_default_study_is_the_paper_depths():
    study = spec.default_study()
    assert study.kinds == ["plain", "resnet"] and study.depths == [20, 32, 44, 56]
    assert study.train["data"] == "bundled"


def test_bundled_paper_study_uses_the_paper_recipe_unchanged():
    study = read_study("paper-cifar10")
    assert study.preset == "paper-cifar" and study.train == {"data": "cifar10"}
    assert study.depths == [20, 32, 44, 56, 110]
    config = study.config_for(spec.Run("resnet", 110, 0))
    assert config.iters == 64000 and config.milestones == [32000, 48000] and config.wd == 1e-4
    assert config.model_args == {"depth": 110}


def test_study_passes_model_arguments_to_every_run_with_its_depth():
    study = Study(name="s", depths=[20], train={"data": "bundled", "epochs": 1, "model_args": "shortcut=B"}).validate()
    config = study.config_for(spec.Run("resnet", 20, 3))
    assert config.model == "cifar_resnet" and config.seed == 3
    assert config.model_args == {"shortcut": "B", "depth": 20}


def test_a_study_depth_of_50_is_the_cifar_network_not_imagenet_resnet50():
    study = Study(name="s", depths=[50], train={"data": "bundled", "epochs": 1}).validate()
    config = study.config_for(spec.Run("resnet", 50, 0))
    assert config.model == "cifar_resnet" and config.model_args == {"depth": 50}


def test_ctrl_c_during_a_study_exits_130_saying_how_to_continue(tmp_path, capsys, ctrl_c_after_step):
    ctrl_c_after_step(3)
    study_file = tmp_path / "s.toml"
    study_file.write_text(micro_study(name="s", depths=(8,)).to_toml())
    assert main(["study", "--config", str(study_file), "--out", str(tmp_path), "--progress", "none"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("study interrupted during plain8-seed0 (run 1/2)")
    assert (tmp_path / "s" / "runs" / "plain8-seed0" / "checkpoints" / "last.pt").is_file()


def test_repeated_seeds_or_depths_are_refused_not_counted_twice(tmp_path, capsys):
    assert main(["study", "--seeds", "0", "0", "--out", str(tmp_path)]) == 2
    assert "seeds lists 0 more than once" in capsys.readouterr().err
    assert main(["study", "--depths", "8", "8", "--out", str(tmp_path)]) == 2
    assert "depths lists 8 more than once" in capsys.readouterr().err
    assert not (tmp_path / "degradation").exists()


def test_a_study_with_no_finished_run_can_be_redefined(tmp_path, capsys):
    # The first attempt fails on a mistake: CIFAR without its folder.
    argv = ["study", "--name", "s", "--depths", "8", "--seeds", "0", "--iters", "2",
            "--out", str(tmp_path), "--progress", "none"]
    assert main([*argv, "--data", "cifar10"]) == 2
    assert "cifar" in capsys.readouterr().err.lower()
    assert (tmp_path / "s" / "study.toml").is_file()
    # The same study with the mistake fixed runs, instead of "holds a different study".
    assert main([*argv, "--data", "bundled", "--set", "eval_batch_size=1000"]) == 0
    assert "data = \"bundled\"" in (tmp_path / "s" / "study.toml").read_text()
    assert (tmp_path / "s" / "runs" / "resnet8-seed0" / "summary.json").is_file()


def test_study_passes_threads_to_every_run():
    study = Study(name="s", depths=[20], train={"data": "bundled", "epochs": 1, "threads": "1"}).validate()
    assert study.config_for(spec.Run("plain", 20, 0)).threads == 1


def test_figure6_draws_a_single_evaluation_as_a_dot(tmp_path, monkeypatch):
    # A run shorter than one evaluation interval has one test point: a line of one point is
    # invisible, so the bold "test" of the legend showed nothing (a user's tiny study).
    from matplotlib.axes import Axes

    from resnets.study.plots import plot_figure6

    drawn = []
    plot = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *args, **kwargs: (
        drawn.append((len(args[0]), kwargs.get("marker"))), plot(self, *args, **kwargs))[1])
    rows = [{"kind": "resnet", "depth": 8, "train_err_mean": 50.0, "test_err_mean": 60.0,
             "curves": {"train": [[5, 70.0], [15, 50.0]], "test": [[15, 60.0]]}},
            {"kind": "resnet", "depth": 14, "train_err_mean": 40.0, "test_err_mean": 45.0,
             "curves": {"train": [[5, 70.0], [15, 40.0]], "test": [[5, 80.0], [15, 45.0]]}}]
    assert plot_figure6(rows, tmp_path / "figure6.png").is_file()
    assert drawn == [(2, None), (1, "o"), (2, None), (2, None)]


def test_every_study_run_evaluates_the_test_split_for_figure6_curves():
    from resnets.train import resolve_config

    # The quick preset evaluates the test split once; a study's runs draw test curves.
    assert resolve_config("quick").eval_test == "end"
    study = Study(name="s", depths=[20], train={"data": "bundled", "epochs": 1}).validate()
    assert study.config_for(spec.Run("plain", 20, 0)).eval_test == "every"
    own = Study(name="s", depths=[20], train={"data": "bundled", "epochs": 1,
                                              "eval_test": "end"}).validate()
    assert own.config_for(spec.Run("plain", 20, 0)).eval_test == "end"  # the study's choice


def test_default_study_draws_7_test_points_a_run_in_under_half_the_earlier_work():
    from resnets.data import load
    from resnets.train.eval_policy import count_evaluations

    config = spec.default_study().config_for(spec.Run("plain", 56, 0))
    steps = round(config.epochs * (len(load("bundled", "train")) // config.batch_size))
    counts = count_evaluations(total_steps=steps, every=config.eval_every,
                               policies={"val": config.eval_val, "test": config.eval_test})
    assert counts == {"test": 7, "val": 1}
    # Images through the network, a training image as 3 (forward, backward's two passes), an
    # evaluated one as 1; both grow alike with depth. Before: 8 epochs of 28 steps, 400 val +
    # 1,000 test digits after each epoch.
    work = 3 * steps * config.batch_size + 1000 * counts["test"] + 400 * counts["val"]
    assert work <= 0.5 * (3 * 224 * 128 + 8 * (400 + 1000))
    assert "zero_init_last" not in config.model_args and config.lr == 0.05
