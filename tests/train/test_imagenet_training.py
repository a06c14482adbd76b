"""The paper's ImageNet half, end to end on a small generated tree of photos: the presets, `train
--preset paper-imagenet`, `eval --crops 1|10`, 10-crop testing checked by hand, exact resume,
unreadable files, and what the loop asks of the data room."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from photo_trees import write_photo_tree
from resnets.cli import main
from resnets.errors import UserError
from resnets.train import load_checkpoint, resolve_config
from train_fakes import FakeLoader, TinyNet, tiny_config


# Small models below are resnet18 at width 16, not 8: torch 2.13's CPU backward of a 1x1
# stride-2 convolution over 8 channels_last channels crashes (SIGSEGV) on odd batch sizes, which
# a skipped image makes.


def _run(argv):
    return main([*argv, "--device", "cpu", "--progress", "none"])


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory):
    """`resnets train --preset paper-imagenet --model resnet18` for 2 steps of batch 4 at 224."""
    tmp = tmp_path_factory.mktemp("imagenet")
    tree = write_photo_tree(tmp / "tree")
    (tree / "classes.txt").write_text("n01440764 tench, Tinca tinca\nn02102040 English springer\n")
    assert _run(["train", "--preset", "paper-imagenet", "--model", "resnet18", "--data", f"folder:{tree}",
                 "--iters", "2", "--batch-size", "4", "--out", str(tmp / "runs"), "--name", "r"]) == 0
    return tmp / "runs" / "r"


def test_paper_imagenet_trains_end_to_end(imagenet_run):
    summary = json.loads((imagenet_run / "summary.json").read_text())
    assert summary["model"] == "resnet18" and summary["steps"] == 2 and summary["skipped_images"] == 0
    assert 0 <= summary["final"]["test_err"] <= 100 and summary["best"]["split"] == "test"  # val_fraction 0
    state = load_checkpoint(imagenet_run)
    assert state["input_size"] == [3, 224, 224] and state["model_kwargs"]["num_classes"] == 2
    assert state["classes"] == ["n01440764", "n02102040"]
    assert state["class_names"] == ["tench, Tinca tinca", "English springer"]
    config = state["config"]
    assert (config["augment"], config["normalize"], config["lighting"], config["batch_size"]) == \
        ("paper", "pixel_mean", 0.1, 4)
    assert state["normalizer"]["mean"].shape == (3, 224, 224)  # per-pixel mean of 224 centre crops


@pytest.mark.parametrize("crops", [1, 10])
def test_eval_with_one_or_ten_crops(imagenet_run, crops, capsys):
    assert main(["eval", str(imagenet_run), "--device", "cpu", "--crops", str(crops)]) == 0
    out = capsys.readouterr().out.splitlines()
    shown = "4 images" if crops == 1 else "4 images, 10 crops"
    assert out[0].startswith("resnet18 on folder:") and f"test ({shown}): top-1 error " in out[0]
    assert out[2].startswith("tench, Tinca tinca (n01440764)") and len(out) == 4


def test_eval_takes_another_resize_size(imagenet_run):
    from resnets.train.inference import evaluate_checkpoint, load_trained

    trained = load_trained(imagenet_run)
    at_256 = evaluate_checkpoint(trained, workers=0)
    at_232 = evaluate_checkpoint(trained, resize_size=232, workers=0)
    assert at_256["n"] == at_232["n"] == 4 and at_256["loss"] != at_232["loss"]


def test_eval_with_a_resize_size_that_cannot_fit_is_refused_before_any_batch(imagenet_run,
                                                                             capsys,
                                                                             monkeypatch):
    import resnets.train.inference as inference

    batches = []
    monkeypatch.setattr(inference, "evaluate", lambda *a, **k: batches.append(a))
    # 10^7 pixels a side: 3 * 10^14 bytes per decoded image, on any machine of this project
    assert main(["eval", str(imagenet_run), "--device", "cpu", "--resize-size", "10000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "decoding the images needs about" in err
    assert err.rstrip().endswith("use a smaller --resize-size or --batch-size")
    assert batches == []


def test_predict_resizes_as_evaluation_does_and_shows_class_names(imagenet_run, capsys):
    tree = imagenet_run.parent.parent / "tree"
    assert main(["predict", str(imagenet_run), str(tree / "val" / "n01440764" / "n01440764_0.JPEG")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "(n01440764)" in out[1] or "(n01440764)" in out[2]


@pytest.mark.parametrize("form", ["json", "csv"])
def test_predict_json_and_csv_carry_the_index_the_wordnet_id_and_the_name_apart(imagenet_run,
                                                                                capsys, form):
    import csv

    tree = imagenet_run.parent.parent / "tree"
    image = str(tree / "val" / "n01440764" / "n01440764_0.JPEG")
    assert main(["predict", str(imagenet_run), image, "--top", "2", "--format", form]) == 0
    out = capsys.readouterr().out
    if form == "json":
        top = json.loads(out)[0]["top"]
    else:
        table = list(csv.DictReader(out.splitlines()))
        top = [{**row, "index": int(row["index"])} for row in table]
    expected = {0: ("n01440764", "tench, Tinca tinca"), 1: ("n02102040", "English springer")}
    assert sorted(row["index"] for row in top) == [0, 1]
    assert all((row["class"], row["name"]) == expected[row["index"]] for row in top)


def test_ten_crop_evaluation_is_the_mean_of_the_ten_crops_softmax(photo_tree):
    from resnets.data import Loader, Normalizer, load
    from resnets.data.views import corner_offsets, resized_size
    from resnets.train.steps import class_scores, evaluate

    # 224 crops of a 256 resize: these photos (375 to 500 pixels) are decoded at full size, as
    # by hand below (a resize to a half or less would use the decoder's reduced size).
    test = load(f"folder:{photo_tree}", "test", augment="paper")
    normalizer = Normalizer.fit("channel", test)
    torch.manual_seed(0)
    model = TinyNet(num_classes=2, in_channels=3).eval()
    loader = Loader(test, 3, shuffle=False, normalizer=normalizer, crops=10, drop_last=False, workers=0)
    by_hand = []
    for path in test.files:
        with Image.open(path) as image:
            resized = image.convert("RGB").resize(resized_size(*image.size, 256), Image.Resampling.BILINEAR)
        crops = [resized.crop((x, y, x + 224, y + 224)) for x, y in corner_offsets(*resized.size, 224)]
        crops += [crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for crop in crops]
        pixels = torch.stack([torch.from_numpy(np.array(crop)).permute(2, 0, 1).float()
                              for crop in crops])  # (10, 3, 224, 224)
        with torch.no_grad():
            by_hand.append(model(normalizer(pixels)).softmax(dim=1).mean(dim=0))  # (2,)
    by_hand = torch.stack(by_hand)  # (4, 2)
    with torch.no_grad():
        got = torch.cat([class_scores(model, images).exp() for images, _ in loader])
    assert torch.allclose(got, by_hand, atol=1e-5)
    result = evaluate(model, loader, num_classes=2)
    labels = test.labels
    expected_loss = -by_hand[torch.arange(4), labels].log().mean()
    assert result["loss"] == pytest.approx(float(expected_loss), abs=1e-5)
    assert result["err"] == pytest.approx(100 * float((by_hand.argmax(1) != labels).float().mean()))


def test_resume_on_image_folders_matches_an_uninterrupted_run(photo_tree, tmp_path, ctrl_c_after_step):
    from resnets.train import TrainingInterrupted, fit
    from resnets.train.metrics import read_metrics

    config = resolve_config("paper-imagenet", overrides={
        "model": "resnet18", "model_args": {"width": 16}, "data": f"folder:{photo_tree}",
        "crop_size": 64, "iters": 6,
        "batch_size": 4, "log_every": 1, "eval_every": 6, "device": "cpu", "precision": "fp32",
        "workers": 1})
    fit(config, tmp_path / "straight", progress="none")
    ctrl_c_after_step(2)
    with pytest.raises(TrainingInterrupted):
        fit(config, tmp_path / "resumed", progress="none")
    fit(config.replace(workers=2), tmp_path / "resumed", resume=True, progress="none")  # workers may change
    losses = {run: [r["loss"] for r in read_metrics(tmp_path / run) if r["split"] == "train"]
              for run in ("straight", "resumed")}
    assert len(losses["straight"]) == 6 and losses["resumed"] == losses["straight"]


def test_an_unreadable_file_stops_training_with_its_name_or_is_skipped(photo_tree, tmp_path, capsys):
    bad = photo_tree / "train" / "n02102040" / "n02102040_3.JPEG"
    bad.write_bytes(bad.read_bytes()[:2000])
    argv = ["train", "--preset", "paper-imagenet", "--model", "resnet18", "--data", f"folder:{photo_tree}",
            "--model-args", "width=16", "--crop-size", "64", "--iters", "4", "--batch-size", "4",
            "--out", str(tmp_path)]
    assert _run([*argv, "--name", "stops"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "n02102040_3.JPEG" in err and "--skip-bad-images" in err
    assert main([*argv, "--name", "skips", "--skip-bad-images", "--device", "cpu", "--progress", "lines"]) == 0
    summary = json.loads((tmp_path / "skips" / "summary.json").read_text())
    assert summary["skipped_images"] == 1 and summary["steps"] == 4
    shown = capsys.readouterr()
    assert "skipped images" in shown.out  # a row of the final table
    assert "warning: skipped 1 unreadable image (e.g. cannot read image " in shown.out + shown.err


def test_the_loop_passes_the_augmentation_to_the_training_loader_only(tmp_path, fake_rooms):
    from resnets.train import fit

    FakeLoader.made.clear()
    fit(tiny_config(augment="random-resized", lighting=0.2, workers=3), tmp_path / "run", progress="none")
    train, *evaluation = FakeLoader.made
    assert (train["shuffle"], train["augment"], train["lighting"], train["workers"]) == \
        (True, "random-resized", 0.2, 3)
    assert evaluation and all("augment" not in e and e["workers"] == 3 and not e["flip"] for e in evaluation)


def test_the_imagenet_presets():
    paper = resolve_config("paper-imagenet")
    assert (paper.batch_size, paper.lr, paper.momentum, paper.wd, paper.iters) == (256, 0.1, 0.9, 1e-4, 600000)
    assert paper.schedule == "step" and paper.milestones == [150000, 300000, 450000] and paper.gamma == 0.1
    assert (paper.augment, paper.crop_size, paper.resize_size, paper.lighting) == ("paper", 224, 256, 0.1)
    assert paper.normalize == "pixel_mean"
    torchvision = resolve_config("torchvision-imagenet")
    assert torchvision.epochs == 90 and torchvision.milestone_epochs == [30, 60]
    assert (torchvision.augment, torchvision.normalize, torchvision.lighting) == ("random-resized", "channel", 0)
    assert torchvision.lr == 0.1 and torchvision.lr_reference_batch == 256


def test_lr_scales_with_the_batch_and_milestones_may_be_epochs():
    from resnets.train.schedule import schedule_from_config

    config = resolve_config("torchvision-imagenet", overrides={"batch_size": 32})
    lr = schedule_from_config(config, total_steps=900, steps_per_epoch=10)
    assert lr(0) == pytest.approx(0.1 * 32 / 256)  # 0.0125
    assert lr(299) == pytest.approx(0.0125) and lr(300) == pytest.approx(0.00125)  # epoch 30
    assert lr(600) == pytest.approx(0.000125)
    with pytest.raises(UserError, match="give milestones .* or milestone_epochs, not both"):
        config.replace(milestones=[5])


def test_views_only_for_models_trained_on_them():
    from pathlib import Path

    from resnets.train.inference import Trained, evaluate_checkpoint

    trained = Trained(model=None, normalizer=None, classes=["a", "b"], input_size=[1, 28, 28],
                      config=resolve_config("quick"), checkpoint={}, path=Path("x"),
                      device=torch.device("cpu"))
    with pytest.raises(UserError, match="--crops 10 cuts views from images of any size: it applies to models "
                                        "trained with --augment paper or random-resized"):
        evaluate_checkpoint(trained, crops=10)
    from resnets.train.parts import load_dataset

    with pytest.raises(UserError, match="augment 'paper' cuts crops from image files of any size"):
        load_dataset(resolve_config("paper-imagenet", overrides={"data": "bundled"}), "train")
