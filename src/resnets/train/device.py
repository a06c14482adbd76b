"""Where and in what arithmetic a model runs: device, precision and CPU threads, and autocast.

Device "auto": CUDA if present, else CPU. Precision "auto": bf16 autocast where it is faster
than fp32 on this machine, measured once and cached (resnets.train.probe; CUDA GPUs: where
they compute bf16 natively).

Threads: torch's default uses every core, so two trainings at once on one machine fight over
the cores and each runs many times slower than it would with its share of them
(`benchmarks/bench_threads.py` measures it). `threads=None` gives a process under torchrun its
share of the cores; a machine already busy is reported by `busy_warning`.

Memory: `keep_freed_memory()` asks glibc's malloc to keep freed blocks for reuse (the command
line does it for the commands that train or run networks, and a study's worker processes).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import platform
import re
import sys
import time
from typing import Any, Iterator, Mapping

import torch

from resnets.errors import UserError

PRECISIONS = ("auto", "bf16", "fp32")
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?|mps"  # what a device setting may say


def check_device_name(name: str) -> str:
    """`name` if it is a device setting resnets understands, else a UserError (before torch
    sees it: torch.device("abc") is a RuntimeError)."""
    if not isinstance(name, str) or not re.fullmatch(DEVICE_PATTERN, name):
        raise UserError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return name


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA if present, else CPU; anything else is checked to exist."""
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name!r} requested but MPS is not available; use --device cpu")
    return device


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what the platform says."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_description() -> str:
    """The CPU in one line, with the flags that decide its fast paths: "MODEL (AVX2, AVX-512,
    AVX-512 BF16, AMX)", those it has."""
    names = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16",
             "amx_bf16": "AMX"}
    flags = cpu_flags()
    return f"{cpu_model()} ({', '.join(n for f, n in names.items() if f in flags) or 'none'})"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (/proc/cpuinfo); empty elsewhere."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def cpu_has_amx() -> bool:
    """True where the CPU reports AMX bf16 tiles (Linux /proc/cpuinfo flag `amx_bf16`)."""
    return "amx_bf16" in cpu_flags()


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes bf16 dot products in hardware (AVX-512 BF16 or AMX)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cuda_has_native_bf16(device: torch.device) -> bool:
    """Whether a CUDA GPU computes bf16 in hardware: from Ampere (compute capability 8) on;
    torch.cuda.is_bf16_supported() also says yes where it is only emulated, and slow."""
    return torch.cuda.get_device_capability(device)[0] >= 8


def autocast(device: torch.device, precision: str):
    """bf16 autocast (weights stay fp32) or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_limit(device: torch.device) -> int | None:
    """Bytes a training run on `device` can use at most: the GPU's memory, or the machine's
    physical memory for the CPU (None where the platform does not say)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        from resnets.models.resnet import memory_bytes

        return memory_bytes()
    return None


