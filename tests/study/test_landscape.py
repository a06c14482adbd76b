"""Loss landscapes (Li et al. 2018): filter-normalised directions, the grid, resuming a scan."""

import json

import pytest
import torch

from resnets.errors import UserError
from resnets.models import create_model
from resnets.study import loss_landscape
from resnets.study.loss_landscape import (LandscapeInterrupted, axis, filter_normalized, grid,
                                          landscape, perturbed_parameters, random_directions,
                                          scan)
from resnets.study.trained import evaluate, fixed_batches, load_run


def _batches(n=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 3, 16, 16, generator=generator), torch.randint(0, 10, (n,), generator=generator))]


def _model(name="resnet20"):
    torch.manual_seed(0)
    return create_model(name).eval()


def test_a_direction_is_filter_normalised():
    model = _model()
    (direction,) = random_directions(model, 1, seed=0)
    named = perturbed_parameters(model)
    assert [name for name, _ in named][0] == "conv1.weight" and named[-1][0] == "fc.weight"
    assert len(direction) == len(named) == 20  # 19 convs and fc: BN parameters and biases get none
    for (name, weight), d in zip(named, direction):
        assert d.shape == weight.shape
        filter_norms = d.flatten(1).norm(dim=1)
        assert torch.allclose(filter_norms, weight.detach().flatten(1).norm(dim=1), rtol=1e-5), name
    gaussian = torch.randn(4, 3, 3, 3)
    weight = torch.randn(4, 3, 3, 3) * torch.tensor([0.1, 1.0, 10.0, 0.0]).view(4, 1, 1, 1)
    normalized = filter_normalized(gaussian, weight)
    assert torch.allclose(normalized.flatten(1).norm(dim=1), weight.flatten(1).norm(dim=1), atol=1e-6)
    # direction kept, only the length changed
    assert torch.allclose(torch.cosine_similarity(normalized[0].flatten(), gaussian[0].flatten(), dim=0),
                          torch.tensor(1.0))


def test_the_same_seed_gives_the_same_directions():
    model = _model()
    first, second = random_directions(model, 2, seed=7), random_directions(model, 2, seed=7)
    assert all(torch.equal(a, b) for d1, d2 in zip(first, second) for a, b in zip(d1, d2))
    (one,) = random_directions(model, 1, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(one, first[0]))  # the 1-D direction is the first
    other = random_directions(model, 1, seed=8)[0]
    assert not torch.equal(other[0], one[0])
    assert not torch.equal(first[0][0], first[1][0])


def test_the_grid_is_odd_and_passes_through_the_trained_weights_exactly():
    assert axis(5, 1.0) == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert axis(21, 0.7)[10] == 0.0
    assert [key for key, _ in grid(2, 3, 1.0)][:4] == ["0,0", "1,0", "2,0", "0,1"]
    assert grid(2, 3, 1.0)[4] == ("1,1", (0.0, 0.0))
    with pytest.raises(UserError, match="points must be odd"):
        axis(4, 1.0)
    with pytest.raises(UserError, match="span must be > 0"):
        axis(3, 0.0)


def test_landscape_at_the_origin_equals_the_models_own_loss():
    model, batches = _model(), _batches()
    own = evaluate(model, batches)
    results = scan(model, batches, random_directions(model, 2, seed=0), grid(2, 3, 0.5))
    assert results["1,1"] == {"loss": own["loss"], "err": own["err"]}
    assert results["0,0"]["loss"] != own["loss"]


