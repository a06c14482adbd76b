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
        export_torchvision(tmp_path / "m.pt", tmp_path / "tv.pt")
        theirs = getattr(torchvision.models, name)(num_classes=7).eval()
        theirs.load_state_dict(torch.load(tmp_path / "tv.pt", weights_only=True), strict=True)
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            assert torch.allclose(theirs(x), ours(x), atol=1e-5)
