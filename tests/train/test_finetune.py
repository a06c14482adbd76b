"""Fine-tuning from pretrained weights: the new classifier, frozen layers, the backbone's learning
rate, our checkpoints as weights, and eval/predict with torchvision's weights.

torchvision's resnet18 weights are stood in for by our own resnet18's state dict, put in the
test's torch hub cache under torchvision's file name, as a user without network would put the
real file (the download itself is tested in tests/models/test_weights.py)."""

import io
import json

import pytest
import torch
from PIL import Image

import resnets
from resnets.cli import main
from resnets.errors import UserError
from resnets.models import imagenet_classes
from resnets.train import fit, load_checkpoint, resolve_config
from resnets.train.finetune import freeze, param_groups
from resnets.train.loop import TrainingInterrupted
from resnets.train.metrics import read_metrics

from photo_trees import PHOTO_SIZES, photo, write_photo_tree
from train_fakes import TinyNet, tiny_config

STEM_AND_TWO = ("conv1.", "bn1.", "layer1.", "layer2.")
QUICK = ["--iters", "2", "--batch-size", "8", "--eval-batch-size", "8", "--crop-size", "64",
         "--workers", "0", "--device", "cpu", "--precision", "fp32", "--progress", "none"]


@pytest.fixture(scope="module")
def imagenet_resnet18():
    """A resnet18 state dict in torchvision's layout (our own random one) and its file bytes."""
    torch.manual_seed(0)
    state = resnets.create_model("resnet18").state_dict()
    for key, value in state.items():  # BN statistics unlike a fresh model's, to see them kept
        if key.endswith("running_mean"):
            value.uniform_(-0.1, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return {"state": state, "bytes": buffer.getvalue()}


@pytest.fixture
def hub(tmp_path, monkeypatch, imagenet_resnet18, published):
    """$TORCH_HOME with torchvision's resnet18 file in its hub cache (the release's name and
    hash made those of our file: a cached file is checked against the hash in its name)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    folder = tmp_path / "torch-home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    name = published("resnet18", imagenet_resnet18["bytes"])
    (folder / name).write_bytes(imagenet_resnet18["bytes"])
    return imagenet_resnet18["state"]


def _same(a, b) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def test_finetuning_replaces_the_head_freezes_bitwise_and_scales_the_backbone_lr(
        tmp_path, hub, photo_tree):
    argv = ["train", "--model", "resnet18", "--weights", "torchvision", "--data",
            f"folder:{photo_tree}", "--freeze", "layer2", *QUICK, "--out", str(tmp_path),
            "--name", "ft"]
    assert main(argv) == 0
    run = tmp_path / "ft"
    checkpoint = load_checkpoint(run)
    weights = checkpoint["model_state"]
    assert tuple(weights["fc.weight"].shape) == (2, 512)  # the folder's two classes
    assert checkpoint["classes"] == ["n01440764", "n02102040"]
    frozen = [k for k in hub if k.startswith(STEM_AND_TWO)]
    assert len(frozen) > 50 and all(_same(weights[k], hub[k]) for k in frozen)  # incl. BN statistics
    trained = [k for k in hub if k.startswith(("layer3.", "layer4.")) and "num_batches" not in k]
    assert all(not torch.equal(weights[k], hub[k]) for k in trained)
    # the finetune preset, chosen by --weights torchvision: gentle on the pretrained layers
    config = json.loads((run / "config.json").read_text())
    assert config["weights"] == "torchvision" and config["backbone_lr_scale"] == 0.1
    assert config["lr"] == 0.01 and config["augment"] == "random-resized"
    groups = checkpoint["optimizer_state"]["param_groups"]
    assert [g["name"] for g in groups] == ["backbone", "head"]
    last_lr = [r["lr"] for r in read_metrics(run) if r["split"] == "train"][-1]
    assert groups[1]["lr"] == pytest.approx(last_lr) and groups[1]["lr"] > 0
    assert groups[0]["lr"] == pytest.approx(0.1 * groups[1]["lr"])
    # the normalisation the weights were trained with, not one fitted on the folder
    mean = checkpoint["normalizer"]["mean"].flatten().tolist()
    assert checkpoint["normalizer"]["kind"] == "channel"
    assert mean == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])


def test_our_checkpoints_are_weights_too_across_class_counts(tmp_path, hub, photo_tree):
    first = ["train", "--model", "resnet18", "--weights", "torchvision", "--data",
             f"folder:{photo_tree}", *QUICK, "--out", str(tmp_path), "--name", "two"]
    assert main(first) == 0
    three = write_photo_tree(tmp_path / "three-classes", classes=("a", "b", "c"), sizes=PHOTO_SIZES[:3])
    best = tmp_path / "two" / "checkpoints" / "best.pt"
    second = ["train", "--model", "resnet18", "--weights", str(best), "--data", f"folder:{three}",
              "--freeze", "backbone", "--preset", "finetune", *QUICK, "--out", str(tmp_path),
              "--name", "three"]
    assert main(second) == 0
    before, after = load_checkpoint(best), load_checkpoint(tmp_path / "three")
    assert tuple(after["model_state"]["fc.weight"].shape) == (3, 512)
    body = [k for k in before["model_state"] if not k.startswith("fc.")]
    assert all(_same(after["model_state"][k], before["model_state"][k]) for k in body)
    assert torch.equal(after["normalizer"]["mean"], before["normalizer"]["mean"])
    assert after["config"]["weights"] == str(best)


def test_our_run_as_weights_trains_the_model_it_holds_unless_another_is_named(tmp_path,
                                                                              one_error_line,
                                                                              monkeypatch):
    tiny = ["--iters", "2", "--batch-size", "8", "--eval-batch-size", "250", "--workers", "0",
            "--device", "cpu", "--precision", "fp32", "--progress", "none", "--out",
            str(tmp_path)]
    assert main(["train", "--model", "resnet8", *tiny, "--name", "first"]) == 0
    first = tmp_path / "first"
    # No --model: the run's resnet8, not the preset's resnet14 (which the weights do not fit).
    assert main(["train", "--weights", str(first), "--freeze", "layer1", *tiny,
                 "--name", "second"]) == 0
    before, after = load_checkpoint(first), load_checkpoint(tmp_path / "second")
    assert after["model"] == "resnet8" and after["config"]["weights"] == str(first)
    frozen = [k for k in before["model_state"] if k.startswith(("conv1.", "bn1.", "layer1."))]
    assert frozen and all(_same(after["model_state"][k], before["model_state"][k])
                          for k in frozen)
    # The same rule in the library; a model named in a config file or overrides is kept.
    assert resolve_config("quick", overrides={"weights": str(first)}).model == "resnet8"
    assert resolve_config("quick", overrides={"weights": str(first),
                                              "model": "resnet14"}).model == "resnet14"
    (tmp_path / "preset named.toml").write_text('model = "resnet14"\n')
    monkeypatch.chdir(tmp_path)  # a file, whatever its name, is the user's choice
    assert resolve_config("quick", "preset named.toml",
                          {"weights": str(first)}).model == "resnet14"
    # A model named on the command line is the user's choice: refused, saying what fits.
    assert main(["train", "--weights", str(first), "--model", "resnet20", *tiny]) == 2
    assert "the weights are a resnet8's, they do not fit model 'resnet20' (use resnet8, e.g. " \
           "--model resnet8; missing keys" in one_error_line()
    # Freezing layers of a randomly initialised model is a mistake, not a fine-tune.
    assert main(["train", "--model", "resnet8", "--freeze", "backbone", *tiny]) == 2
    assert "freeze backbone keeps layers as the weights have them, but no weights are " \
           "given: add --weights" in one_error_line()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first", "preset named.toml", "second"]


def test_weights_that_do_not_fit_the_data_or_model_are_one_line(tmp_path, hub, photo_tree,
                                                                 one_error_line):
    assert main(["train", "--weights", "torchvision", "--model", "resnet20", "--data",
                 f"folder:{photo_tree}", *QUICK, "--out", str(tmp_path)]) == 2
    assert "torchvision publishes ImageNet weights for resnet18" in one_error_line()
    assert main(["train", "--model", "resnet18", "--weights", "torchvision", "--preset", "quick",
                 "--data", "bundled", *QUICK[:-6], "--out", str(tmp_path)]) == 2
    assert "take 3-channel images; bundled has 1-channel images" in one_error_line()
    assert main(["train", "--model", "resnet50", "--weights", "torchvision", "--model-args",
                 "bottleneck_stride=1x1", "--data", f"folder:{photo_tree}", *QUICK]) == 2
    assert "trained with bottleneck_stride='3x3'" in one_error_line()
    assert not (tmp_path / "runs").exists() and list(tmp_path.glob("resnet*")) == []


def test_freeze_names_what_a_model_lacks():
    with pytest.raises(UserError, match=r"freeze layer4: this model has 3 stages \(layer1, layer2, "
                                        r"layer3\); freeze at most layer3, or backbone"):
        freeze(resnets.create_model("resnet20"), "layer4")
    with pytest.raises(UserError, match=r"freeze stem: this model has no stem \(conv1, bn1\)"):
        freeze(TinyNet(), "stem")
    assert freeze(TinyNet(), "backbone") == ["conv", "bn", "act", "pool"]
    assert freeze(resnets.create_model("resnet20"), "layer1") == ["conv1", "bn1", "layer1"]


def test_frozen_batchnorm_keeps_its_statistics_in_training_mode():
    torch.manual_seed(0)
    model = resnets.create_model("resnet20")
    freeze(model, "stem")
    model.train()
    stem_mean = model.bn1.running_mean.clone()
    unit_mean = model.layer1[0].bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32) + 3)
    assert torch.equal(model.bn1.running_mean, stem_mean) and int(model.bn1.num_batches_tracked) == 0
    assert not torch.equal(model.layer1[0].bn1.running_mean, unit_mean)
    assert not model.conv1.weight.requires_grad and model.layer1[0].conv1.weight.requires_grad


def test_param_groups_leave_out_frozen_parameters_and_scale_the_backbone():
    model = resnets.create_model("resnet20")
    assert len(param_groups(model, 0.1)) == 1  # the plain optimizer, as before
    freeze(model, "layer1")
    backbone, head = param_groups(model, 0.1, 0.25)
    assert backbone["lr"] == pytest.approx(0.025) and backbone["lr_scale"] == 0.25
    assert head["lr"] == 0.1 and [id(p) for p in head["params"]] == [id(model.fc.weight), id(model.fc.bias)]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in backbone["params"]} == trainable - {id(model.fc.weight), id(model.fc.bias)}
    assert id(model.conv1.weight) not in trainable


def test_a_resumed_run_with_a_scaled_backbone_matches_an_uninterrupted_one(
        tmp_path, fake_rooms, ctrl_c_after_step):
    config = tiny_config(iters=10, precision="fp32", backbone_lr_scale=0.5)
    fit(config, tmp_path / "straight", progress="none")
    ctrl_c_after_step(5)
    with pytest.raises(TrainingInterrupted):
        fit(config, tmp_path / "resumed", progress="none")
    fit(config, tmp_path / "resumed", resume=True, progress="none")
    straight = load_checkpoint(tmp_path / "straight")
    resumed = load_checkpoint(tmp_path / "resumed")
    assert all(torch.equal(straight["model_state"][k], resumed["model_state"][k])
               for k in straight["model_state"])
    assert [g["lr"] for g in resumed["optimizer_state"]["param_groups"]] == \
        [g["lr"] for g in straight["optimizer_state"]["param_groups"]]


def test_freezing_the_backbone_of_a_fake_run_trains_only_the_head(tmp_path, fake_rooms):
    fit(tiny_config(iters=2), tmp_path / "first", progress="none")
    first = load_checkpoint(tmp_path / "first")["model_state"]
    fit(tiny_config(iters=3, weights=str(tmp_path / "first"), freeze="backbone"),
        tmp_path / "second", progress="none")
    second = load_checkpoint(tmp_path / "second")["model_state"]
    assert all(torch.equal(second[k], first[k]) for k in first if not k.startswith("fc."))
    assert not torch.equal(second["fc.weight"], first["fc.weight"])


def test_init_from_in_older_configs_reads_as_weights(tmp_path):
    assert resolve_config(overrides={"init_from": "runs/x", "epochs": 1}).weights == "runs/x"
    (tmp_path / "old.toml").write_text('[model]\ninit_from = "runs/y"\n[optim]\nepochs = 1\n')
    assert resolve_config(file=tmp_path / "old.toml").weights == "runs/y"
    assert resolve_config("finetune", overrides={"weights": "none"}).weights is None


# --------------------------------------------------------------- eval and predict with weights
def _expected_top(model, path, resize=256, crop=224):
    """torchvision's ImageClassification preset, written out: shorter side to `resize`
    (bilinear), centre `crop`, [0, 1], normalised with ImageNet's mean and std."""
    image = Image.open(path).convert("RGB")
    scale = resize / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.Resampling.BILINEAR)
    left, top = (image.width - crop) // 2, (image.height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(crop, crop, 3)
    x = x.permute(2, 0, 1).float().div(255)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(3, 1, 1)
    with torch.no_grad():
        probabilities = model.eval()(x[None]).softmax(1)[0]
    values, indices = probabilities.topk(5)
    from resnets import imagenet_wnids

    # as predict's text shows a class: its name, then its WordNet id ("tench (n01440764)")
    return [(f"{imagenet_classes()[i]} ({imagenet_wnids()[i]})", v)
            for v, i in zip(values.tolist(), indices.tolist())]


