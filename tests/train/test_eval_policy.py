"""The evaluation policy: which split is evaluated after which step, counted without training
(the pure functions), then seen in a run's metrics (the loop follows them)."""

import pytest

from resnets.errors import UserError
from resnets.train import fit, resolve_config
from resnets.train.eval_policy import count_evaluations, evaluation_point, splits_due
from resnets.train.metrics import read_metrics

from train_fakes import tiny_config

EVERY = {"val": "every", "test": "every"}


def test_evaluation_points_are_every_k_steps_and_the_last():
    points = [s for s in range(1, 11) if evaluation_point(s, total_steps=10, every=4)]
    assert points == [4, 8, 10]


def test_every_split_every_point_is_the_old_behaviour():
    assert count_evaluations(total_steps=420, every=28, policies=EVERY) == {"val": 15,
                                                                           "test": 15}


def test_test_at_the_end_is_evaluated_once_and_validation_at_every_point():
    policies = {"val": "every", "test": "end"}
    assert count_evaluations(total_steps=140, every=28, policies=policies) == {"val": 5,
                                                                              "test": 1}
    assert splits_due(140, total_steps=140, every=28, policies=policies) == ["val", "test"]
    assert splits_due(28, total_steps=140, every=28, policies=policies) == ["val"]
    assert splits_due(27, total_steps=140, every=28, policies=policies) == []


def test_both_at_the_end_evaluate_each_split_once():
    policies = {"val": "end", "test": "end"}
    assert count_evaluations(total_steps=140, every=28, policies=policies) == {"val": 1,
                                                                              "test": 1}
    assert splits_due(28, total_steps=140, every=28, policies=policies) == []


def test_a_split_the_dataset_lacks_is_never_evaluated():
    counts = count_evaluations(total_steps=12, every=4, policies=EVERY, available=["test"])
    assert counts == {"test": 3}


def test_a_resumed_run_counts_only_the_points_still_ahead():
    assert count_evaluations(total_steps=12, every=4, policies=EVERY, start_step=5) == {
        "val": 2, "test": 2}


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="'sometimes'"):
        splits_due(4, total_steps=4, every=4, policies={"val": "sometimes"})


def test_config_refuses_an_unknown_policy_in_one_line():
    with pytest.raises(UserError, match="eval_test must be one of every, end"):
        resolve_config("quick", overrides={"eval_test": "sometimes"})


def _evaluated_steps(run_dir):
    records = read_metrics(run_dir)
    return {split: [r["step"] for r in records if r["split"] == split]
            for split in ("val", "test")}


def test_fit_evaluates_test_once_at_the_end_when_told(tmp_path, fake_rooms):
    summary = fit(tiny_config(eval_test="end"), tmp_path / "run", progress="none")
    assert _evaluated_steps(tmp_path / "run") == {"val": [4, 8, 12], "test": [12]}
    assert summary["final"]["test_err"] is not None
    assert summary["best"]["split"] == "val"


def test_fit_with_both_at_the_end_still_checkpoints_at_every_point(tmp_path, fake_rooms,
                                                                   monkeypatch):
    from resnets.train.state import TrainState

    saved, real_save = [], TrainState.save
    monkeypatch.setattr(TrainState, "save", lambda state, path, *a, **k: (
        saved.append((path.name, state.step)), real_save(state, path, *a, **k))[-1])
    fit(tiny_config(eval_val="end", eval_test="end"), tmp_path / "run", progress="none")
    assert _evaluated_steps(tmp_path / "run") == {"val": [12], "test": [12]}
    assert [step for name, step in saved if name == "last.pt"] == [4, 8, 12]
    assert [step for name, step in saved if name == "best.pt"] == [12]


def test_an_interrupted_run_with_test_at_the_end_evaluates_it_once_resumed(
        tmp_path, fake_rooms, ctrl_c_after_step):
    config = tiny_config(eval_test="end")
    ctrl_c_after_step(9)  # after the points at 4 and 8, before the end
    with pytest.raises(KeyboardInterrupt):
        fit(config, tmp_path / "run", progress="none")
    assert _evaluated_steps(tmp_path / "run") == {"val": [4, 8], "test": []}
    fit(config, tmp_path / "run", resume=True, progress="none")
    assert _evaluated_steps(tmp_path / "run") == {"val": [4, 8, 12], "test": [12]}


def test_fit_default_evaluates_both_splits_at_every_point(tmp_path, fake_rooms):
    fit(tiny_config(), tmp_path / "run", progress="none")
    assert _evaluated_steps(tmp_path / "run") == {"val": [4, 8, 12], "test": [4, 8, 12]}


def test_the_policy_changes_what_is_evaluated_never_what_is_trained(tmp_path, fake_rooms):
    losses = {}
    for policy in ("every", "end"):
        fit(tiny_config(eval_val=policy, eval_test=policy), tmp_path / policy, progress="none")
        losses[policy] = [r["loss"] for r in read_metrics(tmp_path / policy)
                          if r["split"] == "train"]
    assert len(losses["every"]) == 12 and losses["end"] == losses["every"]
