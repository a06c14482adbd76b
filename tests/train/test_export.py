import pytest
import torch

from resnets.errors import UserError
from resnets.export import PixelsToLogits, export_onnx, export_torchvision
from resnets.train import fit
from resnets.train.inference import load_trained

from train_fakes import tiny_config


@pytest.fixture
def tiny_run(tmp_path, fake_rooms):
    fit(tiny_config(iters=3), tmp_path / "run", progress="none")
    return tmp_path / "run"


def test_onnx_export_matches_pytorch_in_onnxruntime(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    result = export_onnx(tiny_run / "checkpoints" / "last.pt", tmp_path / "model.onnx")
    assert result["max_abs_diff"] < 1e-3 and result["input_shape"] == [1, 8, 8]
    import onnx
    import onnxruntime

    model = onnx.load(str(tmp_path / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["resnets.model"] == "tiny" and "class3" in meta["resnets.classes"]
    # Independent check: a batch of 5 raw-pixel images through onnxruntime and through PyTorch.
    trained = load_trained(tiny_run)
    pixels = torch.randint(0, 256, (5, 1, 8, 8)).float()
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    (got,) = session.run(None, {"pixels": pixels.numpy()})
    with torch.no_grad():
        expected = PixelsToLogits(trained.model, trained.normalizer)(pixels)
    assert torch.allclose(torch.from_numpy(got), expected, atol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "run"]


def test_torchvision_export_refuses_models_torchvision_does_not_have(tiny_run, tmp_path):
    with pytest.raises(UserError, match="resnet18, resnet34.*'tiny'"):
        export_torchvision(tiny_run, tmp_path / "tv.pt")
    assert not (tmp_path / "tv.pt").exists()


def _imagenet_checkpoint(path, name, **model_args):
    from resnets.models import create_model
    from resnets.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **model_args).eval()
    kwargs = {"num_classes": 7, "in_channels": model_args.pop("in_channels", 3), **model_args}
    save_checkpoint({"model": name, "model_kwargs": kwargs, "model_state": model.state_dict()},
                    path)
    return model


def test_torchvision_export_is_the_state_dict_in_torchvision_names(tmp_path):
    model = _imagenet_checkpoint(tmp_path / "r18.pt", "resnet18")
    result = export_torchvision(tmp_path / "r18.pt", tmp_path / "tv.pt")
    state = torch.load(tmp_path / "tv.pt", weights_only=True)
    assert result["tensors"] == len(state) == 122  # torchvision's resnet18 state dict size
    assert state.keys() == model.state_dict().keys()
    assert state["fc.weight"].shape == (7, 512)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)


@pytest.mark.parametrize("name, model_args, words", [
    ("resnet50", {}, "bottleneck stride is on the 1x1"),
    ("resnet18", {"shortcut": "A"}, "shortcut='A'"),
    ("resnet18", {"in_channels": 1}, "3-channel images"),
])
def test_torchvision_export_refuses_architectures_torchvision_computes_differently(
        tmp_path, name, model_args, words):
    _imagenet_checkpoint(tmp_path / "m.pt", name, **model_args)
    with pytest.raises(UserError, match=words):
        export_torchvision(tmp_path / "m.pt", tmp_path / "tv.pt")


def test_torchvision_loads_the_export_strictly_and_computes_the_same(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    for name, args in (("resnet34", {}), ("resnet50", {"bottleneck_stride": "3x3"})):
        ours = _imagenet_checkpoint(tmp_path / "m.pt", name, **args)
        export_torchvision(tmp_path / "m.pt", tmp_path / "tv.pt", overwrite=True)
        theirs = getattr(torchvision.models, name)(num_classes=7).eval()
        theirs.load_state_dict(torch.load(tmp_path / "tv.pt", weights_only=True), strict=True)
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(theirs(x), ours(x), atol=1e-5)


def test_export_replaces_an_existing_file_only_with_force(tiny_run, tmp_path, capsys, one_error_line):
    from resnets.cli import main

    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    out.write_bytes(b"somebody's precious file")
    with pytest.raises(UserError, match=r"model.onnx exists: use --force"):
        export_onnx(tiny_run, out)
    assert main(["export", str(tiny_run), "--onnx", str(out)]) == 2
    assert f"{out} exists: use --force to replace it" in one_error_line()
    assert out.read_bytes() == b"somebody's precious file"
    assert main(["export", str(tiny_run), "--onnx", str(out), "--force"]) == 0
    assert out.read_bytes() != b"somebody's precious file" and "onnxruntime matches" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "run"]  # no temporary left


def test_torchvision_export_replaces_an_existing_file_only_with_overwrite(tmp_path):
    _imagenet_checkpoint(tmp_path / "r18.pt", "resnet18")
    (tmp_path / "tv.pt").write_bytes(b"keep me")
    with pytest.raises(UserError, match="tv.pt exists"):
        export_torchvision(tmp_path / "r18.pt", tmp_path / "tv.pt")
    assert (tmp_path / "tv.pt").read_bytes() == b"keep me"
    export_torchvision(tmp_path / "r18.pt", tmp_path / "tv.pt", overwrite=True)
    assert len(torch.load(tmp_path / "tv.pt", weights_only=True)) == 122


@pytest.mark.parametrize("target, words", [
    ("last.pt", "is the checkpoint being exported"),
    ("best.pt", "is in a run's checkpoint folder: export never replaces a file there, even with --force"),
    ("notes.txt", "is in a run's checkpoint folder"),
])
@pytest.mark.parametrize("kind", ["--onnx", "--torchvision"])
def test_export_never_replaces_a_file_in_a_runs_checkpoint_folder(tiny_run, target, words, kind, one_error_line):
    from resnets.cli import main

    (tiny_run / "checkpoints" / "notes.txt").write_text("the run's own notes")
    before = {p.name: p.read_bytes() for p in (tiny_run / "checkpoints").iterdir()}
    out = tiny_run / "checkpoints" / target
    assert main(["export", str(tiny_run), kind, str(out), "--force"]) == 2
    assert words in one_error_line()
    assert {p.name: p.read_bytes() for p in (tiny_run / "checkpoints").iterdir()} == before


def test_export_onto_a_folder_is_one_line(tiny_run, tmp_path, one_error_line):
    from resnets.cli import main

    assert main(["export", str(tiny_run), "--onnx", str(tmp_path)]) == 2
    assert f"{tmp_path} is a folder: expected a file name" in one_error_line()
    assert main(["export", str(tiny_run), "--onnx", str(tmp_path / "a.onnx"), "--torchvision",
                 str(tmp_path / "a.onnx")]) == 2
    assert "give two file names" in one_error_line()


def _slow_work_fails(monkeypatch):
    """Make loading and exporting fail loudly: the destination must be refused before them."""
    import resnets.export
    import resnets.train.inference

    def slow(*args, **kwargs):
        raise AssertionError("the slow export work started before the destination was checked")

    monkeypatch.setattr(resnets.train.inference, "load_trained", slow)
    monkeypatch.setattr(resnets.export, "_onnx_export", slow)


def test_unwritable_destination_is_refused_before_the_slow_work(tiny_run, tmp_path, monkeypatch, one_error_line):
    from resnets.cli import main

    _slow_work_fails(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["export", str(tiny_run), "--onnx", str(blocker / "sub" / "m.onnx")]) == 2
    err = one_error_line()
    assert f"cannot write in {blocker / 'sub'} ({blocker} is a file, not a folder)" in err


def test_read_only_destination_is_named_with_its_cause(tiny_run, tmp_path, monkeypatch, refuse_writes_in,
                                                      one_error_line):
    import errno

    from resnets.cli import main

    _slow_work_fails(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    refuse_writes_in(locked, errno.EACCES)
    assert main(["export", str(tiny_run), "--onnx", str(locked / "m.onnx")]) == 2
    assert f"cannot write in {locked} (Permission denied)" in one_error_line()
    assert list(locked.iterdir()) == []
