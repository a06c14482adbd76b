import io
import json

import pytest
import torch
from PIL import Image

from resnets.errors import UserError
from resnets.train.plots import plot_runs
from resnets.train import fit
from resnets.train.inference import load_image
from resnets.train.metrics import MetricsWriter, read_metrics, truncate_metrics
from resnets.train.progress import BarProgress, LineProgress, make_progress

from train_fakes import tiny_config


def test_metrics_lines_round_trip_and_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as writer:
        writer.write({"split": "train", "step": 1, "loss": 0.1 + 0.2})
        writer.write({"split": "val", "step": 1, "err": 12.5})
    with open(path, "a") as f:
        f.write('{"split": "train", "st')  # a crash mid-line
    records = read_metrics(path)
    assert records == [{"split": "train", "step": 1, "loss": 0.1 + 0.2},
                       {"split": "val", "step": 1, "err": 12.5}]  # floats exactly
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(UserError, match="metrics.jsonl:2"):
        read_metrics(path)


def test_truncate_keeps_records_up_to_a_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)))
    truncate_metrics(path, 2)
    assert [r["step"] for r in read_metrics(path)] == [1, 2]


def test_auto_progress_is_lines_off_a_terminal():
    assert isinstance(make_progress("auto", io.StringIO()), LineProgress)
    with pytest.raises(UserError, match="progress must be"):
        make_progress("loud")


def test_live_bar_shows_epoch_loss_lr_and_time_left(tmp_path, fake_rooms):
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    fit(tiny_config(iters=6), tmp_path / "run", progress=BarProgress(console))
    text = out.getvalue()
    assert "epoch 1.0/1" in text and "6/6" in text and "loss " in text and "lr " in text
    assert "left" in text and "img/s" in text


def test_plot_runs_draws_one_run_and_overlays(tmp_path, fake_rooms):
    for name in ("a", "b"):
        fit(tiny_config(iters=4, seed=ord(name)), tmp_path / name, progress="none")
    written = plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "figs", labels=["A", "B"])
    assert [p.name for p in written] == ["loss.png", "error.png"]
    for path in written:
        assert Image.open(path).size[0] > 300
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["error.png", "loss.png"]
    with pytest.raises(UserError, match="no metrics.jsonl"):
        plot_runs([tmp_path / "figs"], tmp_path / "x")
    with pytest.raises(UserError, match="2 labels for 1 runs"):
        plot_runs([tmp_path / "a"], tmp_path / "x", labels=["A", "B"])


@pytest.mark.parametrize("mode, size", [("RGBA", (50, 30)), ("L", (5, 90)), ("RGB", (28, 28)),
                                        ("I;16", (64, 64)), ("1", (31, 17))])
def test_load_image_converts_any_mode_and_size_to_the_input_format(tmp_path, mode, size):
    path = tmp_path / "image.png"
    Image.new(mode, size).save(path)
    for shape in ([1, 28, 28], [3, 32, 24]):
        image = load_image(path, shape)
        assert image.dtype == torch.uint8 and list(image.shape) == shape


def test_load_image_centre_crops_after_resizing_the_shorter_side(tmp_path):
    image = Image.new("L", (40, 20))  # wide: left and right quarters are cropped away
    image.paste(255, (10, 0, 30, 20))
    image.save(tmp_path / "wide.png")
    image = load_image(tmp_path / "wide.png", [1, 10, 10])
    assert image[:, :, 1:-1].min() == 255  # squashing instead of cropping would show black
    assert image.float().mean() > 240


def test_plot_out_that_is_a_file_is_a_user_error(tmp_path):
    import pytest

    from resnets.errors import UserError

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"split": "test", "step": 5, "loss": 1.0, "err": 50.0}\n')
    (tmp_path / "file.pt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        plot_runs([run], tmp_path / "file.pt")
    assert len(plot_runs([run], tmp_path / "plots")) == 2  # a lone evaluation still plots


@pytest.mark.parametrize("text, words", [
    ("", "no metrics record in it"),
    ('{"split": "train", "st', "no metrics record in it"),  # only a torn line
    ("[1, 2]\n", "metrics.jsonl:1: not a metrics record (expected a JSON object"),
    ('{"note": "hello"}\n', "no record with a step, a split and a finite loss or err"),
    ('{"split": "test", "step": 3, "loss": NaN}\n', "no record with a step, a split"),
])
def test_plot_of_a_metrics_file_with_no_usable_record_is_one_line(tmp_path, capsys, text,
                                                                  words):
    from resnets.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(text)
    assert main(["plot", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err, err
    assert sorted(p.name for p in run.iterdir()) == ["metrics.jsonl"]  # no empty figures
