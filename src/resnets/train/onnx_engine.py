"""onnxruntime as a CPU inference engine for a model: exported once, cached, checked.

At small batches PyTorch's CPU path pays a fixed cost per call in its oneDNN primitives (3-4.6
ms per forward pass measured on AVX2), where onnxruntime runs the same network 2.5-3.5x
faster; at large batches PyTorch in bf16 is faster (benchmarks/bench_inference.py). So
`InferenceModel` (resnets.train.engine) runs onnxruntime where it measured faster on this
machine at that batch size. This module makes the onnxruntime side:

- `onnx_engine(model, input_shape)`: an `OnnxEngine` for `model` (fp32 logits of a normalised
  (N, C, H, W) batch), or None and a one-line reason. The model (eval mode, fp32, BatchNorm and
  all: onnxruntime folds it itself) is exported once (resnets.models.onnx) into
  `cache_root()/onnx/DIGEST.onnx`, DIGEST a hash of what the checkpoint holds for it: the
  architecture, every weight and buffer, the input shape, torch's version. A changed checkpoint
  is another digest, so it is exported again. Beside it DIGEST.json records the file's sha256
  and the check's verdict; a cached file that does not match its record or that onnxruntime
  cannot load is exported again.
- The check, on first use: onnxruntime's logits against PyTorch's fp32 model on 4 random
  normal images (what normalised images look like), `check_outputs`. Tolerance, derived: both
  are fp32 evaluations of the same network in different summation orders, so they differ by at
  most the sum of their distances to the exact result. PyTorch's is measured against the same
  model in fp64 (`rounding`); onnxruntime's is taken as at most twice that (the same dot
  products, blocked differently); plus `FP32_TOLERANCE` x max(1, |logit|) for networks whose
  own rounding is below it. Top-1 must agree wherever PyTorch's two best logits are further
  apart than twice that tolerance (closer, either class is right to fp32's precision). A model
  that fails the check, or cannot be exported, runs in PyTorch, and the reason says why.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resnets.atomic import atomic_open, write_json
from resnets.models.onnx import export_model, onnx_session, onnxruntime_version
from resnets.train import probe

FP32_TOLERANCE = 1e-4   # two fp32 computations of one network, relative to max(1, |logit|)
CHECK_IMAGES = 4
_engines: dict[str, "OnnxEngine"] = {}  # loaded in this process, by digest


class OnnxEngine:
    """A model's onnxruntime session: called with a float batch (B, C, H, W), it returns fp32
    logits (B, classes) on the CPU."""

    def __init__(self, session: Any, path: Path | None):
        self.session, self.path = session, path
        self.input_name = session.get_inputs()[0].name

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # A contiguous fp32 CPU batch is handed over without a copy (numpy shares its memory),
        # and the output comes back the same way: at batch 1 the call is a few hundred
        # microseconds, so every copy and lookup around it shows.
        if images.dtype != torch.float32 or images.device.type != "cpu" \
                or not images.is_contiguous() or images.requires_grad:
            images = images.detach().to("cpu", torch.float32).contiguous()
        (output, *_) = self.session.run(None, {self.input_name: images.numpy()})
        return torch.from_numpy(output)


def model_digest(model: nn.Module, input_shape: tuple[int, ...]) -> str:
    """A hash of what a checkpoint holds for `model` (its architecture, as its repr spells
    it, and every tensor of its state dict), the input shape, and the torch and onnxruntime
    versions (another exporter may write another graph)."""
    digest = hashlib.sha256(json.dumps(
        [repr(model), list(input_shape), torch.__version__, onnxruntime_version()]).encode())
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{data.dtype}:{list(tensor.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def check_outputs(engine: OnnxEngine, model: nn.Module, input_shape: tuple[int, ...]
                  ) -> tuple[bool, str]:
    """(whether onnxruntime computes what `model` computes in fp32, how far apart they were):
    see the module docstring for the tolerance."""
    images = torch.randn(CHECK_IMAGES, *input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images).double()
        exact = copy.deepcopy(model).double()(images.double())
    got = engine(images).double()
    scale = max(1.0, exact.abs().max().item())
    rounding = (expected - exact).abs().max().item()
    tolerance = FP32_TOLERANCE * scale + 3 * rounding
    diff = (got - expected).abs().max().item()
    top2 = expected.topk(min(2, expected.shape[1]), dim=1).values
    clear = (top2[:, 0] - top2[:, -1]) > 2 * tolerance if top2.shape[1] > 1 \
        else torch.ones(len(expected), dtype=torch.bool)
    same_top1 = bool((got.argmax(1) == expected.argmax(1))[clear].all())
    detail = f"logits within {diff:.3g} of PyTorch's (tolerance {tolerance:.3g})"
    if not same_top1:
        return False, f"onnxruntime's top-1 differs from PyTorch's ({detail})"
    if not diff <= tolerance:
        return False, f"onnxruntime's logits differ from PyTorch's by {diff:.3g} (tolerance " \
                      f"{tolerance:.3g})"
    return True, detail


def _cached(path: Path, record: dict | None) -> OnnxEngine | None:
    """The engine of a cached file that matches its record, else None (missing, corrupt)."""
    if not record or not record.get("agrees"):
        return None
    try:
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != record.get("sha256"):
            return None
        return OnnxEngine(onnx_session(data), path)
    except Exception:  # onnxruntime raises its own types for a file it cannot load
        return None


def _read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _export(model: nn.Module, input_shape: tuple[int, ...], path: Path, record_path: Path
            ) -> tuple[OnnxEngine | None, str]:
    """Export, check and cache (the file only when it passed; the verdict either way)."""
    example = torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(1))
    try:
        data = export_model(model, example).SerializeToString()
        engine = OnnxEngine(onnx_session(data), path)
    except Exception as error:  # an exporter's or onnxruntime's own error type
        return None, f"onnxruntime not used: the ONNX export failed ({type(error).__name__}: " \
                     f"{str(error).splitlines()[0] if str(error) else ''})"
    agrees, detail = check_outputs(engine, model, input_shape)
    try:
        if agrees:
            with atomic_open(path, "wb") as file:
                file.write(data)
        write_json(record_path, {"sha256": hashlib.sha256(data).hexdigest(), "agrees": agrees,
                                 "detail": detail})
    except OSError:  # a read-only cache: exported again next time
        pass
    return (engine, detail) if agrees else (None, f"onnxruntime not used: {detail}")


def onnx_engine(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[OnnxEngine | None, str]:
    """(the onnxruntime engine of `model` for inputs of `input_shape` (C, H, W), or None; a
    line saying why not, or how well it agreed with PyTorch)."""
    reference = copy.deepcopy(model).to("cpu", torch.float32).eval()
    digest = model_digest(reference, input_shape)
    if digest in _engines:
        return _engines[digest], "cached"
    folder = probe.cache_root() / "onnx"
    path, record_path = folder / f"{digest}.onnx", folder / f"{digest}.json"
    record = _read_record(record_path)
    if record is not None and record.get("agrees") is False and "detail" in record \
            and not path.exists():
        return None, f"onnxruntime not used: {record['detail']}"  # checked before: disagreed
    engine = _cached(path, record)
    detail = "cached"
    if engine is None:
        engine, detail = _export(reference, input_shape, path, record_path)
    if engine is not None:
        _engines[digest] = engine
    return engine, detail
