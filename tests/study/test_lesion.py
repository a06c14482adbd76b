"""Lesion study (Veit et al. 2016): units removed from a network, checked against hand-built
networks that never had them."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnets.errors import UserError
from resnets.models import create_model
from resnets.models.resnet import ResNet
from resnets.study.lesioning import (lesion_model, random_subsets, recalibrated_bn, unit_table,
                                     units_removed)


def _images(n=8, channels=3, size=16, seed=0):
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _trained_looking(model: nn.Module, seed=0) -> nn.Module:
    """Random BN running statistics, so eval mode is not the identity BN of initialisation."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(0.1 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=generator))
    return model.eval()


def _small(unit, preact, shortcut="A", zero_init_last=False):
    torch.manual_seed(0)
    return ResNet(family="cifar", unit=unit, stage_depths=(2, 2, 2), width=4, shortcut=shortcut,
                  preact=preact, zero_init_last=zero_init_last)


KINDS = [("basic", False, "A"), ("basic", False, "B"), ("basic", True, "A"),
         ("bottleneck", False, "B"), ("bottleneck", True, "B")]


@pytest.mark.parametrize("unit, preact, shortcut", KINDS)
def test_removing_a_unit_whose_branch_is_zero_initialised_changes_no_output(unit, preact, shortcut):
    model = _trained_looking(_small(unit, preact, shortcut, zero_init_last=True))
    images = _images()
    with torch.no_grad():
        intact = model(images)
        for index in range(len(model.units)):  # the units that change shape too
            with units_removed(model, [index]):
                assert torch.equal(model(images), intact), index
        with units_removed(model, range(len(model.units))):
            assert torch.equal(model(images), intact)


def _without(state: dict, stage: int, position: int, depth: int) -> dict:
    """A state dict with unit layer{stage}.{position} dropped and its successors moved up."""
    out = {}
    for key, value in state.items():
        prefix = f"layer{stage}."
        if key.startswith(prefix):
            index, rest = key[len(prefix):].split(".", 1)
            if int(index) == position:
                continue
            if int(index) > position:
                key = f"{prefix}{int(index) - 1}.{rest}"
        out[key] = value
    return out


@pytest.mark.parametrize("kind, index, stage, position", [("resnet20", 4, 2, 1), ("resnet20", 8, 3, 2),
                                                          ("plain20", 1, 1, 1), ("plain20", 5, 2, 2)])
def test_removing_a_unit_gives_the_logits_of_a_model_built_without_it(kind, index, stage, position):
    torch.manual_seed(0)
    model = _trained_looking(create_model(kind))
    depths = [3, 3, 3]
    depths[stage - 1] -= 1
    hand_built = ResNet(family="cifar", unit="basic", stage_depths=depths, width=16,
                        shortcut="A" if kind.startswith("resnet") else "none")
    hand_built.load_state_dict(_without(model.state_dict(), stage, position, 3))
    hand_built.eval()
    images = _images(size=32)
    with torch.no_grad():
        expected = hand_built(images)
        intact = model(images)
        with units_removed(model, [index]):
            lesioned = model(images)
    assert torch.equal(lesioned, expected)
    assert not torch.allclose(intact, expected)


def test_removing_a_unit_that_changes_resolution_keeps_its_zero_padding_shortcut():
    torch.manual_seed(0)
    model = _trained_looking(create_model("resnet20"))
    images = _images(size=32)
    with torch.no_grad():
        x = model.forward_stem(images)
        x = model.layer1(x)
        x = F.relu(F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 16)))  # option A by hand: 16 -> 32 channels
        x = model.layer2[1:](x)
        expected = model.forward_head(model.layer3(x))
        with units_removed(model, [3]):
            lesioned = model(images)
    assert torch.equal(lesioned, expected)