def test_a_scan_moves_only_conv_and_linear_weights_and_restores_them_exactly():
    model, batches = _model(), _batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moved = {name for name, _ in perturbed_parameters(model)}
    seen = []

    def check(key, record):
        state = model.state_dict()
        changed = {k for k in before if not torch.equal(state[k], before[k])}
        seen.append(key)
        assert changed == (set() if key == "1" else moved), key

    scan(model, batches, random_directions(model, 1, seed=0), grid(1, 3, 1.0), on_point=check)
    assert seen == ["0", "1", "2"]
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_landscape_of_a_run_at_the_origin_equals_its_loss_on_the_same_images(trained_runs):
    result = landscape([trained_runs["resnet"]], dims=1, points=3, images=64, seed=3)
    run = load_run(trained_runs["resnet"])
    own = evaluate(run.model, fixed_batches(run, "train", images=64, seed=3, batch_size=500))
    assert result["runs"][0]["origin"] == {"loss": own["loss"], "err": own["err"]}
    assert result["runs"][0]["loss"][1] == own["loss"] and result["images"] == 64


def test_an_interrupted_2d_scan_resumes_without_recomputing_finished_points(trained_runs, tmp_path,
                                                                            monkeypatch):
    real_evaluate = loss_landscape.evaluate
    calls = []

    def counting(model, batches, precision="fp32"):
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C while the 5th point is computed
        calls.append(1)
        return real_evaluate(model, batches, precision)

    options = dict(dims=2, points=3, images=32, out_dir=tmp_path / "scan")
    monkeypatch.setattr(loss_landscape, "evaluate", counting)
    with pytest.raises(LandscapeInterrupted, match="4/9 points of resnet8 saved"):
        landscape([trained_runs["resnet"]], **options)
    saved = json.loads((tmp_path / "scan" / "points" / "resnet8.json").read_text())
    assert sorted(saved["points"]) == ["0,0", "0,1", "1,0", "2,0"]

    calls.clear()
    monkeypatch.setattr(loss_landscape, "evaluate", lambda *a: calls.append(1) or real_evaluate(*a))
    resumed = landscape([trained_runs["resnet"]], **options)
    assert len(calls) == 9 - 4
    monkeypatch.setattr(loss_landscape, "evaluate", real_evaluate)
    straight = landscape([trained_runs["resnet"]], dims=2, points=3, images=32)
    assert resumed["runs"][0]["loss"] == straight["runs"][0]["loss"]
    assert resumed["runs"][0]["err"] == straight["runs"][0]["err"]

    calls.clear()
    monkeypatch.setattr(loss_landscape, "evaluate", lambda *a: calls.append(1) or real_evaluate(*a))
    landscape([trained_runs["resnet"]], **options)  # finished: nothing to recompute
    assert calls == []


def test_a_rerun_with_other_settings_is_refused(trained_runs, tmp_path):
    landscape([trained_runs["plain"]], dims=1, points=3, images=16, out_dir=tmp_path)
    with pytest.raises(UserError, match="other settings \\(points 3 -> 5\\)"):
        landscape([trained_runs["plain"]], dims=1, points=5, images=16, out_dir=tmp_path)


