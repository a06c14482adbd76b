"""Where and in what arithmetic a model runs: device and precision resolution, and autocast.

Device "auto": CUDA if present, else CPU. Precision "auto": bf16 autocast where it was measured
faster than fp32 (CUDA GPUs that support it; CPUs with AMX, about 2x), fp32 elsewhere (on a
CPU with AVX-512 bf16 but no AMX, bf16 was ~10% slower: benchmarks/RESULTS.md).
"""

from __future__ import annotations

import contextlib
import re

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


def cpu_has_amx() -> bool:
    """True where the CPU reports AMX bf16 tiles (Linux /proc/cpuinfo flag `amx_bf16`)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return any("amx_bf16" in line.split() for line in cpuinfo if line.startswith("flags"))
    except OSError:
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "bf16" where it is faster than fp32, else "fp32"; others unchanged."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_amx() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: str):
    """bf16 autocast (weights stay fp32) or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
