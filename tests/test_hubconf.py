"""hubconf.py: torch.hub finds every registered model in this checkout, builds it as
create_model does, and answers an unknown name with its usual error."""

from pathlib import Path

import pytest
import torch

from resnets import create_model, list_models

ROOT = Path(__file__).resolve().parents[1]


def _shapes(model):
    return {name: tuple(value.shape) for name, value in model.state_dict().items()}


def test_hub_resnet20_is_create_models_resnet20():
    model = torch.hub.load(str(ROOT), "resnet20", source="local")
    assert type(model) is type(create_model("resnet20"))
    assert _shapes(model) == _shapes(create_model("resnet20"))


def test_hub_entries_take_the_builders_arguments():
    model = torch.hub.load(str(ROOT), "cifar_plain", source="local", depth=14, num_classes=7)
    assert _shapes(model) == _shapes(create_model("cifar_plain", depth=14, num_classes=7))


def test_hub_weights_pass_through_to_create_model(monkeypatch):
    import resnets.models.create as create  # create_model's own name for the weights' builder

    asked = []
    monkeypatch.setattr(create, "create_pretrained",
                        lambda name, source, **kw: asked.append((name, source, kw)) or "model")
    assert torch.hub.load(str(ROOT), "resnet50", source="local", weights="torchvision") == "model"
    assert asked == [("resnet50", "torchvision", {})]


def test_every_registered_model_is_a_hub_entry():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ["torch"]
    entries = [name for name in dir(hubconf)
               if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert sorted(entries) == sorted(list_models())


def test_an_unknown_hub_entry_is_torch_hubs_usual_error():
    with pytest.raises(RuntimeError, match="Cannot find callable resnet21 in hubconf"):
        torch.hub.load(str(ROOT), "resnet21", source="local")
