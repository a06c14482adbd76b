"""What every benchmark record names and how it is written.

`describe()` gives the CPU model with the flags that decide precision `auto` (AMX, AVX-512
bf16), the logical CPUs, torch's thread count, and the GPU when there is one;
`command_line()`, `utc_date()` and `append(path, block)` are the rest of a record's mechanics.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

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
            f"{'yes' if 'avx512_bf16' in flags else 'no'}, AVX-512: "
            f"{'yes' if 'avx512f' in flags else 'no'}, AVX2: "
            f"{'yes' if 'avx2' in flags else 'no'}), {os.cpu_count()} logical CPUs, "
            f"torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def command_line() -> str:
    """The command that is running, as a user would type it again."""
    return "python3 " + " ".join(shlex.quote(a) for a in sys.argv)


def utc_date() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def append(path: str | Path, block: str) -> None:
    """Append a record (a markdown block) to `path`, usually benchmarks/RESULTS.md."""
    with open(path, "a", encoding="utf-8") as file:
        file.write(block)
    print(f"appended to {path}")


MALLOC_CHOICES = ("keep", "default")


def add_malloc_option(parser) -> None:
    """--malloc keep|default: what glibc does with freed memory in the benchmark's process."""
    parser.add_argument(
        "--malloc", choices=MALLOC_CHOICES, default="keep",
        help="keep (default): glibc keeps freed memory for reuse, as every `resnets` command "
        "that runs networks has it (resnets.train.device.keep_freed_memory); default: glibc's "
        "own behaviour, as in a script of the user's. It holds for every row of the run")


def apply_malloc(choice: str) -> str:
    """Set what `--malloc` asked for; the record's line saying what it was."""
    if choice == "keep":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
        from resnets.train.device import keep_freed_memory

        applied = "" if keep_freed_memory() else ": NOT applied here"
        return ("- malloc: glibc keeps freed memory for reuse in this process, every row "
                f"(keep_freed_memory(), as `resnets` commands do){applied}")
    return "- malloc: glibc's defaults (freed blocks over its mmap threshold go back to the OS)"