def test_predict_with_torchvision_weights_prints_the_top5_imagenet_classes(tmp_path, hub, capsys):
    path = tmp_path / "photo.jpg"
    photo(500, 375, seed=3).save(path, "JPEG", quality=95)
    assert main(["predict", "--model", "resnet18", "--weights", "torchvision", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(path) and len(lines) == 7 and lines[-1].startswith("(")  # what ran
    shown = [(line.rsplit(None, 1)[0].strip(), float(line.rsplit(None, 1)[1].rstrip("%")))
             for line in lines[1:-1]]
    expected = _expected_top(resnets.create_model("resnet18", weights="torchvision"), path)
    assert [name for name, _ in shown] == [name for name, _ in expected]
    assert [p for _, p in shown] == pytest.approx([100 * p for _, p in expected], abs=0.02)


def test_predict_and_eval_say_what_goes_with_weights(tmp_path, hub, capsys, one_error_line):
    assert main(["predict", "--weights", "torchvision", "x.jpg"]) == 2
    assert "--weights torchvision needs --model (resnet18" in one_error_line()
    assert main(["predict", "--model", "resnet18", "run", "x.jpg"]) == 2
    assert "--model resnet18 goes with --weights" in one_error_line()
    assert main(["eval", "--model", "resnet18", "--weights", "torchvision"]) == 2
    assert "give --data, e.g. folder:PATH" in one_error_line()
    assert main(["eval", "run", "--weights", "torchvision"]) == 2
    assert "give a checkpoint (run) or --weights torchvision, not both" in one_error_line()


def _imagenet_like(root):
    """train/ with 1,000 (empty) class folders, val/ with an image in two of them."""
    wnids = [f"n{k:08d}" for k in range(1000)]
    for wnid in wnids:
        (root / "train" / wnid).mkdir(parents=True)
    for k, wnid in enumerate(wnids[:2]):
        (root / "val" / wnid).mkdir(parents=True)
        photo(320, 280, seed=k).save(root / "val" / wnid / "a.JPEG", "JPEG", quality=90)
    return root


@pytest.mark.parametrize("crops", ["1", "10"])
def test_eval_with_torchvision_weights_on_an_imagenet_tree(tmp_path, hub, capsys, crops):
    root = _imagenet_like(tmp_path / "imagenet")
    assert main(["eval", "--model", "resnet18", "--weights", "torchvision", "--data",
                 f"folder:{root}", "--crops", crops, "--workers", "0"]) == 0
    out = capsys.readouterr().out.splitlines()
    crops_shown = ", 10 crops" if crops == "10" else ""
    assert out[0].startswith(f"resnet18 on folder:{root} test (2 images{crops_shown}): top-1 error ")
    assert out[2].startswith("tench ") and out[3].startswith("goldfish ")  # ImageNet's names
    assert len(out) == 2 + 1000


def test_eval_with_torchvision_weights_refuses_a_tree_of_other_classes(hub, photo_tree,
                                                                       one_error_line):
    assert main(["eval", "--model", "resnet18", "--weights", "torchvision", "--data",
                 f"folder:{photo_tree}", "--workers", "0"]) == 2
    assert "the weights predict 1,000 classes (" in one_error_line()


def test_predict_json_with_torchvision_weights_gives_the_imagenet_index_wnid_and_name(
        tmp_path, hub, photo_tree, capsys):
    from resnets import imagenet_wnids

    image = next((photo_tree / "val").rglob("*.JPEG"))
    assert main(["predict", "--model", "resnet18", "--weights", "torchvision", str(image),
                 "--top", "3", "--format", "json", "--device", "cpu"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    names, wnids = imagenet_classes(), imagenet_wnids()
    assert len(top) == 3 and all(0 <= row["index"] < 1000 for row in top)
    assert all(row["class"] == wnids[row["index"]] and row["name"] == names[row["index"]]
               for row in top)
    assert main(["predict", "--model", "resnet18", "--weights", "torchvision", str(image),
                 "--top", "2", "--format", "csv", "--device", "cpu"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "path,rank,index,class,name,probability"
    index, wnid = rows[1].split(",")[2:4]
    assert wnid == wnids[int(index)]
