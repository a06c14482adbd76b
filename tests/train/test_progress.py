"""The progress display: a bar that fits the terminal, lines that show life in a long epoch,
a time left that follows the recent rate, and a quiet mode that still says where the run went."""

import io

import pytest
from rich.cells import cell_len
from rich.console import Console

from resnets.cli import main
from resnets.train.progress import (LINE_INTERVAL_S, BarProgress, LineProgress, StepRate,
                                    fit_columns, make_progress)

from test_cli import TINY


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def _bar_line_at(width: int) -> str:
    """The bar's last line on a console `width` cells wide, half way through a run that has
    training figures and a validation error (a console that is not a terminal gets only the
    last drawing of the line, so the output is that line)."""
    out = io.StringIO()
    console = Console(file=out, width=width, record=True)
    clock = FakeClock()
    bar = BarProgress(console, clock=clock)
    bar.start(total_steps=3000, steps_per_epoch=1000)
    for step in range(1, 1501):
        clock.now += 0.25
        if step % 100 == 0:
            bar.train({"split": "train", "loss": 0.123456, "err": 3.125, "lr": 0.1,
                       "img_s": 512.0})
        if step % 1000 == 0:
            bar.evaluation({"split": "val", "err": 2.5})
        bar.step(step)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and console.export_text().splitlines() == lines
    return lines[0]


def test_bar_on_80_columns_keeps_bar_steps_time_left_then_epoch_loss_and_val_err():
    line = _bar_line_at(80)
    assert cell_len(line) <= 80
    assert "━━" in line and "1500/3000" in line and "6:15 left" in line  # 1500 x 0.25 s
    assert "epoch 1.5/3" in line and "loss 0.1235 err 3.12%" in line and "val_err 2.50%" in line
    assert "img/s" not in line and "lr " not in line and "elapsed" not in line


