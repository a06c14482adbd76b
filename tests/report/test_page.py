"""`resnets report`'s pages hold the run's and the study's own numbers, fetch nothing, and show
every string from a run as text."""

import html
import json
import re
from html.parser import HTMLParser

import pytest
from report_inputs import NASTY

from resnets.report import build_page, write_page
from resnets.report.page import script_json
from resnets.report.study import verdict
from resnets.study.report import TABLE_HEADER, collect, table_markdown
from resnets.train.checkpoint import load_checkpoint
from resnets.train.progress import summary_rows


class _Tables(HTMLParser):
    """Every table of a page as rows of cell texts; and the page's elements by tag."""

    def __init__(self, page: str):
        super().__init__()
        self.tables, self.tags, self._cell = [], [], None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def _embedded(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="resnets-data">(.*?)</script>', page,
                      re.S)
    return json.loads(found.group(1))


def test_run_page_holds_the_config_and_the_final_figures_of_summary_json(tiny_run):
    page = build_page([tiny_run])
    summary = json.loads((tiny_run / "summary.json").read_text())
    config = json.loads((tiny_run / "config.json").read_text())
    rows = {tuple(row) for table in _Tables(page).tables for row in table}
    for label, value in summary_rows(summary):  # the terminal's final table, cell for cell
        assert (label, value) in rows
    assert ("test err (top-1 / top-5)",
            f"{summary['final']['test_err']:.2f}% / {summary['final']['test_err_top5']:.2f}%") in rows
    for key in ("lr", "batch_size", "schedule", "augment", "iters"):  # the resolved config
        assert (key, str(config[key])) in rows
    assert ("torch", config["environment"]["torch"]) in rows
    classes = load_checkpoint(tiny_run / "checkpoints" / "last.pt")["classes"]
    assert ("classes", f"{len(classes)}: {', '.join(classes)}") in rows  # the digits 0 to 9
    assert _embedded(page)["runs"][0]["summary"] == summary
    assert page.count('<svg class="figure"') == 4 + 2 + 1  # curves; lesion 2; landscape 1
    assert "Lesion study" in page and "Loss landscape" in page


def test_run_page_shows_the_lesion_table_of_lesion_json(tiny_run):
    page = build_page([tiny_run])
    result = json.loads((tiny_run / "lesion" / "lesion.json").read_text())
    rows = {tuple(row) for table in _Tables(page).tables for row in table}
    for unit in result["units"]:
        assert (unit["name"], f"{unit['err']:.2f}", f"{unit['delta_err']:+.2f}") in rows
    for row in result["random"]:  # random.csv's columns, errors to 2 decimals as printed
        assert (str(row["k"]), str(len(row["subsets"])), f"{row['err_mean']:.2f}",
                f"{row['err_std']:.2f}", f"{row['err_min']:.2f}", f"{row['err_max']:.2f}",
                f"{row['loss_mean']:.4f}") in rows


def test_study_page_table6_is_the_study_reports_table(tiny_study):
    study_dir, _ = tiny_study
    page = build_page([study_dir])
    table6 = next(t for t in _Tables(page).tables if tuple(t[0]) == TABLE_HEADER)
    markdown = (study_dir / "report" / "table.md").read_text().splitlines()[2:]
    assert [[c.strip() for c in line.strip("|").split("|")] for line in markdown] == table6[1:]
    summary = json.loads((study_dir / "report" / "summary.json").read_text())
    assert _embedded(page)["rows"] == summary["rows"]  # the numbers, unrounded
    assert "2 of 2 runs finished" in page
    assert 'http-equiv="refresh"' not in page  # finished: nothing to watch
    for run in ("plain8-seed0", "resnet8-seed0"):
        assert f'id="run-{run}"' in page


def test_unfinished_study_page_reloads_itself_and_says_how_many_runs_are_done(tiny_study, tmp_path):
    import shutil

    study_dir, _ = tiny_study
    copy = tmp_path / "tiny"
    shutil.copytree(study_dir, copy, ignore=shutil.ignore_patterns("checkpoints", "*.html"))
    (copy / "runs" / "resnet8-seed0" / "summary.json").unlink()  # as if still training
    page = build_page([copy])
    assert "1 of 2 runs finished" in page
    assert re.search(r'<meta http-equiv="refresh" content="\d+">', page)
    assert "resnet8 (unfinished)" in page
    assert "Training: step 4 so far (not finished)." in page


def test_pages_fetch_nothing(tiny_run, tiny_study):
    """No reference a browser would follow to the network: the only http URLs left are the
    SVG and XLink namespace names, which are identifiers, never fetched."""
    namespaces = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    for page in (build_page([tiny_run]), build_page([tiny_study[0]])):
        assert set(re.findall(r"https?://[^\s\"'<>)]+", page)) <= namespaces
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page, re.I)
        assert "@import" not in page and "<link" not in page and "<img" not in page


