"""How a trained model runs for inference, chosen by measurement: precision and engine.

`InferenceModel` is what `resnets eval`, `resnets predict` and `Trained.inference_model()` run.
Two engines:

- "torch": a copy of the model with BatchNorm folded into the convolutions
  (resnets.models.fold), convolution+addition+ReLU fused into single oneDNN calls on the CPU
  (resnets.models.fuse), channels_last, in bf16 or fp32, under `torch.inference_mode`;
- "onnxruntime": the model exported to ONNX once and run by onnxruntime's CPU provider, fp32
  (resnets.train.onnx_engine: cached by the checkpoint's content, checked against PyTorch).

"auto" picks, for each call's batch size, whichever measured faster on this machine
(`choose_engine`, from tables measured once on resnet20); where the tables choose onnxruntime
(small batches, where PyTorch's fixed cost per call shows), the model itself is timed with both
engines on its first batch of that size, since a larger network can turn the order round
(`InferenceModel.engine_for`). On a GPU, or without onnxruntime (`pip install
'resnets[onnx]'`), torch.

Precision "auto" (`inference_precision`) on a CPU: bf16 where bf16 inference measured at least
`probe.MIN_GAIN` times faster than fp32 at batch 64 on this machine, else fp32 (on an AVX2-only
CPU oneDNN emulates bf16, 7-8x slower; on an AVX-512-BF16 EPYC bf16 evaluation is 2.9x faster);
on a CUDA GPU bf16 where it is native. Not training's measurement: the weight gradients, which
inference lacks, have other kernels. Measured by `measure_inference` (resnet20, 3x32x32, at
`PROBE_BATCHES`, each engine's fastest call, a few seconds; onnxruntime's side exports resnet20
once, tens of seconds) and cached per machine, torch and onnxruntime version (resnets.train
.probe).

Agreement with the model itself, relative to max(1, largest |logit|). torch fp32: within
`FP32_TOLERANCE` (1e-4) plus twice what fp32 rounding alone does to the model's logits
(tests/models/test_fold.py); onnxruntime: see resnets.train.onnx_engine; bf16: within
`BF16_TOLERANCE` (5e-2; bf16 keeps 8 bits of mantissa), which moves a top-1 prediction only
where two classes are about that close: tests/train/test_inference_path.py.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from resnets.errors import UserError
from resnets.models.onnx import onnx_available, onnxruntime_version
from resnets.train import probe
from resnets.train.device import PRECISIONS
from resnets.train.onnx_engine import FP32_TOLERANCE, OnnxEngine, onnx_engine

BF16_TOLERANCE = 5e-2   # the bf16 path against the fp32 model, the same way
ENGINES = ("auto", "torch", "onnxruntime")
PROBE_BATCHES = (1, 8, 64)
PROBE_SECONDS = 0.5     # each probe cell: calls until this long (at least 5), the median kept
TIMING = "median"       # in the probes' cache key: a result timed otherwise is measured again
MODEL_PROBE_SECONDS = 0.1  # a model's own check where the tables chose onnxruntime (small batches)

__all__ = ["BF16_TOLERANCE", "ENGINES", "FP32_TOLERANCE", "InferenceModel", "choose_engine",
           "inference_precision"]


class InferenceModel(nn.Module):
    """A trained model ready for inference: a copy with BatchNorm folded into the
    convolutions, in `precision` ("bf16": weights and activations; "fp32"), in channels_last,
    on `device`; with `engine` "onnxruntime" or "auto" (on the CPU) also the model in
    onnxruntime where that is faster (see the module docstring). Called with a float batch
    (B, C, H, W) (any memory format, dtype and device), it returns fp32 logits (B, classes),
    computed under `torch.inference_mode`. For inference only: never trained or checkpointed.
    The onnxruntime side is exported from `model` as it is at the first call that needs it."""

    def __init__(self, model: nn.Module, device: torch.device | str, precision: str = "fp32",
                 channels_last: bool = True, engine: str = "torch"):
        super().__init__()
        from resnets.models.fold import fold_batchnorm
        from resnets.models.fuse import fuse_for_cpu

        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be bf16 or fp32, got {precision!r}")
        self.device = torch.device(device)
        self.precision = precision
        self.engine = check_engine(engine, precision, self.device)
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        folded = fold_batchnorm(model).to(self.device, self.dtype)
        folded = folded.to(memory_format=self.memory_format) if channels_last else folded
        self.model = fuse_for_cpu(folded)  # on the CPU; elsewhere as it is
        self.__dict__["_source"] = model  # not a submodule: the onnxruntime side's origin
        self._onnx: tuple[OnnxEngine | None, str] | None = None
        self._chosen: dict[int, str] = {}  # batch size -> engine, decided once per size
        self.ran: dict[str, str] = {}  # engine -> its description, for what ran so far
        self.train(False)

    def engine_for(self, batch: int, images: torch.Tensor | None = None) -> str:
        """The engine a call with `batch` images runs ("torch" or "onnxruntime"). With "auto",
        decided once per batch size: torch where this machine's tables say so; where they say
        onnxruntime (measured on resnet20 at 32 x 32), this model is timed on `images` with
        both engines first, and the faster one kept (a resnet50 at 224 x 224 ran 1.7x faster
        in bf16 PyTorch than in onnxruntime at batch 1, where resnet20 ran 2.6x slower)."""
        if self.engine != "auto":
            return "torch" if self.engine == "torch" else "onnxruntime"
        if batch not in self._chosen:  # the tables' lookup costs more than a batch-1 call
            chosen = choose_engine(self.precision, batch)
            if chosen == "onnxruntime" and images is not None and images.ndim == 4:
                chosen = self._faster_on(images)
            self._chosen[batch] = chosen
        return self._chosen[batch]

    def _faster_on(self, images: torch.Tensor) -> str:
        """"onnxruntime" or "torch", whichever runs this model faster on `images`."""
        engine = self._onnxruntime(tuple(images.shape[1:]))
        if engine is None:
            return "torch"
        on_torch = _time_calls(self._run_torch, images, seconds=MODEL_PROBE_SECONDS)
        on_onnxruntime = _time_calls(engine, images, seconds=MODEL_PROBE_SECONDS)
        return "onnxruntime" if on_onnxruntime < on_torch else "torch"

    def _onnxruntime(self, shape: tuple[int, ...]) -> OnnxEngine | None:
        if self._onnx is None:
            self._onnx = onnx_engine(self._source, shape)
        return self._onnx[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.engine_for(len(images), images) == "onnxruntime" and images.ndim == 4:
            engine = self._onnxruntime(tuple(images.shape[1:]))
            if engine is not None:
                self.ran["onnxruntime"] = "onnxruntime, fp32"
                return engine(images)  # on the CPU, as this engine runs only there
        self.ran["torch"] = self._describe_torch()
        return self._run_torch(images)

    def _run_torch(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            if images.ndim == 4:
                images = images.to(self.device, self.dtype, memory_format=self.memory_format)
            else:
                images = images.to(self.device, self.dtype)
            return self.model(images).float()

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise ValueError("an InferenceModel is for inference only: train the model it "
                             "was made from")
        return super().train(False)

    def _describe_torch(self) -> str:
        from resnets.models.fuse import describe_fusion

        fused = describe_fusion(self.model)
        return f"{self.precision}, BatchNorm folded" + (f", {fused}" if fused else "")

    def describe(self) -> str:
        """How the calls so far computed, for a report line: "fp32, BatchNorm folded,
        conv+add+ReLU fused" (torch), "onnxruntime, fp32", or both joined; with the reason
        where onnxruntime was chosen but could not be used."""
        said = " and ".join(self.ran.values()) or self._describe_torch()
        if self._onnx is not None and self._onnx[0] is None:
            said += f"; {self._onnx[1]}"
        return said

    @property
    def used_precision(self) -> str:
        """The precision of the calls so far ("fp32" when onnxruntime ran them all)."""
        return "fp32" if set(self.ran) == {"onnxruntime"} else self.precision


def check_engine(engine: str, precision: str, device: torch.device) -> str:
    """`engine` as it will run: "auto" and "onnxruntime" stay on a CPU with onnxruntime
    installed ("onnxruntime" with bf16 is refused: it runs fp32); elsewhere "torch"."""
    if engine not in ENGINES:
        raise UserError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "onnxruntime" and precision == "bf16":
        raise UserError("the onnxruntime engine computes in fp32: use --precision fp32 or auto")
    if engine == "onnxruntime" and not onnx_available():
        raise UserError("--engine onnxruntime needs the optional extra: pip install "
                        "'resnets[onnx]'")
    if engine != "torch" and (device.type != "cpu" or not onnx_available()):
        return "torch"
    return engine


def _time_calls(call, batch: torch.Tensor, seconds: float | None = None, calls: int = 5,
                decided_above: float = math.inf) -> float:
    """Seconds per image of the median of at least `calls` calls filling `seconds` (default
    `PROBE_SECONDS`): the typical call, as a user's calls are (the fastest favoured the engine
    whose times vary most: PyTorch at batch 8 measured 0.38 ms an image at best, 0.70 in a
    benchmark's runs). A first timed call slower than `decided_above` seconds per image is
    the answer: no more calls can make it the faster side (bf16 on an AVX2 CPU, 7-8x fp32,
    took 4 of the probe's 6 seconds)."""
    seconds = PROBE_SECONDS if seconds is None else seconds
    call(batch)  # allocates, picks kernels, packs weights
    start = time.perf_counter()
    call(batch)
    times = [time.perf_counter() - start]
    if times[0] / len(batch) > decided_above:
        return times[0] / len(batch)
    started = time.perf_counter()
    while len(times) < calls or time.perf_counter() - started < seconds:
        start = time.perf_counter()
        call(batch)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] / len(batch)