def _bar(width: int) -> str:
    """A half-done bar `width` cells wide as a console without colours draws it."""
    return "━" * (width // 2) + " " * (width - width // 2)


def test_bar_on_40_columns_keeps_only_bar_steps_and_time_left():
    line = _bar_line_at(40)
    assert line == _bar(20) + " 1500/3000 6:15 left"  # epoch (11 more cells) does not fit


def test_bar_on_200_columns_shows_every_column_with_a_full_bar():
    line = _bar_line_at(200)
    assert cell_len(line) <= 200
    for text in ("epoch 1.5/3", "1500/3000", "loss 0.1235 err 3.12%", "val_err 2.50%",
                 "lr 0.1 512 img/s", "6:15 elapsed", "6:15 left"):
        assert text in line
    assert _bar(40) + " 1500/3000" in line  # the widest bar


def test_columns_are_dropped_least_useful_first():
    texts = {"epoch": "e" * 10, "steps": "s" * 10, "train": "t" * 10, "val": "v" * 10,
             "rate": "r" * 10, "elapsed": "x" * 10, "left": "l" * 10}
    everything = ["epoch", "bar", "steps", "train", "val", "rate", "elapsed", "left"]
    assert fit_columns(texts, 200) == (everything, 40)
    # 7 texts of 10 and 7 spaces: 77 cells, so 87 holds all with the narrowest bar
    assert fit_columns(texts, 87) == (everything, 10)
    assert fit_columns(texts, 86)[0] == [c for c in everything if c != "elapsed"]
    assert fit_columns(texts, 75)[0] == ["epoch", "bar", "steps", "train", "val", "left"]
    assert fit_columns(texts, 50)[0] == ["epoch", "bar", "steps", "left"]
    assert fit_columns(texts, 20)[0] == ["bar", "steps", "left"]  # never fewer
    assert fit_columns({**texts, "val": ""}, 200)[0] == [c for c in everything if c != "val"]


def _tty(monkeypatch, term):
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TERM", term)
    stream = io.StringIO()
    stream.isatty = lambda: True
    return stream


def test_auto_is_the_bar_only_on_a_terminal_that_can_redraw(monkeypatch):
    assert isinstance(make_progress("auto", _tty(monkeypatch, "xterm-256color")), BarProgress)
    assert isinstance(make_progress("auto", _tty(monkeypatch, "dumb")), LineProgress)
    assert isinstance(make_progress("auto", io.StringIO()), LineProgress)  # a pipe, a log
    monkeypatch.setenv("FORCE_COLOR", "1")  # colours in a CI log, still no redrawing
    assert isinstance(make_progress("auto", io.StringIO()), LineProgress)


def _line_steps(printed: str) -> list[int]:
    return [int(line.split("step ")[1].split("/")[0]) for line in printed.splitlines()]


def test_lines_show_life_every_30_seconds_in_a_long_epoch_and_at_each_epoch():
    out, clock = io.StringIO(), FakeClock()
    lines = LineProgress(out, clock=clock)
    lines.start(total_steps=200, steps_per_epoch=100)
    for step in range(1, 201):
        clock.now += 0.1 if step <= 100 else 7.0  # a fast epoch, then a slow one
        lines.step(step)
    assert LINE_INTERVAL_S == 30
    # fast: one line, at the epoch's end; slow: a line each 5 steps (35 s >= 30 s) and the end
    assert _line_steps(out.getvalue()) == [100] + list(range(105, 201, 5))


def test_time_left_follows_the_recent_rate_not_the_average_since_the_start():
    clock = FakeClock()
    rate = StepRate(step=0, now=clock.now)
    assert rate.seconds_left(1000, clock.now) != rate.seconds_left(1000, clock.now)  # NaN
    step = 0
    for _ in range(10):  # a slow start: 5 s a step (warm-up, a busy machine)
        clock.now += 5.0
        step += 1
        rate.update(step, clock.now)
    for _ in range(900):  # then 0.1 s a step for 90 s
        clock.now += 0.1
        step += 1
        rate.update(step, clock.now)
    left = rate.seconds_left(total_steps=1910, now=clock.now)  # 1000 steps to go
    assert left == pytest.approx(1000 * 0.1, rel=0.1)
    since_start = (clock.now - 1000.0) / step * 1000  # ~149 s
    assert left < 0.75 * since_start
    clock.now += 30.0  # between steps the estimate counts down
    assert rate.seconds_left(1910, clock.now) == pytest.approx(left - 30.0)


def test_line_mode_time_left_uses_the_recent_rate():
    out, clock = io.StringIO(), FakeClock()
    lines = LineProgress(out, clock=clock)
    lines.start(total_steps=400, steps_per_epoch=200)
    for step in range(1, 201):
        clock.now += 10.0 if step <= 2 else 0.5  # two very slow first steps
        lines.step(step)
    last = out.getvalue().splitlines()[-1]
    assert last.startswith("epoch 1.0/2  step 200/400") and "1:59 elapsed" in last
    minutes, seconds = last.split(", ")[-1].removesuffix(" left").split(":")
    # 200 steps to go at 0.5 s: 100 s; elapsed / done would say 119 s
    assert 60 * int(minutes) + int(seconds) == pytest.approx(100, abs=5)


def test_progress_none_prints_only_where_the_run_went(tmp_path, fake_rooms, capsys):
    assert main(["train", *TINY, "--iters", "2", "--out", str(tmp_path), "--name", "quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"run directory: {tmp_path / 'quiet'}\n"
    assert captured.err == ""


@pytest.mark.parametrize("flags, said", [
    ([], "precision: fp32 (auto): bf16 trains at 0.50x fp32 on this CPU (measured)"),
    (["--precision", "bf16"], "precision: bf16 (as set)"),
])
def test_the_first_progress_line_says_the_precision_and_why(tmp_path, fake_rooms, capsys, flags,
                                                            said):
    assert main(["train", *TINY[:-2], "--progress", "lines", "--iters", "2", *flags,
                 "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    lines = [line for line in (captured.out + captured.err).splitlines()
             if not line.startswith("run directory")]
    assert lines[0] == said  # tests/conftest.py gives the measurements: fp32 trains faster
