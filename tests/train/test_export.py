import pytest
import torch

import resnets.train.loop as loop
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