def check_memory(need: int, device: torch.device, doing: str, remedy: str) -> None:
    """Refuse, before anything is allocated, work estimated to need `need` bytes on `device`
    when that is more than it has (`memory_limit`): one line saying what (`doing`), both
    figures, and what to change (`remedy`, naming the flag or the file). Training, evaluation
    and prediction all ask here."""
    have = memory_limit(device)
    if have is not None and need > have:
        raise UserError(f"{doing} needs about {need / 2**30:,.1f} GiB, more than the "
                        f"{have / 2**30:,.1f} GiB of {device}; {remedy}")


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_threads(threads: int | None, environ: Mapping[str, str] | None = None) -> int:
    """The CPU threads a training process should use: `threads` when given; under torchrun
    (LOCAL_WORLD_SIZE set: the processes it started on this machine), this process's share of
    the cores; otherwise torch's current count (its default: every core)."""
    if threads is not None:
        return threads
    local = (os.environ if environ is None else environ).get("LOCAL_WORLD_SIZE", "")
    if local.isdigit() and int(local) > 1:
        return max(1, available_cores() // int(local))
    return torch.get_num_threads()


@contextlib.contextmanager
def cpu_threads(count: int) -> Iterator[int]:
    """Run the block with torch using `count` intra-op CPU threads, then give back the count
    it had (a library call leaves the caller's setting alone)."""
    previous = torch.get_num_threads()
    if count != previous:
        torch.set_num_threads(count)
    try:
        yield count
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


def busy_warning(load: float, cores: int) -> str | None:
    """One line saying the machine is busy when its load (runnable processes, averaged over
    a minute) is above its core count; None otherwise."""
    if load <= cores:
        return None
    return (f"this machine is busy (load {load:.1f} on {cores} cores): training will be much "
            f"slower; close other jobs, or give each job its share of the cores with "
            f"--threads N (all together at most {cores})")


LOAD_MINUTE_S = 60.0  # the time constant of the load average the OS reports first


def own_load(cpu_seconds: float, wall_seconds: float) -> float:
    """What this process (with its finished children) adds to the 1-minute load average after
    using `cpu_seconds` of CPU over the last `wall_seconds`: the load is an exponential average
    of the runnable processes with a one-minute time constant, so a process busy on r cores for
    t seconds adds about r (1 - exp(-t / 60))."""
    if wall_seconds <= 0:
        return 0.0
    rate = max(cpu_seconds, 0.0) / wall_seconds
    return rate * (1.0 - math.exp(-wall_seconds / LOAD_MINUTE_S))


def _cpu_seconds() -> float:
    """CPU seconds this process (all its threads) and its finished children have used."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


_since = [time.monotonic(), _cpu_seconds()]  # (wall, CPU) at import or at the last check
# Set by a parallel study (`resnets study --jobs N`) for each worker process: the load its
# sibling workers put on the machine (their threads), which a worker's busy check takes out.
SIBLING_LOAD_ENV = "RESNETS_SIBLING_LOAD"


def sibling_load() -> float:
    """The load this process's sibling workers make (SIBLING_LOAD_ENV; 0 when unset or bad)."""
    try:
        value = float(os.environ.get(SIBLING_LOAD_ENV, "0"))
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def machine_busy_warning(siblings: bool = True) -> str | None:
    """`busy_warning` for this machine now (None where the OS reports no load average), with
    this process's own recent use taken out (a study's next run must not take the load its
    previous run left in the 1-minute average, which lags by a minute, for someone else's),
    and, with `siblings`, the load of a parallel study's other workers (`sibling_load`): a
    run should not warn about them, but a timing taken beside them is still not clean."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows; some containers
        return None
    now, cpu = time.monotonic(), _cpu_seconds()
    then, cpu_then = _since
    _since[:] = [now, cpu]
    ours = own_load(cpu - cpu_then, now - then) + (sibling_load() if siblings else 0.0)
    return busy_warning(max(0.0, load - ours), os.cpu_count() or 1)


# glibc's mallopt parameters (malloc.h). The mmap threshold asked for: 1 GiB (an ImageNet
# batch's activation maps, 64 x 64 x 112 x 112 fp32 = 205 MiB, are reused too: resnet50
# inference at batch 64, 8.5 -> 9.2 img/s), else 32 MiB, the largest older glibc accepts on 64
# bits (every map of a CIFAR batch of 128, at most 8 MiB).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLDS = (2**30, 32 * 2**20)
TRIM_THRESHOLD = 2**30
_kept: list[bool] = []  # the answer of the first call in this process


def _glibc() -> Any | None:
    """The C library when it is glibc (whose malloc takes `mallopt`), else None."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Ask glibc's malloc to keep the memory of freed CPU tensors for the next ones; whether
    it was done (once per process).

    PyTorch's CPU tensors come from malloc. By glibc's defaults a freed block larger than its
    mmap threshold (128 KiB at first, raised as blocks are freed) goes back to the OS, and so
    does a freed top of the heap beyond 128 KiB, so a training step or an inference call maps
    fresh pages for its activations every time and pays a page fault on each (the kernel
    zeroes them). Keeping blocks up to 1 GiB (32 MiB where glibc takes no more: larger maps
    are then mapped afresh) and up to 1 GiB of freed heap top for reuse: on a 2-core EPYC the
    resnet20 training step +4%, resnet20 inference +3-4% at batch 64 and +10-16% at batch 1,
    resnet50 at batch 64 +8% (with the 1 GiB threshold) (benchmarks/RESULTS.md). The price: a
    process keeps the memory of its peak, as PyTorch's CUDA caching allocator does. Skipped where the user set glibc's malloc tunables
    (GLIBC_TUNABLES with "malloc", or the older MALLOC_..._ variables such as
    MALLOC_MMAP_THRESHOLD_) and where malloc is not glibc's (macOS, Windows, musl);
    under a preloaded jemalloc or tcmalloc the call changes nothing."""
    if _kept:
        return _kept[0]
    environ = os.environ if environ is None else environ
    users_own = "malloc" in environ.get("GLIBC_TUNABLES", "") or any(
        name.startswith("MALLOC_") and name.endswith("_") for name in environ)
    libc = None if users_own else _glibc()
    done = False
    if libc is not None:
        try:
            done = any(libc.mallopt(M_MMAP_THRESHOLD, size) for size in MMAP_THRESHOLDS) \
                and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except AttributeError:  # a C library without mallopt
            done = False
    _kept.append(done)
    return done
