"""Choices made by measuring this machine: the training precision, and the probes' cache.

Precision "auto" used to be a CPU-flag rule measured on one machine (bf16 only with AMX: on an
Intel Xeon with AVX-512 but without BF16 it trained 10% slower), and it was wrong on others: on
a 2-core AMD EPYC with AVX-512 BF16 and no AMX, bf16 trains 1.35-1.55x and evaluates 2.9x
faster than fp32 (benchmarks/RESULTS.md). So "auto" on a CPU asks the machine itself:

- `measure_training(device)`: timed forward+backward steps of resnet20 (3x32x32,
  channels_last) in fp32 and under bf16 autocast (`probe_precisions`): first one step of each
  at the small `SCREEN_BATCH`, and where one precision is `DECISIVE` times faster than the other
  there, that is the answer (on an AVX2 CPU bf16 has no kernels of its own and runs 0.07x
  fp32: 3.5 s a step at batch 128, so the full probe cost 16 s of a first run, the screen
  about 1 s); else a few steps of each at `PROBE_BATCH`, interleaved, the fastest step of each
  kept (the least disturbed by other work); a few seconds;
- `choose_precision(times)`: bf16 where it was at least `MIN_GAIN` times faster, else fp32
  (within a few percent fp32 wins: it is the more exact arithmetic);
- `cached(kind, key, measure)`: a probe's result kept in `cache_root()/probes/KIND-DIGEST.json`,
  keyed by `machine_key` (CPU model, CPU flags, torch version, device kind: another CPU or
  another torch measures again), written atomically; a file that cannot be read or does not
  hold a result of the expected form is measured again, never a crash; a cache that cannot be
  written only means measuring again next time; a result measured while the machine was busy
  (load above its core count, before or after) is used but not kept.

On CUDA the rule stays (bf16 where the GPU computes it natively, from compute capability 8);
MPS trains in fp32. Inference measures its own precision and engine: resnets.train.engine.
The choice and its reason are what a run's first progress line says and its config records;
a resumed run keeps the precision it started with (resnets.train.loop).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch

from resnets.atomic import write_json
from resnets.train.device import (autocast, cpu_flags, cpu_model, cuda_has_native_bf16,
                                  machine_busy_warning)

PROBE_VERSION = 1    # bump when a probe measures something else: old results are then ignored
PROBE_BATCH = 128    # images per probe training step (the quick preset's batch)
PROBE_ROUNDS = 3     # timed steps per precision, after one untimed
SCREEN_BATCH = 16    # images per screening step: an eighth of a probe step's
DECISIVE = 3.0       # a screen this lopsided decides: the full probe could not turn it round
MIN_GAIN = 1.05      # bf16 must be at least this much faster than fp32 to be chosen
_memo: dict[str, Any] = {}  # results read or measured in this process, by file name


def cache_root() -> Path:
    """~/.cache/resnets, or $XDG_CACHE_HOME/resnets: the folder whose torch-compile/ holds the
    compile cache (resnets.train.compile.default_cache_dir, the one owner of that rule)."""
    from resnets.train.compile import default_cache_dir

    return default_cache_dir().parent


def machine_key(device: torch.device, **extra: Any) -> dict[str, Any]:
    """What a measured choice depends on: the device kind, and on a CPU its model and flags;
    the torch version; the probe's version; `extra` (e.g. onnxruntime's version)."""
    key: dict[str, Any] = {"probe": PROBE_VERSION, "device": device.type,
                           "torch": torch.__version__}
    if device.type == "cpu":
        key.update(cpu=cpu_model(), flags=sorted(cpu_flags()))
    elif device.type == "cuda":
        key.update(gpu=torch.cuda.get_device_name(device))
    return {**key, **extra}


def cache_path(kind: str, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "probes" / f"{kind}-{digest}.json"


def cached(kind: str, key: dict[str, Any], measure: Callable[[], dict],
           valid: Callable[[Any], bool]) -> dict:
    """The result `measure()` gave on this machine (`key`), read from the cache or measured
    now and written there. A cached result is used only when its file holds the same key and
    `valid(result)` holds; otherwise (a corrupt, truncated or foreign file) it is measured
    again and the file replaced."""
    path = cache_path(kind, key)
    if str(path) in _memo:
        return _memo[str(path)]
    result = None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict) and record.get("key") == key and valid(record.get("result")):
            result = record["result"]
    except (OSError, ValueError):  # missing, unreadable, not JSON
        pass
    if result is None:
        # timings of a busy machine are not kept, even when the load is a study's own workers
        busy = machine_busy_warning(siblings=False) is not None
        result = measure()
        busy = busy or machine_busy_warning(siblings=False) is not None
        try:
            if not busy:
                write_json(path, {"key": key, "result": result, "measured":
                                  time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        except OSError:  # a read-only home: measured again next time
            pass
    _memo[str(path)] = result
    return result


def measure_training(device: torch.device) -> dict[str, float | int]:
    """`probe_precisions` on forward+backward steps of resnet20 (3x32x32, channels_last) in
    fp32 and in bf16 autocast."""
    from resnets.models import create_model

    generator = torch.Generator().manual_seed(0)
    model = create_model("resnet20", num_classes=10).to(device, memory_format=torch.channels_last)
    images = torch.randn(PROBE_BATCH, 3, 32, 32, generator=generator).to(
        device, memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (PROBE_BATCH,), generator=generator).to(device)

    def step(precision: str, batch: int) -> float:
        start = time.perf_counter()
        with autocast(device, precision):
            loss = torch.nn.functional.cross_entropy(model(images[:batch]), labels[:batch])
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    return probe_precisions(step)


def probe_precisions(step: Callable[[str, int], float]) -> dict[str, float | int]:
    """Seconds of a training step in fp32 and in bf16, and the batch they were measured at:
    `step(precision, batch)` runs one step and returns its seconds.

    A screen first: one untimed step of each at `SCREEN_BATCH` (it allocates and picks
    kernels), then one timed; where one precision was at least `DECISIVE` times faster, those
    times are the result. Otherwise `PROBE_ROUNDS` timed steps of each at `PROBE_BATCH` after
    an untimed one, interleaved, the fastest of each kept."""
    precisions = ("fp32", "bf16")
    for precision in precisions:
        step(precision, SCREEN_BATCH)
    screen = {precision: step(precision, SCREEN_BATCH) for precision in precisions}
    ratio = screen["fp32"] / max(screen["bf16"], 1e-9)
    if ratio >= DECISIVE or ratio * DECISIVE <= 1:
        return {**screen, "batch": SCREEN_BATCH}
    best = {precision: float("inf") for precision in precisions}
    for round_ in range(PROBE_ROUNDS + 1):
        for precision in precisions:
            seconds = step(precision, PROBE_BATCH)
            if round_ > 0:  # the first round at this batch allocates and picks kernels
                best[precision] = min(best[precision], seconds)
    return {**best, "batch": PROBE_BATCH}


def _valid_times(result: Any) -> bool:
    return isinstance(result, dict) and all(
        isinstance(result.get(p), (int, float)) and result[p] > 0 for p in ("fp32", "bf16"))


def choose_precision(times: dict[str, float], job: str = "trains") -> tuple[str, str]:
    """("bf16" | "fp32", why) from measured seconds of the same work in each: bf16 where it
    was at least `MIN_GAIN` times faster."""
    speedup = times["fp32"] / times["bf16"]
    if speedup >= MIN_GAIN:
        return "bf16", f"measured {speedup:.2f}x fp32 on this CPU"
    return "fp32", f"bf16 {job} at {speedup:.2f}x fp32 on this CPU (measured)"


def precision_without_probe(precision: str, device: torch.device) -> tuple[str, str] | None:
    """(precision, why) where no measurement decides: a precision as set, the hardware rule
    on CUDA, fp32 on other devices; None for "auto" on a CPU (measure it)."""
    if precision != "auto":
        return precision, "as set"
    if device.type == "cuda":
        native = cuda_has_native_bf16(device)
        return ("bf16", "native on this GPU") if native else ("fp32", "no native bf16 on this GPU")
    if device.type != "cpu":
        return "fp32", f"bf16 is not measured on {device.type}"
    return None


def training_precision(precision: str, device: torch.device) -> tuple[str, str]:
    """(the precision a new run trains in, why): `precision` when it is "bf16" or "fp32";
    for "auto" the measured choice on a CPU, the hardware rule on CUDA, fp32 elsewhere."""
    ruled = precision_without_probe(precision, device)
    if ruled is not None:
        return ruled
    times = cached("train", machine_key(device), lambda: measure_training(device), _valid_times)
    return choose_precision(times)