def test_landscape_command_writes_curves_contours_and_json(trained_runs, tmp_path, capsys):
    from resnets.cli import main

    runs = [str(trained_runs["resnet"]), str(trained_runs["plain"])]
    common = ["--images", "32", "--device", "cpu", "--progress", "none"]
    assert main(["landscape", *runs, "--points", "5", "--out", str(tmp_path / "one"), *common]) == 0
    assert main(["landscape", *runs, "--dims", "2", "--points", "3", "--span", "0.5",
                 "--out", str(tmp_path / "two"), *common]) == 0
    printed = capsys.readouterr().out
    assert "resnet8" in printed and "plain8" in printed
    one = json.loads((tmp_path / "one" / "landscape.json").read_text())
    assert one["dims"] == 1 and one["axis"] == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert [run["name"] for run in one["runs"]] == ["resnet8", "plain8"]
    assert all(len(run["loss"]) == 5 and len(run["err"]) == 5 for run in one["runs"])
    two = json.loads((tmp_path / "two" / "landscape.json").read_text())
    assert two["span"] == 0.5 and all(len(run["loss"]) == 3 and len(run["loss"][0]) == 3 for run in two["runs"])
    for run in two["runs"]:
        assert run["loss"][1][1] == run["origin"]["loss"]
    for path in (tmp_path / "one" / "landscape_1d.png", tmp_path / "two" / "landscape_2d.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "two" / "points").iterdir()) == ["plain8.json", "resnet8.json"]


def test_landscape_ctrl_c_and_bad_input_from_the_command_line(trained_runs, tmp_path, monkeypatch, capsys):
    from resnets.cli import main

    def interrupt(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(loss_landscape, "evaluate", interrupt)
    argv = ["landscape", str(trained_runs["plain"]), "--points", "3", "--images", "16",
            "--device", "cpu", "--progress", "none", "--out", str(tmp_path)]
    assert main(argv) == 130
    assert "run the same command again to resume" in capsys.readouterr().err
    assert main(argv[:2] + ["--points", "4", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--points: must be odd" in err
    assert main(["landscape", str(tmp_path / "nowhere")]) == 2


def test_the_command_states_the_library_defaults(capsys):
    from resnets.cli import main
    from resnets.study.loss_landscape import DEFAULT_IMAGES, DEFAULT_POINTS, DEFAULT_SPAN

    with pytest.raises(SystemExit):
        main(["landscape", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_POINTS[1]} for 1-D, {DEFAULT_POINTS[2]} for 2-D)" in help_text
    assert f"images of the split (default: {DEFAULT_IMAGES})" in help_text
    assert f"[-span, span] per direction (default: {DEFAULT_SPAN})" in help_text


def test_landscape_refuses_an_output_folder_it_cannot_write_before_the_first_point(
        trained_runs, tmp_path, capsys, monkeypatch):
    # Root ignores permission bits: a file where the folder must go stops anyone.
    import resnets.study.loss_landscape as loss_landscape
    from resnets.cli import main

    (tmp_path / "a-file").write_text("not a folder")
    calls = []
    real = loss_landscape.evaluate
    monkeypatch.setattr(loss_landscape, "evaluate",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["landscape", str(trained_runs["resnet"]), "--device", "cpu", "--progress",
                 "none", "--points", "3", "--out", str(tmp_path / "a-file" / "scan")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'a-file'} is a file, not a folder" in err
    assert calls == []  # before the first grid point
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("points, dims, shown", [("100001", "2", "10,000,200,001 evaluations"),
                                                  ("10001", "1", "10,001 evaluations")])
def test_a_grid_too_large_to_finish_is_refused_naming_points_before_any_work(
        trained_runs, tmp_path, capsys, monkeypatch, points, dims, shown):
    import resnets.study.loss_landscape as loss_landscape
    from resnets.cli import main

    calls = []
    real = loss_landscape.evaluate
    monkeypatch.setattr(loss_landscape, "evaluate",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert main(["landscape", str(trained_runs["resnet"]), "--device", "cpu", "--points", points,
                 "--dims", dims, "--out", str(tmp_path / "scan")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--points {points} with --dims {dims}" in err
    assert shown in err and "choose fewer --points (at most " in err
    assert calls == [] and not (tmp_path / "scan").exists()  # before any work or write


def test_the_number_of_evaluations_is_shown_before_the_first_and_the_estimate_after_it(
        trained_runs, tmp_path, capsys, monkeypatch):
    import resnets.study.loss_landscape as loss_landscape
    from resnets.cli import main

    seen_before_each = []
    real = loss_landscape.evaluate

    def spy(*args, **kwargs):
        seen_before_each.append(capsys.readouterr().err)
        return real(*args, **kwargs)

    monkeypatch.setattr(loss_landscape, "evaluate", spy)
    assert main(["landscape", str(trained_runs["resnet"]), "--device", "cpu", "--points", "5",
                 "--images", "16", "--progress", "lines", "--out", str(tmp_path / "scan")]) == 0
    assert "landscape resnet8: 5 evaluations of 16 images, about 0:" in seen_before_each[0]
    assert "(from one timed batch)" in seen_before_each[0]
    assert "landscape resnet8: 1/5 (" in seen_before_each[1] and " left)" in seen_before_each[1]