def _probe_model() -> nn.Module:
    from resnets.models import create_model

    torch.manual_seed(0)
    return create_model("resnet20", num_classes=10).eval()


def measure_inference(onnxruntime: bool) -> dict[str, list[float]]:
    """Seconds per image at each of `PROBE_BATCHES`: {"fp32": [...], "bf16": [...]} for the
    torch engine, or {"onnxruntime": [...]} with `onnxruntime` (infinite where onnxruntime
    cannot run the probe's model)."""
    model, cpu = _probe_model(), torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(b, 3, 32, 32, generator=generator) for b in PROBE_BATCHES]
    if onnxruntime:
        engine, _ = onnx_engine(model, (3, 32, 32))
        if engine is None:  # it cannot export or run resnet20 here: never chosen
            return {"onnxruntime": [math.inf] * len(batches)}
        return {"onnxruntime": [_time_calls(engine, batch) for batch in batches]}
    return _torch_rows(InferenceModel(model, cpu, "fp32"), InferenceModel(model, cpu, "bf16"),
                       batches)


def _torch_rows(fp32_path, bf16_path, batches: list[torch.Tensor]) -> dict[str, list[float]]:
    """Seconds per image of each path at each batch; a bf16 cell is timed in full only where
    its first call is within `probe.DECISIVE` times fp32's."""
    fp32 = [_time_calls(fp32_path, batch) for batch in batches]
    bf16 = [_time_calls(bf16_path, batch, decided_above=probe.DECISIVE * fp32_time)
            for batch, fp32_time in zip(batches, fp32)]
    return {"fp32": fp32, "bf16": bf16}


