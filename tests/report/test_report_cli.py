"""`resnets report PATH... [--out FILE]`: where the page goes, bad input in one line with
nothing written, and `resnets study` refreshing its page after every run."""

import errno
import shutil

import pytest
from report_inputs import STUDY_TRAIN

from resnets.cli import main


def _pages(folder):
    return sorted(folder.rglob("*.html"))


def _copy(run, to):
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("checkpoints", "*.html"))
    return to


def test_report_writes_report_html_inside_the_run_and_prints_its_path(tiny_run, tmp_path, capsys):
    run = _copy(tiny_run, tmp_path / "run")
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out == f"{run / 'report.html'}\n"
    assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_report_out_names_the_file(tiny_run, tmp_path, capsys):
    assert main(["report", str(tiny_run), "--out", str(tmp_path / "page.html")]) == 0
    assert (tmp_path / "page.html").is_file()


def test_report_open_opens_the_page_in_the_browser(tiny_run, tmp_path, monkeypatch):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    out = tmp_path / "page.html"
    assert main(["report", str(tiny_run), "--out", str(out), "--open"]) == 0
    assert opened == [out.resolve().as_uri()]


def _torn(run):
    with open(run / "metrics.jsonl", "a") as file:
        file.write('{"split": "train", "step": 9, "lo')


@pytest.mark.parametrize("damage, message", [
    (lambda run: shutil.rmtree(run / "checkpoints", ignore_errors=True) or
     (run / "config.json").unlink(), "is not a run directory"),
    (lambda run: (run / "summary.json").unlink(), "is an unfinished run"),
    (_torn, "a torn last line"),
    (lambda run: (run / "summary.json").write_text("{}"), "is not a summary training wrote"),
    (lambda run: (run / "config.json").write_text("[1]"), "is not a config training wrote"),
    (lambda run: (run / "lesion" / "lesion.json").write_text('{"units": 3}'),
     "is not a result resnets wrote"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tiny_run, tmp_path, one_error_line,
                                                          damage, message):
    run = _copy(tiny_run, tmp_path / "run")
    damage(run)
    assert main(["report", str(run)]) == 2
    assert message in one_error_line()
    assert _pages(tmp_path) == []


def test_a_missing_path_or_a_file_is_one_line(tmp_path, one_error_line):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "not found" in one_error_line()
    (tmp_path / "file.txt").write_text("x")
    assert main(["report", str(tmp_path / "file.txt")]) == 2
    assert "is a file" in one_error_line()
    assert main(["report", str(tmp_path)]) == 2  # a folder of nothing we know
    assert "is not a run directory" in one_error_line()


def test_a_study_among_several_paths_is_refused(tiny_run, tiny_study, tmp_path, one_error_line):
    assert main(["report", str(tiny_run), str(tiny_study[0]), "--out",
                 str(tmp_path / "x.html")]) == 2
    assert "report a study on its own" in one_error_line()
    assert _pages(tmp_path) == []


def test_an_output_that_is_a_folder_or_unwritable_is_one_line(tiny_run, tmp_path, one_error_line,
                                                             read_only):
    assert main(["report", str(tiny_run), "--out", str(tmp_path)]) == 2
    assert "is a folder" in one_error_line()
    read_only(tmp_path, errno.EACCES)
    assert main(["report", str(tiny_run), "--out", str(tmp_path / "page.html")]) == 2
    assert "Permission denied" in one_error_line()
    assert _pages(tmp_path) == []


def test_study_runner_calls_on_run_done_after_each_run_it_trains(tiny_study):
    _, finished_at_each_call = tiny_study
    assert finished_at_each_call == [1, 2]


def test_study_command_refreshes_its_page_after_every_run(tmp_path, monkeypatch, capsys):
    """The page is rewritten as each run finishes (the runs finished then are on it), and once
    more at the end."""
    import resnets.report as report

    pages = []
    real = report.refresh_study_page

    def refresh(study_dir, log):
        path = real(study_dir, log)
        pages.append(path.read_text())
        return path

    monkeypatch.setattr(report, "refresh_study_page", refresh)
    argv = ["study", "--name", "watched", "--kinds", "plain", "resnet", "--depths", "8",
            "--seeds", "0", "--out", str(tmp_path), "--progress", "none"]
    argv += [a for key, value in STUDY_TRAIN.items()
             for a in ("--set", f"{key}={value}")]
    assert main(argv) == 0
    assert [("1 of 2 runs finished" in p, "2 of 2 runs finished" in p) for p in pages] == [
        (True, False), (False, True), (False, True)]
    assert 'http-equiv="refresh"' in pages[0] and 'http-equiv="refresh"' not in pages[-1]
    assert (tmp_path / "watched" / "report.html").read_text() == pages[-1]