def test_a_shape_changing_plain_unit_is_reported_as_not_removable():
    torch.manual_seed(0)
    plain = _trained_looking(create_model("plain20"))
    rows = unit_table(plain)
    assert [row["removable"] for row in rows] == [True] * 3 + [False] + [True] * 2 + [False] + [True] * 2
    assert [row["name"] for row in rows if not row["removable"]] == ["layer2.0", "layer3.0"]
    assert all(row["removable"] for row in unit_table(create_model("resnet20")))
    with pytest.raises(UserError, match="changes shape"):
        with units_removed(plain, [3]):
            pass
    with pytest.raises(ValueError, match="cannot be removed"):
        plain.units[6].forward_without_branch(_images(size=32))

    batches = [(_images(size=32), torch.arange(8))]
    result = lesion_model(plain, batches, subsets=3, max_removed=3)
    by_name = {row["name"]: row for row in result["units"]}
    assert by_name["layer2.0"]["err"] is None and by_name["layer3.0"]["err"] is None
    assert all(row["err"] is not None for row in result["units"] if row["removable"])
    assert [row["k"] for row in result["random"]] == [1, 2, 3]
    assert all(3 not in draw and 6 not in draw for row in result["random"] for draw in row["subsets"])


def test_units_removed_leaves_the_model_as_it_was_even_after_an_error():
    torch.manual_seed(0)
    model = _trained_looking(create_model("resnet20"))
    images = _images(size=32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        intact = model(images)
        with pytest.raises(RuntimeError, match="inside"):
            with units_removed(model, [0, 4, 8]):
                raise RuntimeError("inside")
        assert torch.equal(model(images), intact)
    assert all("forward" not in unit.__dict__ for unit in model.units)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(UserError, match="unit 9 does not exist"):
        with units_removed(model, [9]):
            pass


def test_units_are_named_as_the_lesion_table_names_them_and_non_integers_are_refused():
    """The lesion CSV names units "layer1.0"; units_removed takes those names (one, or a list
    mixed with indices) and refuses 1.5 (it used to remove unit 1 silently), True and "3"."""
    torch.manual_seed(0)
    model = _trained_looking(create_model("resnet20"))
    images = _images(size=32)
    names = [row["name"] for row in unit_table(model)]
    with torch.no_grad():
        with units_removed(model, [4]):
            by_index = model(images)
        with units_removed(model, names[4]):
            by_name = model(images)
        with units_removed(model, [names[4], 4]):  # the same unit twice is removed once
            both = model(images)
    assert torch.equal(by_index, by_name) and torch.equal(by_index, both)
    for bad, message in [([1.5], "must be an integer, got 1.5"), ([1.0], "got 1.0"),
                         ([True], "got True"), (["3"], "no unit named '3'"),
                         ("layer9.9", "no unit named 'layer9.9'")]:
        with pytest.raises(UserError, match=message):
            with units_removed(model, bad):
                pass
    assert all("forward" not in unit.__dict__ for unit in model.units)


def test_the_studies_refuse_non_integer_counts_and_seeds():
    from resnets.study.loss_landscape import axis, random_directions

    model = create_model("resnet20")
    with pytest.raises(UserError, match=r"subsets \(--subsets\) must be an integer, got 2.5"):
        random_subsets([0, 1, 2], 2.5, None, seed=0)
    with pytest.raises(UserError, match=r"seed \(--seed\) must be an integer, got 0.5"):
        random_directions(model, 1, 0.5)
    with pytest.raises(UserError, match=r"dims \(--dims\) must be an integer"):
        random_directions(model, 1.0, 0)
    with pytest.raises(UserError, match=r"points \(--points\) must be an integer, got 5.0"):
        axis(5.0, 1.0)


def test_random_subsets_are_distinct_seeded_and_all_of_them_where_few_exist():
    candidates = [0, 1, 2, 4, 5]
    plan = random_subsets(candidates, 4, None, seed=0)
    assert list(plan) == [1, 2, 3, 4, 5]
    for k, draws in plan.items():
        assert len(draws) == min(4, math.comb(5, k)) and len(set(draws)) == len(draws)
        assert all(len(d) == k and list(d) == sorted(d) and set(d) <= set(candidates) for d in draws)
    assert plan == random_subsets(candidates, 4, None, seed=0)
    assert random_subsets(list(range(20)), 4, 3, seed=0) != random_subsets(list(range(20)), 4, 3, seed=1)
    with pytest.raises(UserError, match=r"max_removed \(--max-removed\) must be between 1 and 5"):
        random_subsets(candidates, 4, 6, seed=0)
    with pytest.raises(UserError, match=r"must be between 1 and 5 \(the removable units\), got 0"):
        random_subsets(candidates, 4, 0, seed=0)
    with pytest.raises(UserError, match=r"subsets \(--subsets\) must be >= 1"):
        random_subsets(candidates, 0, None, seed=0)


def test_recalibrated_bn_uses_the_calibration_images_and_restores_the_trained_statistics():
    torch.manual_seed(0)
    model = _trained_looking(create_model("resnet20"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(_images(size=32, seed=s), torch.zeros(8, dtype=torch.long)) for s in range(3)]
    with recalibrated_bn(model, batches):
        assert not model.training
        with torch.no_grad():
            responses = torch.cat([model.conv1(images) for images, _ in batches])
        assert torch.allclose(model.bn1.running_mean, responses.mean(dim=(0, 2, 3)), atol=1e-5)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.bn1.momentum == 0.1


def test_lesion_command_writes_json_csv_and_plots(trained_runs, tmp_path, capsys):
    from resnets.cli import main

    out = tmp_path / "lesion"
    argv = ["lesion", str(trained_runs["plain"]), "--subsets", "2", "--images", "100",
            "--device", "cpu", "--progress", "none", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "no unit removed" in printed and "layer2.0   cannot be removed" in printed
    result = json.loads((out / "lesion.json").read_text())
    assert result["run"] == "plain8" and result["images"] == 100 and result["split"] == "test"
    assert result["recalibrate_bn"] is False and 0 <= result["baseline"]["err"] <= 100
    assert [row["removable"] for row in result["units"]] == [True, False, False]
    assert [row["k"] for row in result["random"]] == [1]
    units = list(csv.DictReader(open(out / "units.csv")))
    assert [row["name"] for row in units] == ["layer1.0", "layer2.0", "layer3.0"]
    assert units[1]["err"] == "" and float(units[0]["err"]) == result["units"][0]["err"]
    assert len(list(csv.DictReader(open(out / "random.csv")))) == 1
    for name in ("units.png", "random.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_lesion_of_a_residual_run_by_default_writes_beside_it_and_can_recalibrate(trained_runs, capsys):
    from resnets.cli import main

    run = trained_runs["resnet"]
    assert main(["lesion", str(run), "--subsets", "2", "--images", "50", "--device", "cpu",
                 "--progress", "none"]) == 0
    trained = json.loads((run / "lesion" / "lesion.json").read_text())
    assert [row["k"] for row in trained["random"]] == [1, 2, 3]
    assert all(row["removable"] for row in trained["units"])
    assert main(["lesion", str(run), "--subsets", "2", "--images", "50", "--recalibrate-bn",
                 "--calibration-images", "64", "--device", "cpu", "--progress", "none",
                 "--max-removed", "1"]) == 0
    recalibrated = json.loads((run / "lesion" / "lesion.json").read_text())
    assert recalibrated["recalibrate_bn"] is True and recalibrated["calibration_images"] == 64
    assert recalibrated["baseline"] != trained["baseline"]  # three steps of training: stats move a lot


def test_lesion_bad_input_is_one_line(trained_runs, tmp_path, capsys):
    from resnets.cli import main

    assert main(["lesion", str(tmp_path / "nowhere")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["lesion", str(trained_runs["plain"]), "--subsets", "0", "--device", "cpu",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--subsets: must be >= 1" in err
    assert main(["lesion", str(trained_runs["plain"]), "--max-removed", "2", "--device", "cpu",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--max-removed) must be between 1 and 1" in capsys.readouterr().err


def test_the_command_states_the_library_defaults(capsys):
    from resnets.cli import main
    from resnets.study.lesioning import DEFAULT_SUBSETS

    with pytest.raises(SystemExit):
        main(["lesion", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"per number removed (default: {DEFAULT_SUBSETS})" in help_text


def test_lesion_of_a_checkpoint_file_writes_beside_its_run(trained_runs, capsys):
    from resnets.cli import main

    run = trained_runs["plain"]
    assert main(["lesion", str(run / "checkpoints" / "last.pt"), "--subsets", "1", "--images", "20",
                 "--device", "cpu", "--progress", "none"]) == 0
    assert json.loads((run / "lesion" / "lesion.json").read_text())["run"] == "plain8"


def _copy_run(run, tmp_path):
    """A copy of a trained run without what other tests wrote into it (its lesion/)."""
    import shutil

    return shutil.copytree(run, tmp_path / run.name, ignore=shutil.ignore_patterns("lesion"))


def _counting_evaluations(monkeypatch, module, then=None):
    """Replace `module.evaluate` with a spy that counts the evaluations (and runs `then` at
    the first), so a test can tell whether a refusal came before the work."""
    calls = []
    real = module.evaluate

    def spy(*args, **kwargs):
        calls.append(1)
        if then is not None and len(calls) == 1:
            then()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "evaluate", spy)
    return calls


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("blocked", ["default out", "--out under a file"])
def test_lesion_refuses_an_output_folder_it_cannot_write_before_measuring(
        trained_runs, tmp_path, capsys, monkeypatch, blocked):
    # Tests run as root, whom permission bits do not stop: a file where the folder (or a
    # folder above it) must be makes the folder impossible to create for anyone.
    import resnets.study.lesioning as lesioning
    from resnets.cli import main

    run = _copy_run(trained_runs["resnet"], tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    if blocked == "default out":
        (run / "lesion").write_text("a file where RUN_DIR/lesion would go")
        options, named = [], run / "lesion"
    else:
        options, named = ["--out", str(tmp_path / "a-file" / "lesion")], tmp_path / "a-file"
    before = _listing(tmp_path)
    calls = _counting_evaluations(monkeypatch, lesioning)
    assert main(["lesion", str(run), "--device", "cpu", "--progress", "none", *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: cannot write in")
    assert f"{named} is a file, not a folder" in err
    assert calls == []  # refused before the first evaluation
    assert _listing(tmp_path) == before  # nothing written, nothing half-written


def test_a_lesion_whose_folder_goes_away_while_measuring_ends_in_one_line(
        trained_runs, tmp_path, capsys, monkeypatch):
    import shutil

    import resnets.study.lesioning as lesioning
    from resnets.cli import main

    run = _copy_run(trained_runs["resnet"], tmp_path)
    run_before = _listing(run)
    out = tmp_path / "out"

    def replace_folder_by_a_file():
        shutil.rmtree(out)
        out.write_text("the folder was replaced while the study ran")

    calls = _counting_evaluations(monkeypatch, lesioning, then=replace_folder_by_a_file)
    assert main(["lesion", str(run), "--device", "cpu", "--progress", "none", "--max-removed",
                 "1", "--subsets", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot write in {out}" in err and "Traceback" not in err
    assert len(calls) > 1 and out.is_file()  # the work ran; its end was refused in one line
    assert _listing(run) == run_before  # the run directory untouched
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]  # no half-written file


def test_a_lesion_study_too_large_to_finish_is_refused_naming_its_flags_before_any_work(
        monkeypatch):
    import resnets.study.lesioning as lesioning

    model = create_model("resnet110")  # 54 units: 500 subsets per k, about 25,000 evaluations
    calls = _counting_evaluations(monkeypatch, lesioning)
    with pytest.raises(UserError) as refused:
        lesion_model(model, [(_images(size=32), torch.zeros(8, dtype=torch.long))], subsets=500)
    message = str(refused.value)
    assert message.startswith("--subsets 500 up to --max-removed 54 (25,609 random subsets")
    assert "more than the 10,000 one command runs; use fewer --subsets" in message
    assert calls == []  # before the first evaluation
    with pytest.raises(UserError, match="evaluations, more than the 10,000"):
        random_subsets(list(range(600)), 50, None, seed=0)  # 30,000 draws: refused, not drawn


def test_a_lesion_study_says_its_evaluations_and_their_time_before_the_first(monkeypatch,
                                                                            capsys):
    import resnets.study.lesioning as lesioning

    model = _trained_looking(create_model("resnet8", num_classes=4, in_channels=1))
    seen_before_each = []
    real = lesioning.evaluate

    def spy(*args, **kwargs):
        seen_before_each.append(capsys.readouterr().err)
        return real(*args, **kwargs)

    monkeypatch.setattr(lesioning, "evaluate", spy)
    batches = [(_images(channels=1, size=8), torch.zeros(8, dtype=torch.long))]
    lesion_model(model, batches, subsets=1, progress="lines", title="lesion resnet8")
    first = seen_before_each[0]
    # 1 baseline + 3 units one at a time + 1 subset for each k in 1..3
    assert "lesion resnet8: 7 evaluations of 8 images, about 0:" in first
    assert "(from one timed batch)" in first
