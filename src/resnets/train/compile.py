"""Compiling a training step with `torch.compile`: where, and its cache.

What compiling buys. Almost half of a CPU training step of a CIFAR ResNet is memory-bound
elementwise work on narrow maps: batch norm (statistics, normalisation, and their backward),
ReLU, the residual addition. TorchInductor fuses BN + ReLU, and BN + addition + ReLU, into
single loops, forward and backward; the convolutions stay oneDNN (CPU) or cuDNN (GPU) calls.
The model stays an ordinary `nn.Module`: it is compiled in place (`nn.Module.compile`), so
its parameter names, its state dict and its checkpoints are exactly those of the eager model,
and `eager(model)` runs it uncompiled again (evaluation, hooks, diagnostics).

Scope (`COMPILE_SCOPE`): "units" compiles each residual unit on its own (regional
compilation); "model" the whole forward. The units of a network repeat, and identical units
share one compiled graph, so with "units" the compile time does not grow with the depth
(resnet110 compiles the same five unit graphs as resnet20), and the networks of a study, at
every depth, share them: within one process they compile once. A model without `units` (not
a resnets ResNet) is compiled whole.

Caching. TorchInductor's FX graph cache and AOTAutograd cache (both on by default in torch
>= 2.5) keep the compiled kernels on disk, keyed by graph, so a later process skips most of
the work. Unless TORCHINDUCTOR_CACHE_DIR is set, they go to `default_cache_dir()`,
~/.cache/resnets/torch-compile (under $XDG_CACHE_HOME when set), rather than torch's default
/tmp/torchinductor_USER, which many systems empty at each boot. The same folder holds
`resnets-compile.json`: which graphs were compiled there and the times measured, behind the
"auto" estimates.

Whether a run is compiled at all is decided in `resnets.train.autocompile`.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

COMPILE_SCOPE = "units"          # "units" (each residual unit) | "model" (the whole forward)
RECOMPILE_LIMIT = 64             # graphs per code object (torch's default, 8, is too few)


def default_cache_dir() -> Path:
    """~/.cache/resnets/torch-compile, or $XDG_CACHE_HOME/resnets/torch-compile."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "resnets" / "torch-compile"


# What the user set, read when resnets' training is imported: torch sets the variable to its
# own default (/tmp/torchinductor_USER) the first time anything imports torch._dynamo, which
# building a model can do (the memory check's probe), so a value seen later may be torch's.
USER_CACHE_DIR = os.environ.get("TORCHINDUCTOR_CACHE_DIR")


def _torch_default_cache_dir() -> str | None:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return None
    return os.path.abspath(default_cache_dir())


def use_cache_dir() -> Path:
    """The folder TorchInductor caches compiled graphs in: TORCHINDUCTOR_CACHE_DIR when the
    user set it, else `default_cache_dir()` (set as TORCHINDUCTOR_CACHE_DIR for this process,
    also over torch's own default where torch has set that already), else, where that cannot
    be made, torch's own default."""
    given = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if given and (USER_CACHE_DIR or given != _torch_default_cache_dir()):
        return Path(given)
    folder = default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return Path(cache_dir())
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return folder


def compile_unavailable(device: torch.device) -> str | None:
    """Why torch.compile cannot work here (None when it can): no C++ compiler for the CPU, no
    Triton for CUDA, a Python dynamo does not support, or a device it is not used on."""
    try:
        from torch._dynamo import is_dynamo_supported

        if not is_dynamo_supported():
            return f"torch {torch.__version__} cannot compile on this Python"
    except ImportError:
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception:  # inductor's own search: g++ (or $CXX), clang++ on macOS, cl
            return "torch.compile needs a C++ compiler for the CPU and none was found"
        return None
    if device.type == "cuda":
        try:
            from torch.utils._triton import has_triton
        except ImportError:
            return "torch.compile needs Triton on CUDA"
        return None if has_triton() else "torch.compile needs Triton on CUDA (pip install triton)"
    return f"torch.compile is not used on {device.type}"


def compile_targets(model: nn.Module, scope: str = COMPILE_SCOPE) -> list[nn.Module]:
    """The modules compiled: every residual unit ("units", a resnets ResNet), else the
    whole model."""
    units = getattr(model, "units", None)
    if scope == "units" and units:
        return list(units)
    return [model]


def attach(targets: Sequence[nn.Module], compiled: dict | None = None) -> dict:
    """Compile `targets` in place (their `__call__` runs the compiled forward); returns the
    compiled functions, which `attach` reuses when given them back (nothing recompiles)."""
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # the name before torch 2.7: the latter
        limit = getattr(torch._dynamo.config, name, None)
        if limit is not None and limit < RECOMPILE_LIMIT:
            setattr(torch._dynamo.config, name, RECOMPILE_LIMIT)
    compiled = dict(compiled or {})
    for target in targets:
        if id(target) not in compiled:
            compiled[id(target)] = torch.compile(target._call_impl, dynamic=False)
        target._compiled_call_impl = compiled[id(target)]
    return compiled


def detach(targets: Sequence[nn.Module]) -> None:
    """Run `targets` eagerly again (their compiled forward is kept by whoever attached it)."""
    for target in targets:
        target._compiled_call_impl = None


@contextlib.contextmanager
def eager(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` (and every module in it) uncompiled for the block, then as it was."""
    saved = [(m, m._compiled_call_impl) for m in model.modules()
             if getattr(m, "_compiled_call_impl", None) is not None]
    detach([m for m, _ in saved])
    try:
        yield model
    finally:
        for module, function in saved:
            module._compiled_call_impl = function


def is_compiled(model: nn.Module) -> bool:
    return any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
