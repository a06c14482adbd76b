"""Diagnostics: gradient flow, layer responses and distance from the identity."""

import torch
import torch.nn.functional as F

from resnets.models import create_model
from resnets.study.diagnostics import (
    first_last_ratio,
    gradient_norms,
    identity_distances,
    response_stds,
    weighted_layers,
)


def _batch(seed=0, n=32, size=16):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def test_gradient_norms_equal_a_direct_autograd_computation():
    torch.manual_seed(0)
    model = create_model("resnet20")
    images, labels = _batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = gradient_norms(model, images, labels)

    reference = create_model("resnet20")
    reference.load_state_dict(before)
    reference.train()
    weights = [module.weight for _, module in weighted_layers(reference)]
    grads = torch.autograd.grad(F.cross_entropy(reference(images), labels), weights)
    assert list(norms) == [name for name, _ in weighted_layers(reference)]
    assert list(norms)[0] == "conv1" and list(norms)[-1] == "fc" and len(norms) == 20
    for value, grad in zip(norms.values(), grads):
        assert abs(value - grad.norm().item()) <= 1e-5 * max(1.0, grad.norm().item())
    # the measurement leaves BN statistics and gradients as they were
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_gradient_imbalance_grows_with_depth_far_faster_in_plain_nets():
    images, labels = _batch(n=16, size=16)
    ratios = {}
    for name in ("plain20", "plain56", "resnet20", "resnet56"):
        torch.manual_seed(0)
        ratios[name] = first_last_ratio(gradient_norms(create_model(name), images, labels))
    plain_growth = ratios["plain56"] / ratios["plain20"]
    residual_growth = ratios["resnet56"] / ratios["resnet20"]
    assert ratios["plain56"] > 10 * ratios["resnet56"]
    assert plain_growth > 10 * residual_growth


def test_response_stds_one_per_bn_on_the_main_path():
    torch.manual_seed(0)
    model = create_model("resnet20")
    stds = response_stds(model, _batch()[0])
    assert len(stds) == 19  # stem BN + 2 per unit x 9 units
    assert all(value > 0 for value in stds.values())
    assert model.training  # mode restored


def test_identity_distance_is_zero_for_zero_initialised_units_and_empty_for_plain():
    images = _batch()[0]
    torch.manual_seed(0)
    assert identity_distances(create_model("resnet20", zero_init_last=True), images) == [0.0] * 9
    distances = identity_distances(create_model("resnet20"), images)
    assert len(distances) == 9 and all(d > 0 for d in distances)
    assert identity_distances(create_model("plain20"), images) == []


def test_diagnose_command_writes_json_of_the_documented_schema_and_plots(tmp_path, capsys):
    import json

    from resnets.cli import main

    out = tmp_path / "diag"
    assert main(["diagnose", "plain8", "resnet8", "--steps", "2", "--batch-size", "16", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "plain8" in printed and "resnet8" in printed
    result = json.loads((out / "diagnosis.json").read_text())
    assert {"steps", "batch_size", "lr", "seed", "data", "models"} <= set(result)
    assert result["steps"] == 2 and list(result["models"]) == ["plain8", "resnet8"]
    for name, row in result["models"].items():
        assert row["depth"] == 8 and row["residual"] == (name == "resnet8")
        assert len(row["layers"]) == 8 and row["layers"][0] == "conv1" and row["layers"][-1] == "fc"
        for stage in ("init", "trained"):
            measured = row[stage]
            assert len(measured["grad_norm"]) == 8 and all(v > 0 for v in measured["grad_norm"])
            assert measured["first_last_ratio"] == measured["grad_norm"][0] / measured["grad_norm"][-2]
            assert len(measured["response_std"]) == 7  # stem BN + 2 per unit x 3 units
            assert len(measured["identity_distance"]) == (3 if row["residual"] else 0)
        assert len(row["trained"]["losses"]) == 2
    for name in ("grad_norms.png", "response_std.png", "identity.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000


def test_diagnose_bad_input_is_one_line(capsys):
    from resnets.cli import main

    assert main(["diagnose", "resnet9"]) == 2
    assert "9 is not: the nearest valid depths are 8 and 14" in capsys.readouterr().err
    assert main(["diagnose", "resnut56"]) == 2
    assert "unknown model 'resnut56'; closest: resnet56" in capsys.readouterr().err
    assert main(["diagnose", "resnet8", "--steps", "-1"]) == 2
    assert "argument --steps: must be >= 0" in capsys.readouterr().err


def test_a_batch_larger_than_the_training_set_is_refused_not_a_hang(capsys):
    from resnets.cli import main

    # Used to spin at 100% CPU for ever: every epoch drew zero full batches.
    assert main(["diagnose", "plain8", "--steps", "1", "--batch-size", "3601"]) == 2
    assert "larger than the training set (3600 images)" in capsys.readouterr().err
    assert main(["diagnose", "plain8", "--lr", "-1"]) == 2
    assert "argument --lr: must be a finite number > 0" in capsys.readouterr().err


def test_diagnose_measures_with_the_threads_asked_for(monkeypatch, capsys):
    from resnets.cli import main
    from resnets.study import diagnostics

    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    seen = []
    real_measure = diagnostics.measure

    def measure(*args):
        seen.append(torch.get_num_threads())
        return real_measure(*args)

    monkeypatch.setattr(diagnostics, "measure", measure)
    diagnostics.diagnose(["resnet8"], steps=0, batch_size=16, threads=threads)
    assert seen == [threads, threads] and torch.get_num_threads() == before
    assert main(["diagnose", "resnet8", "--threads", "0"]) == 2
    assert "--threads: must be >= 1, got 0" in capsys.readouterr().err
