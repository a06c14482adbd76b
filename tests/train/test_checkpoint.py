import pathlib
import pickle

import pytest
import torch

from resnets.errors import UserError
from resnets.train import checkpoint as ckpt
from resnets.train.checkpoint import load_checkpoint, save_checkpoint


def _state(value: float) -> dict:
    return {"model": "tiny", "step": 3, "model_state": {"w": torch.full((2, 2), value)},
            "rng": ckpt.rng_state(), "classes": ["a", "b"], "config": {"run": {"seed": 0}}}


def test_round_trip_loads_with_weights_only(tmp_path):
    path = save_checkpoint(_state(1.5), tmp_path / "checkpoints" / "last.pt")
    state = load_checkpoint(path)
    assert state["format"] == "resnets-checkpoint" and state["step"] == 3
    assert torch.equal(state["model_state"]["w"], torch.full((2, 2), 1.5))
    assert load_checkpoint(tmp_path)["step"] == 3  # a run directory means its last.pt


def test_rng_state_round_trip_replays_random_numbers():
    torch.manual_seed(7)
    saved = ckpt.rng_state()
    expected = torch.rand(5)
    torch.rand(100)
    ckpt.set_rng_state(saved)
    assert torch.equal(torch.rand(5), expected)


def test_write_interrupted_midway_leaves_previous_checkpoint_loadable(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(_state(1.0), path)

    def torn_save(obj, f):  # writes half a file, then the process "dies"
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(2.0), path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model_state"]["w"], torch.full((2, 2), 1.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary left behind


class _Payload:
    """Unpickling this would create `marker`: the code a crafted checkpoint hides."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_checkpoint_crafted_to_run_code_is_refused_and_code_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "resnets-checkpoint", "version": 1, "x": _Payload(marker)}, path)
    with pytest.raises(UserError, match="refused to load") as refused:
        load_checkpoint(path)
    assert not marker.exists()
    message = str(refused.value)  # names what it held; never torch's advice to load it anyway
    assert "other than plain data" in message and "e.g. " in message, message  # e.g. getattr
    assert "weights_only" not in message and "\n" not in message
    # A bare pickle (not a torch zip) is refused the same way.
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    with pytest.raises(UserError):
        load_checkpoint(path)
    assert not marker.exists()


def test_files_that_are_not_our_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a resnets checkpoint"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    with pytest.raises(UserError, match="not a resnets checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(UserError, match="without checkpoints/last.pt"):
        load_checkpoint(tmp_path)


def test_a_meter_saved_before_step_loss_sum_counts_its_processes_losses_once():
    """A checkpoint written before "step_loss_sum" held the processes' own loss sums: two
    processes' losses 2.0 and 4.0 at one step are one step of mean loss 3.0."""
    from resnets.train.state import Meter

    old = {"loss_sum": 6.0, "correct": 3, "steps": 1, "images": 32, "seconds": 0.5}
    meter = Meter.from_state_dict(old, torch.device("cpu"), world_size=2)
    assert meter.loss_sum.item() / meter.steps == 3.0
    again = Meter.from_state_dict(meter.state_dict(), torch.device("cpu"), world_size=1)
    assert again.loss_sum.item() == 3.0
