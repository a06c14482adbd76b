"""Export a trained checkpoint: ONNX (checked against onnxruntime) and torchvision state dicts.

ONNX: the graph takes raw pixels, float32 (N, C, H, W) in [0, 255] at the training size, and
returns logits (N, classes); the saved normaliser is part of the graph, so the caller only
resizes. The batch dimension is dynamic. Needs the optional extra: `pip install resnets[onnx]`.

torchvision: for resnet18/34/50/101/152 the parameter names already match torchvision's, so the
export is the state dict alone, loadable with `torchvision.models.resnet50(num_classes=N)
.load_state_dict(torch.load(FILE, weights_only=True))` (strict).

Nothing is lost: an existing file is replaced only with `overwrite=True` (`--force`), and never
the checkpoint being exported nor a file in a run's checkpoint folder. The destination is
checked before the slow work, and written atomically once the export has passed its check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any, Callable

import torch
from torch import nn

from resnets.atomic import atomic_open, writable_folder
from resnets.errors import UserError
from resnets.models.onnx import EXTRA as ONNX_EXTRA
from resnets.models.onnx import export_model, onnx_available, onnx_session, run_session
from resnets.rundir import RunDir

TORCHVISION_NAMES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


class PixelsToLogits(nn.Module):
    """normaliser then model: float pixels in [0, 255] (N, C, H, W) -> logits (N, classes)."""

    def __init__(self, model: nn.Module, normalizer):
        super().__init__()
        self.model = model
        self.normalizer = normalizer

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalizer(pixels))


def check_destination(out: str | Path, checkpoint: str | Path, *, overwrite: bool = False) -> Path:
    """`out` as a Path once it is a file name the export of `checkpoint` may write; else a
    `UserError`. Checks that its folder is writable, so call it before the slow work."""
    from resnets.train.checkpoint import resolve_checkpoint_path

    out = Path(out).expanduser()
    if out.is_dir():
        raise UserError(f"{out} is a folder: expected a file name for the export, e.g. {out / 'model.onnx'}")
    if out.exists() or out.is_symlink():
        source = resolve_checkpoint_path(checkpoint)
        if out.exists() and out.resolve() == source.resolve():
            raise UserError(f"{out} is the checkpoint being exported: choose another file name")
        if _in_run_checkpoints(out) or _in_run_checkpoints(out.resolve()):
            raise UserError(f"{out} is in a run's checkpoint folder: export never replaces a file "
                            f"there, even with --force; choose another file name")
        if not overwrite:
            raise UserError(f"{out} exists: use --force to replace it (overwrite=True in Python)")
    writable_folder(out.parent)
    return out


def _in_run_checkpoints(path: Path) -> bool:
    """Whether `path` lies in the checkpoint folder of the run directory above it."""
    run = RunDir(path.parent.parent)
    return run.checkpoints == path.parent and (run.ours() or run.last.is_file())


def _write(out: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """`write(file)` into a temporary file renamed to `out` on success; OSError -> UserError."""
    try:
        with atomic_open(out, "wb") as file:
            write(file)
    except OSError as error:
        raise UserError(f"cannot write {out} ({error.strerror or error})") from None


def export_onnx(checkpoint: str | Path, out: str | Path, *, check: bool = True,
                tolerance: float = 1e-3, overwrite: bool = False) -> dict[str, Any]:
    """Write the checkpoint's model as ONNX to `out`; with `check`, run it in onnxruntime on
    random pixels and compare with PyTorch before writing anything.

    Returns {"path", "max_abs_diff" (None without check), "input_shape"}. Raises `UserError`
    when `out` may not be written (see `check_destination`; `overwrite` replaces an existing
    file), when onnx/onnxruntime are missing or when the outputs disagree by more than
    `tolerance` (relative to the largest logit).
    """
    from resnets.train.inference import load_trained

    out = check_destination(out, checkpoint, overwrite=overwrite)
    if not onnx_available(runtime=False):
        raise UserError(f"ONNX export needs the optional extra: {ONNX_EXTRA}")
    trained = load_trained(checkpoint, device="cpu")
    module = PixelsToLogits(trained.model, trained.normalizer).eval()
    channels, height, width = trained.input_size
    example = torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0)
                         ) * 255
    model = _onnx_export(module, example)  # the slow part: seconds to minutes
    _add_metadata(model, trained)
    data = model.SerializeToString()
    max_diff = _check_onnx(data, module, example, tolerance) if check else None
    _write(check_destination(out, checkpoint, overwrite=overwrite), lambda file: file.write(data))
    return {"path": out, "max_abs_diff": max_diff, "input_shape": [channels, height, width]}


def _onnx_export(module: nn.Module, example: torch.Tensor):
    """The ONNX ModelProto of `module` taking raw pixels (resnets.models.onnx exports it)."""
    return export_model(module, example, input_name="pixels", output_name="logits")


def _add_metadata(model, trained) -> None:
    entries = {"resnets.model": trained.checkpoint["model"],
               "resnets.classes": json.dumps(trained.classes),
               "resnets.input": "float32 pixels in [0, 255], (N, C, H, W) = "
                                f"(N, {', '.join(map(str, trained.input_size))})"}
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


def _check_onnx(data: bytes, module: nn.Module, example: torch.Tensor,
                tolerance: float) -> float:
    if not onnx_available():
        raise UserError(f"checking the ONNX file needs onnxruntime: {ONNX_EXTRA} (or skip "
                        f"the check)")
    session = onnx_session(data)
    # A batch size other than the export example's, to exercise the dynamic batch dimension.
    pixels = torch.rand(3, *example.shape[1:], generator=torch.Generator().manual_seed(1)) * 255
    got = run_session(session, pixels)
    with torch.no_grad():
        expected = module(pixels)
    diff = float((got - expected).abs().max())
    scale = float(expected.abs().max()) or 1.0
    if not diff <= tolerance * max(scale, 1.0):
        raise UserError(f"ONNX check failed: onnxruntime and PyTorch differ by {diff:.3g} "
                        f"(logits up to {scale:.3g}); the exported file is unreliable")
    return diff


def torchvision_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights as the state dict of torchvision's model of the same name."""
    from resnets.train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)
    name = state["model"]
    if name not in TORCHVISION_NAMES:
        raise UserError(f"--torchvision works for {', '.join(TORCHVISION_NAMES)}; this "
                        f"checkpoint is {name!r} (torchvision has no such model)")
    problem = _torchvision_mismatch(name, state["model_kwargs"])
    if problem:
        raise UserError(f"cannot export this {name} for torchvision: {problem}")
    return {key: tensor.detach().cpu().contiguous()
            for key, tensor in state["model_state"].items()}


