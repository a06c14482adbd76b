"""What every benchmark record names: the machine it ran on.

`describe()` gives the CPU model with the flags that decide precision `auto` (AMX, AVX-512
bf16), the logical CPUs, torch's thread count, and the GPU when there is one.
"""

from __future__ import annotations

import os
import platform

import torch


def describe() -> str:
    name, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.read().splitlines()
        name = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), name)
        flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
    except OSError:
        pass
    text = (f"{name} (AMX: {'yes' if 'amx_bf16' in flags else 'no'}, AVX-512 bf16: "
            f"{'yes' if 'avx512_bf16' in flags else 'no'}), {os.cpu_count()} logical CPUs, "
            f"torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text
