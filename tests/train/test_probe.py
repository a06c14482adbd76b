"""Precision "auto" follows a measurement of the machine, given here (no test times anything):
bf16 where it was faster, fp32 where not; the measurement is cached per CPU model, flags and
torch version, so another CPU or torch measures again; a corrupt cache file is measured again;
a run records the choice and its reason, and its resume keeps the precision it started with."""

import json

import pytest
import torch

import resnets.train.loop as loop
import resnets.train.probe as probe
from resnets.train import fit, load_checkpoint
from resnets.train.loop import TrainingInterrupted

from train_fakes import tiny_config

CPU = torch.device("cpu")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty cache folder and no results remembered in this process; `measured` counts
    the probes run and returns what `times` holds."""
    monkeypatch.setattr(probe, "cache_root", lambda: tmp_path / "cache")
    monkeypatch.setattr(probe, "_memo", {})
    state = {"times": {"fp32": 1.0, "bf16": 0.7}, "calls": 0}

    def measure(device):
        state["calls"] += 1
        return dict(state["times"])

    monkeypatch.setattr(probe, "measure_training", measure)
    return state


@pytest.mark.parametrize("times, expected", [
    ({"fp32": 1.0, "bf16": 0.7}, "bf16"),     # an AVX-512 BF16 EPYC: 1.4x
    ({"fp32": 1.0, "bf16": 0.5}, "bf16"),     # AMX: 2x
    ({"fp32": 1.0, "bf16": 1.1}, "fp32"),     # AVX-512 without BF16: 10% slower
    ({"fp32": 1.0, "bf16": 7.0}, "fp32"),     # AVX2: emulated
    ({"fp32": 1.0, "bf16": 0.99}, "fp32"),    # within MIN_GAIN: the more exact arithmetic
])
def test_auto_picks_bf16_where_it_was_measured_faster_and_fp32_where_not(fresh_cache, times,
                                                                          expected):
    fresh_cache["times"] = times
    precision, why = probe.training_precision("auto", CPU)
    assert precision == expected
    assert f"{times['fp32'] / times['bf16']:.2f}x fp32" in why
    assert probe.training_precision("fp32", CPU) == ("fp32", "as set")  # forcible either way
    assert probe.training_precision("bf16", CPU) == ("bf16", "as set")


def test_the_measurement_is_cached_and_written_atomically_as_json(fresh_cache):
    assert probe.training_precision("auto", CPU)[0] == "bf16" and fresh_cache["calls"] == 1
    probe._memo.clear()  # a new process
    assert probe.training_precision("auto", CPU)[0] == "bf16" and fresh_cache["calls"] == 1
    (path,) = (probe.cache_root() / "probes").iterdir()
    record = json.loads(path.read_text())
    assert record["key"] == probe.machine_key(CPU) and record["result"] == {"fp32": 1.0,
                                                                            "bf16": 0.7}


@pytest.mark.parametrize("change", ["cpu", "flags", "torch"])
def test_another_cpu_or_torch_version_measures_again(fresh_cache, monkeypatch, change):
    before = probe.machine_key(CPU)
    probe.training_precision("auto", CPU)
    if change == "cpu":
        monkeypatch.setattr(probe, "cpu_model", lambda: "Intel(R) Xeon(R) Platinum 8480+")
    elif change == "flags":
        monkeypatch.setattr(probe, "cpu_flags", lambda: {"avx2", "fma"})
    else:
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    after = probe.machine_key(CPU)
    assert after != before and probe.cache_path("train", after) != probe.cache_path("train", before)
    fresh_cache["times"] = {"fp32": 1.0, "bf16": 3.0}  # the other machine: bf16 slower
    assert probe.training_precision("auto", CPU)[0] == "fp32" and fresh_cache["calls"] == 2


@pytest.mark.parametrize("content", ["", "{not json", '{"key": 1}', "[1, 2]",
                                     '{"key": KEY, "result": {"fp32": "fast"}}'])
def test_a_corrupt_cache_file_is_measured_again_not_a_crash(fresh_cache, content):
    path = probe.cache_path("train", probe.machine_key(CPU))
    path.parent.mkdir(parents=True)
    path.write_text(content.replace("KEY", json.dumps(probe.machine_key(CPU))))
    assert probe.training_precision("auto", CPU)[0] == "bf16" and fresh_cache["calls"] == 1
    assert json.loads(path.read_text())["result"] == {"fp32": 1.0, "bf16": 0.7}  # replaced


def test_an_unwritable_cache_only_means_measuring_again(fresh_cache, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(probe, "cache_root", lambda: blocker)
    assert probe.training_precision("auto", CPU)[0] == "bf16"


def test_a_run_records_the_measured_precision_and_its_resume_keeps_it(
        tmp_path, fake_rooms, fresh_cache, ctrl_c_after_step, monkeypatch):
    fresh_cache["times"] = {"fp32": 1.0, "bf16": 0.7}
    ctrl_c_after_step(2)
    with pytest.raises(TrainingInterrupted):
        fit(tiny_config(iters=6, precision="auto"), tmp_path / "run", progress="none")
    environment = json.loads((tmp_path / "run" / "config.json").read_text())["environment"]
    assert environment["precision"] == "bf16"
    assert environment["precision_reason"] == "measured 1.43x fp32 on this CPU"
    assert load_checkpoint(tmp_path / "run")["precision"] == "bf16"
    # resumed where bf16 now measures slower (another machine, or the cache deleted)
    probe._memo.clear()
    for path in (probe.cache_root() / "probes").iterdir():
        path.unlink()
    fresh_cache["times"] = {"fp32": 1.0, "bf16": 2.0}
    used = []
    real_step = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda *a, **k: used.append(k["precision"])
                        or real_step(*a, **k))
    fit(tiny_config(iters=6, precision="auto"), tmp_path / "run", resume=True, progress="none")
    assert used and set(used) == {"bf16"}


def test_a_measurement_on_a_busy_machine_is_used_but_not_kept(fresh_cache, monkeypatch):
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    assert probe.training_precision("auto", CPU)[0] == "bf16"
    assert not probe.cache_path("train", probe.machine_key(CPU)).exists()


def _fake_steps(seconds_per_image):
    """A `step(precision, batch)` taking `seconds_per_image[precision] * batch` "seconds"
    (returned, not slept), and the (precision, batch) of every call."""
    calls = []

    def step(precision, batch):
        calls.append((precision, batch))
        return seconds_per_image[precision] * batch

    return step, calls


@pytest.mark.parametrize("per_image, expected", [
    ({"fp32": 1.0, "bf16": 13.0}, "fp32"),   # AVX2: bf16 has no kernels (0.07-0.10x measured)
    ({"fp32": 1.0, "bf16": 0.25}, "bf16"),   # a GPU-like 4x the other way
])
def test_a_lopsided_screen_decides_without_the_full_size_steps(per_image, expected):
    step, calls = _fake_steps(per_image)
    times = probe.probe_precisions(step)
    assert {batch for _, batch in calls} == {probe.SCREEN_BATCH}  # no step at PROBE_BATCH
    assert len(calls) == 4  # one untimed and one timed step of each precision
    assert times["batch"] == probe.SCREEN_BATCH
    assert probe.choose_precision(times)[0] == expected


@pytest.mark.parametrize("per_image, expected", [
    ({"fp32": 1.0, "bf16": 0.7}, "bf16"),    # an AVX-512 BF16 EPYC: 1.4x
    ({"fp32": 1.0, "bf16": 1.1}, "fp32"),    # AVX-512 without BF16
    ({"fp32": 1.0, "bf16": 2.9}, "fp32"),    # just under DECISIVE: measured in full
])
def test_a_close_screen_measures_at_the_full_batch_and_keeps_the_fastest_step(per_image,
                                                                              expected):
    step, calls = _fake_steps(per_image)
    times = probe.probe_precisions(step)
    full = [call for call in calls if call[1] == probe.PROBE_BATCH]
    assert len(full) == 2 * (probe.PROBE_ROUNDS + 1)  # interleaved, one untimed round
    assert [precision for precision, _ in full[:2]] == ["fp32", "bf16"]
    assert times == {"fp32": per_image["fp32"] * probe.PROBE_BATCH,
                     "bf16": per_image["bf16"] * probe.PROBE_BATCH, "batch": probe.PROBE_BATCH}
    assert probe.choose_precision(times)[0] == expected


def test_the_full_probe_keeps_the_least_disturbed_step():
    timed = iter([1.0, 1.0, 1.0, 1.0,              # the screen: untimed, then timed (close)
                  50.0, 50.0,                      # the untimed round at full size: ignored
                  9.0, 8.0, 7.0, 12.0, 8.0, 6.0])  # three rounds: fp32 7, bf16 6 at best
    times = probe.probe_precisions(lambda precision, batch: next(timed))
    assert times == {"fp32": 7.0, "bf16": 6.0, "batch": probe.PROBE_BATCH}