def _valid(names):
    return lambda result: isinstance(result, dict) and all(
        isinstance(result.get(n), list) and len(result[n]) == len(PROBE_BATCHES)
        and all(isinstance(v, (int, float)) and v > 0 for v in result[n]) for n in names)


def torch_table() -> dict[str, list[float]]:
    """This machine's measured seconds per image of the torch engine, by precision."""
    cpu = torch.device("cpu")
    return probe.cached("inference", probe.machine_key(cpu, batches=list(PROBE_BATCHES),
                                                       timing=TIMING),
                        lambda: measure_inference(False), _valid(("fp32", "bf16")))


def onnxruntime_table() -> dict[str, list[float]]:
    """This machine's measured seconds per image of onnxruntime (needs it installed)."""
    cpu = torch.device("cpu")
    key = probe.machine_key(cpu, batches=list(PROBE_BATCHES), onnxruntime=onnxruntime_version(),
                            timing=TIMING)
    return probe.cached("onnxruntime", key, lambda: measure_inference(True),
                        _valid(("onnxruntime",)))


def _nearest(batch: int) -> int:
    """The index of the probed batch size nearest `batch` on a log scale."""
    return min(range(len(PROBE_BATCHES)),
               key=lambda i: abs(math.log(max(batch, 1)) - math.log(PROBE_BATCHES[i])))


def choose_engine(precision: str, batch: int, torch_times: dict | None = None,
                  onnx_times: dict | None = None) -> str:
    """"onnxruntime" where it measured faster per image than the torch engine in `precision`
    at the probed batch size nearest `batch`, else "torch" (the tables: this machine's)."""
    torch_times = torch_table() if torch_times is None else torch_times
    onnx_times = onnxruntime_table() if onnx_times is None else onnx_times
    index = _nearest(batch)
    faster = onnx_times["onnxruntime"][index] < torch_times[precision][index]
    return "onnxruntime" if faster else "torch"


def inference_precision(precision: str, device: torch.device,
                        times: dict | None = None) -> str:
    """"auto" -> "bf16" where bf16 inference measured faster than fp32 on this machine (a
    CUDA GPU: where it is native), else "fp32"; "bf16" and "fp32" as they are."""
    return inference_precision_why(precision, device, times)[0]


def inference_precision_why(precision: str, device: torch.device,
                            times: dict | None = None) -> tuple[str, str]:
    """(`inference_precision`, why)."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    ruled = probe.precision_without_probe(precision, device)
    if ruled is not None:
        return ruled
    times = torch_table() if times is None else times
    return probe.choose_precision({p: times[p][-1] for p in ("fp32", "bf16")}, "infers")
