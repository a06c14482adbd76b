"""A model as an ONNX graph, and that graph run by onnxruntime's CPU provider.

Exporting a network is the model room's concern: `resnets export --onnx` (resnets.export, the
checkpoint's model behind its normaliser, written for a user) and the onnxruntime inference
engine (resnets.train.engine, the model alone, cached) both ask this module.

- `onnx_available()`: whether the optional extra is installed (`pip install 'resnets[onnx]'`:
  onnx, onnxscript for the exporter, onnxruntime to run the graph);
- `export_model(module, example)`: the ONNX ModelProto of an eval-mode module, its weights
  inside, the batch dimension dynamic (torch.onnx.export with dynamo: seconds to minutes);
- `onnx_session(data, threads)`: an onnxruntime session on the CPU provider, with its default
  graph optimisations (which fold BatchNorm and fuse convolutions with ReLU and additions);
- `run_session(session, inputs)`: fp32 outputs of one call, as a torch tensor.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from resnets.errors import UserError

EXTRA = "pip install 'resnets[onnx]' (onnx, onnxruntime, onnxscript)"
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def onnx_available(runtime: bool = True) -> bool:
    """Whether the modules the export needs (onnx, onnxscript) are installed, and onnxruntime
    too with `runtime`."""
    names = ("onnx", "onnxscript") + (("onnxruntime",) if runtime else ())
    return all(importlib.util.find_spec(name) is not None for name in names)


def onnxruntime_version() -> str | None:
    """onnxruntime's version, None where it is not installed."""
    if importlib.util.find_spec("onnxruntime") is None:
        return None
    import onnxruntime

    return onnxruntime.__version__


def export_model(module: nn.Module, example: torch.Tensor, *, input_name: str = INPUT_NAME,
                 output_name: str = OUTPUT_NAME) -> Any:
    """The ONNX ModelProto of `module` (eval mode, on the CPU) for inputs like `example`,
    weights inside, batch dimension dynamic. The exporter's own notices (warnings, and log
    lines such as "torchvision is not installed. Skipping torchvision::nms") are kept off the
    user's terminal. A missing extra is a `UserError`."""
    import logging
    import warnings

    batch = torch.export.Dim("batch", min=1, max=65536)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        exporter_log.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(module, (example,), None, input_names=[input_name],
                                        output_names=[output_name], dynamo=True,
                                        dynamic_shapes=({0: batch},), external_data=False,
                                        verbose=False)
        except ImportError as error:
            raise UserError(f"ONNX export needs the optional extra: {EXTRA} ({error})") from None
        finally:
            exporter_log.setLevel(level)
    return program.model_proto


def onnx_session(data: bytes, threads: int | None = None) -> Any:
    """An onnxruntime session on the serialised model `data`, CPU provider, `threads` intra-op
    threads (default: as many as torch uses). Raises onnxruntime's own error for a file that
    is not a valid model (a caller with a cache rebuilds it)."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"running an ONNX graph needs onnxruntime: {EXTRA}") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.log_severity_level = 3  # errors only: its warnings are not the user's business
    return onnxruntime.InferenceSession(data, sess_options=options,
                                        providers=["CPUExecutionProvider"])


def run_session(session: Any, inputs: torch.Tensor) -> torch.Tensor:
    """The session's first output for `inputs` (sent as contiguous fp32), as an fp32 tensor."""
    array = inputs.detach().to("cpu", torch.float32).contiguous().numpy()
    (output, *_) = session.run(None, {session.get_inputs()[0].name: array})
    return torch.from_numpy(output).float()
