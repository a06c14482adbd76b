"""The final table of a run (`resnets train`'s last output): errors and accuracies."""

import io

from resnets.train.progress import print_summary, summary_rows

SUMMARY = {"model": "resnet20", "params": 272474, "steps": 390, "epochs": 10.0, "time_s": 125.0,
           "img_s": 400.0,
           "final": {"train_loss": 0.1234, "train_err": 3.5, "val_err": 4.0, "test_loss": 0.2,
                     "test_err": 8.75, "test_err_top5": 0.5},
           "best": {"step": 390, "val_err": 4.0, "split": "val"}}


def test_the_summary_shows_test_accuracy_as_100_minus_the_error():
    rows = dict(summary_rows(SUMMARY))
    assert rows["test err (top-1 / top-5)"] == "8.75% / 0.50%"
    assert rows["test accuracy (top-1 / top-5)"] == "91.25% / 99.50%"
    labels = [label for label, _ in summary_rows(SUMMARY)]
    assert labels.index("test accuracy (top-1 / top-5)") == labels.index("test err (top-1 / top-5)") + 1


def test_a_run_without_a_test_split_shows_dashes_not_100_percent():
    rows = dict(summary_rows({**SUMMARY, "final": {**SUMMARY["final"], "test_err": None,
                                                   "test_err_top5": None}}))
    assert rows["test accuracy (top-1 / top-5)"] == "- / -"


def test_the_printed_table_holds_the_accuracy():
    from rich.console import Console

    out = io.StringIO()
    print_summary(SUMMARY, "runs/r", console=Console(file=out, width=100))
    assert "test accuracy (top-1 / top-5)" in out.getvalue() and "91.25% / 99.50%" in out.getvalue()
