"""resnets.train.sgd.SGD: torch.optim.SGD's update and state dict, without TorchDynamo."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from resnets.models import create_model
from resnets.train.sgd import SGD


def _twins():
    torch.manual_seed(0)
    a = create_model("resnet8", in_channels=1, num_classes=10)
    b = create_model("resnet8", in_channels=1, num_classes=10)
    b.load_state_dict(a.state_dict())
    return a, b


def _groups(model, lr):
    """Two groups at different learning rates, and the stem left out (frozen)."""
    body = [p for n, p in model.named_parameters() if not n.startswith(("fc.", "conv1", "bn1"))]
    head = [p for n, p in model.named_parameters() if n.startswith("fc.")]
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith(("conv1", "bn1")))
    return [{"params": body, "lr": lr * 0.1}, {"params": head, "lr": lr}]


def _step(model, optimizer, seed):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(8, 1, 12, 12, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(images), labels).backward()
    optimizer.step()


@pytest.mark.parametrize("momentum, weight_decay, nesterov", [
    (0.9, 5e-4, True), (0.9, 1e-4, False), (0.0, 1e-4, False), (0.9, 0.0, True)])
def test_the_update_is_torch_sgds_bit_for_bit(momentum, weight_decay, nesterov):
    """Same operations in the same order as torch.optim.SGD, so the weights after several
    steps are equal, not close: a run's numbers do not change with the optimizer class."""
    a, b = _twins()
    settings = dict(momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    theirs = torch.optim.SGD(_groups(a, 0.1), lr=0.1, **settings)
    ours = SGD(_groups(b, 0.1), lr=0.1, **settings)
    for seed in range(4):
        _step(a, theirs, seed)
        _step(b, ours, seed)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    assert not any(n.startswith("conv1") for n, p in b.named_parameters()
                   if p.grad is not None)  # the frozen stem took no gradient


def test_state_dicts_load_both_ways_so_older_checkpoints_resume():
    """A checkpoint written with torch.optim.SGD (every run before this class) resumes with
    it, and torch's SGD loads what it writes; training then goes on bit-exactly."""
    a, b = _twins()
    settings = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    theirs, ours = torch.optim.SGD(a.parameters(), **settings), SGD(b.parameters(), **settings)
    for seed in range(2):
        _step(a, theirs, seed)
        _step(b, ours, seed)
    assert ours.state_dict()["param_groups"] == theirs.state_dict()["param_groups"]
    swapped_ours, swapped_theirs = SGD(b.parameters(), **settings), torch.optim.SGD(a.parameters(), **settings)
    swapped_ours.load_state_dict(theirs.state_dict())
    swapped_theirs.load_state_dict(ours.state_dict())
    for seed in range(2, 4):
        _step(a, swapped_theirs, seed)
        _step(b, swapped_ours, seed)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_a_state_dict_for_other_groups_is_refused():
    a, _ = _twins()
    ours = SGD(a.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="other parameter groups"):
        ours.load_state_dict({"state": {}, "param_groups": [{"params": [0, 1]}]})
    with pytest.raises(ValueError, match="Nesterov"):
        SGD(a.parameters(), lr=0.1, nesterov=True)


def test_training_imports_no_torchdynamo():
    """What the class is for: every torch.optim optimizer imports TorchDynamo when made, about
    1 s of a 2-core CPU in every process that trains; a step with this one imports none."""
    code = ("import sys, torch\n"
            "from resnets.models import create_model\n"
            "from resnets.train.sgd import SGD\n"
            "m = create_model('resnet8', in_channels=1, num_classes=10)\n"
            "o = SGD(m.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)\n"
            "m(torch.randn(2, 1, 12, 12)).sum().backward(); o.step(); o.zero_grad()\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_short_training_run_imports_no_torchdynamo(tmp_path):
    """A whole `resnets train` too short to compile (the quickstart's kind) never imports
    TorchDynamo: not for the optimizer, the memory check, or asking whether it could compile;
    nor SymPy (which torch's meta-device operators import: the memory check uses none)."""
    code = ("import sys\n"
            "from resnets.cli import main\n"
            f"code = main(['train', '--model', 'resnet8', '--iters', '3', '--batch-size', '16', "
            f"'--device', 'cpu', '--progress', 'none', '--out', {str(tmp_path)!r}])\n"
            "print(code, 'torch._dynamo' in sys.modules, 'sympy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path)
    assert out.stdout.split()[-3:] == ["0", "False", "False"], out.stdout + out.stderr