def test_several_runs_are_compared_on_one_page(tiny_run, tiny_study, tmp_path):
    runs = [tiny_study[0] / "runs" / "plain8-seed0", tiny_study[0] / "runs" / "resnet8-seed0"]
    out = write_page(runs, tmp_path / "both.html")
    page = out.read_text()
    tables = _Tables(page).tables
    final = tables[0]
    assert final[0] == ["", "plain8-seed0", "resnet8-seed0"]
    for column, run in enumerate(runs, 1):
        summary = json.loads((run / "summary.json").read_text())
        assert {row[0]: row[column] for row in final[1:]} == dict(summary_rows(summary))
    differ = {row[0]: row[1:] for row in tables[1][1:]}
    assert differ["model"] == ["cifar_plain", "cifar_resnet"]  # settings in which they differ
    assert "seed" not in differ


def test_a_lesion_folder_is_a_page_of_its_own(tiny_run, tmp_path):
    out = write_page([tiny_run / "lesion"], tmp_path / "lesion.html")
    page = out.read_text()
    assert "Lesion study" in page and page.count('<svg class="figure"') == 2


def test_strings_from_a_run_are_escaped_in_the_html(nasty_run, tmp_path):
    page = build_page([nasty_run])
    tags = _Tables(page).tags
    assert not [t for t, a in tags if t == "img"]
    assert [t for t, a in tags if t == "script"] == ["script", "script"]  # our two
    assert not [a for t, a in tags if any(key.startswith("on") for key in a)]
    for value in NASTY.values():
        assert value not in page  # never raw
    for key in ("name", "data", "model_args_key", "lesion_unit", "platform", "model", "class"):
        assert html.escape(NASTY[key]) in page or html.escape(json.dumps(NASTY[key])[1:-1]) in page
    # text inside the SVG figures is escaped by matplotlib (a run's name in a title, a legend)
    assert "&lt;script&gt;alert(4)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(8)&gt;" in page


def test_json_in_a_script_cannot_end_the_script():
    data = {"name": "</script><script>alert(1)</script>", "c": "<!-- & \u2028"}
    encoded = script_json(data)
    assert "<" not in encoded and ">" not in encoded and "&" not in encoded
    assert json.loads(encoded) == data


def _rows(errors: dict) -> dict:
    rows = [{"kind": kind, "depth": depth, "train_err_mean": err}
            for (kind, depth), err in errors.items()]
    return {"rows": rows, "runs": [{"finished": True}]}


def test_verdict_names_the_degradation_with_its_numbers():
    sentence = verdict(_rows({("plain", 20): 1.7, ("plain", 56): 19.7, ("resnet", 20): 1.5,
                              ("resnet", 56): 0.4}))
    assert sentence == ("Degradation: deeper plain networks train worse, deeper residual ones do "
                        "not. plain56 trains worse than plain20: 19.70% vs 1.70% training error; "
                        "resnet56 trains better than resnet20: 0.40% vs 1.50% training error.")


def test_verdict_says_so_when_there_is_no_degradation_or_too_little_to_tell():
    assert verdict(_rows({("plain", 20): 5.0, ("plain", 56): 4.0})).startswith(
        "No degradation in this study. plain56 trains better than plain20")
    assert verdict(_rows({("plain", 20): 5.0, ("resnet", 20): 4.0})).startswith("No verdict yet")


def test_study_page_verdict_is_computed_from_table6(tiny_study):
    study_dir, _ = tiny_study
    data = collect(study_dir)
    assert html.escape(verdict(data)) in build_page([study_dir])
    assert table_markdown(data) == (study_dir / "report" / "table.md").read_text()


@pytest.mark.parametrize("key", ["lr", "step"])
def test_an_edited_metrics_file_with_text_for_a_number_is_one_error(tiny_run, tmp_path, key):
    import shutil

    from resnets.errors import UserError

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    record[key] = "<b>1</b>"
    lines[0] = json.dumps(record)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=f"record 1 has {key} = '<b>1</b>', not a number"):
        build_page([run])


def test_study_page_shows_the_diagnostics_kept_in_the_study(tiny_study, tmp_path):
    import shutil

    from resnets.study.diagnostics import diagnose, write_diagnosis

    copy = tmp_path / "tiny"
    shutil.copytree(tiny_study[0], copy, ignore=shutil.ignore_patterns("checkpoints", "*.html"))
    result = diagnose(["resnet8", "plain8"], steps=1, batch_size=8)
    write_diagnosis(result, copy / "diagnostics")  # `resnets diagnose --out STUDY/diagnostics`
    page = build_page([copy])
    section = page[page.index("<h2>Diagnostics</h2>"):page.index('id="run-')]
    assert section.count('<svg class="figure"') == 3  # grad norms, Figure 7, identity
    rows = {tuple(row) for table in _Tables(section).tables for row in table}
    for name, row in result["models"].items():
        assert (name, f"{row['init']['first_last_ratio']:.3g}",
                f"{row['trained']['first_last_ratio']:.3g}") in rows