def _torchvision_mismatch(name: str, kwargs: dict) -> str | None:
    """Why a model built with `kwargs` computes something else than torchvision's `name`
    (None when it does not). torchvision: 3 input channels, width 64, projection shortcuts
    where the shape changes (B), post-activation units, bottleneck stride on the 3x3 (v1.5)."""
    if kwargs.get("in_channels", 3) != 3:
        return f"torchvision's {name} takes 3-channel images, this one {kwargs['in_channels']}"
    if kwargs.get("width", 64) != 64:
        return f"width={kwargs['width']} (torchvision: 64)"
    if kwargs.get("shortcut", "B") != "B":
        return f"shortcut={kwargs['shortcut']!r} (torchvision's shortcuts are option B)"
    if kwargs.get("preact", False):
        return "pre-activation units (torchvision's are post-activation)"
    bottleneck = name in ("resnet50", "resnet101", "resnet152")
    if bottleneck and kwargs.get("bottleneck_stride", "1x1") != "3x3":
        return ("its bottleneck stride is on the 1x1 conv (the paper's v1); torchvision's is on "
                "the 3x3 (v1.5), so the weights would load but compute something else; train "
                "with --model-args bottleneck_stride=3x3")
    known = {"num_classes", "in_channels", "width", "shortcut", "preact", "zero_init_last",
             "bottleneck_stride"}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        return f"model options {', '.join(unknown)} have no torchvision equivalent"
    return None


def export_torchvision(checkpoint: str | Path, out: str | Path, *,
                       overwrite: bool = False) -> dict[str, Any]:
    """Write `torchvision_state_dict(checkpoint)` to `out` (atomically; an existing file only
    with `overwrite`, see `check_destination`)."""
    from resnets.train.checkpoint import load_checkpoint

    out = check_destination(out, checkpoint, overwrite=overwrite)
    state_dict = torchvision_state_dict(checkpoint)
    num_classes = load_checkpoint(checkpoint)["model_kwargs"]["num_classes"]
    _write(check_destination(out, checkpoint, overwrite=overwrite),
           lambda file: torch.save(state_dict, file))
    return {"path": out, "tensors": len(state_dict), "num_classes": num_classes}
