"""Small real inputs for `resnets report`, made once per session: a trained run (depth 8, a few
steps on the bundled digits) with its lesion and landscape results, a two-run study, and a copy
of the run whose every string a page shows holds HTML and script."""

import json
import shutil

import pytest

from report_inputs import NASTY, STUDY_TRAIN


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished run with lesion/ (resnets lesion's default place) and landscape/ results."""
    from resnets.cli import main
    from resnets.study.lesioning import lesion, write_lesion
    from resnets.study.loss_landscape import landscape, write_landscape

    out = tmp_path_factory.mktemp("runs")
    argv = ["train", "--model", "cifar_resnet", "--model-args", "depth=8", "--iters", "4",
            "--batch-size", "16", "--log-every", "2", "--eval-every", "2", "--device", "cpu",
            "--precision", "fp32", "--out", str(out), "--name", "resnet8", "--progress", "none"]
    assert main(argv) == 0
    run = out / "resnet8"
    write_lesion(lesion(run, images=40, subsets=2, device="cpu"), run / "lesion")
    write_landscape(landscape([run], dims=1, points=3, images=20, device="cpu"),
                    run / "landscape")
    return run


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """A finished study of two runs (plain8, resnet8), and the number of finished runs seen
    at each call of run_study's on_run_done."""
    from resnets.study.degradation import Study, run_study

    study = Study(name="tiny", kinds=["plain", "resnet"], depths=[8], seeds=[0],
                  preset="quick", train=STUDY_TRAIN).validate()
    root = tmp_path_factory.mktemp("studies")
    seen = []

    def on_run_done(study_dir):
        seen.append(len(list(study_dir.glob("runs/*/summary.json"))))

    study_dir = run_study(study, root, progress="none", log=lambda line: None,
                          on_run_done=on_run_done)
    return study_dir, seen


def _edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.fixture(scope="session")
def nasty_run(tiny_run, tmp_path_factory):
    """The tiny run, copied into a folder named with HTML, every shown string made hostile."""
    from resnets.train.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path_factory.mktemp("nasty") / NASTY["folder"]
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("best.pt", "*.html"))

    def config(data):
        data.update(name=NASTY["name"], data=NASTY["data"],
                    model_args={**data["model_args"], NASTY["model_args_key"]: 1})
        data["environment"]["platform"] = NASTY["platform"]

    def lesion(data):
        data["run"] = NASTY["lesion_run"]
        data["units"][0]["name"] = NASTY["lesion_unit"]

    def landscape(data):
        data["runs"][0]["name"] = NASTY["landscape_run"]

    _edit_json(run / "config.json", config)
    _edit_json(run / "summary.json", lambda data: data.update(model=NASTY["model"]))
    _edit_json(run / "lesion" / "lesion.json", lesion)
    _edit_json(run / "landscape" / "landscape.json", landscape)
    checkpoint = load_checkpoint(run / "checkpoints" / "last.pt")
    checkpoint["class_names"] = [NASTY["class"]] + checkpoint["classes"][1:]
    save_checkpoint(checkpoint, run / "checkpoints" / "last.pt")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, json.dumps({"split": NASTY["split"], "step": 1, "err": 50.0}))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run
