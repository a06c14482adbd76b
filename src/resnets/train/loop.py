"""`fit` (train a config into a run directory) and `evaluate`.

The loop is deliberately plain: one step is forward under autocast, cross-entropy in fp32,
backward, SGD. The learning rate is set from `lr_at(step)` before every step, and the loader's
batch `i` of epoch `e` depends only on (seed, e, i), so the step counter is the whole position
of a run: a resumed run replays exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import math
import platform
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resnets.errors import UserError
from resnets.models.summary import count_parameters
from resnets.train.checkpoint import (load_checkpoint, rng_state, save_checkpoint,
                                      set_rng_state)
from resnets.train.config import Config
from resnets.train.metrics import (MetricsWriter, Progress, make_progress, read_metrics,
                                   truncate_metrics, write_json)
from resnets.train.schedule import schedule_from_config

# Fields that may change when a run is resumed: they do not change what the run computes.
RESUMABLE_CHANGES = frozenset({"device", "compile", "out", "name", "eval_batch_size"})


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during `fit`: a checkpoint was written; `str(error)` says where and how to resume."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# --------------------------------------------------------------- the other rooms, by name
# Looked up at call time (and patched in tests), so train depends on models and data only
# through these five functions.


def create_model(name: str, **kwargs) -> nn.Module:
    from resnets import create_model as create

    return create(name, **kwargs)


def load_dataset(config: Config, split: str):
    from resnets.data import load

    return load(config.data.data, split, root=config.data_dir, seed=config.split_seed,
                val_fraction=config.val_fraction, image_size=config.image_size)


def fit_normalizer(kind: str, dataset):
    from resnets.data import Normalizer

    return Normalizer.fit(kind, dataset)


def normalizer_from_state(state: dict):
    from resnets.data import Normalizer

    return Normalizer.from_state_dict(state)


def make_loader(dataset, batch_size: int, **kwargs):
    from resnets.data import Loader

    return Loader(dataset, batch_size, **kwargs)


# --------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA if present, else CPU; anything else is checked to exist."""
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
    """"auto" -> bf16 where it is faster than fp32, else fp32.

    bf16 autocast pays on CUDA GPUs that support it and on CPUs with AMX. On a CPU with
    AVX-512 bf16 but no AMX it was measured ~10% slower than fp32 (benchmarks/RESULTS.md), so
    "auto" keeps fp32 there.
    """
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


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor,
               labels: torch.Tensor, *, precision: str = "fp32") -> tuple[torch.Tensor,
                                                                          torch.Tensor]:
    """One SGD step; returns (loss, number correct) as detached tensors (no device sync)."""
    with autocast(images.device, precision):
        logits = model(images)  # (B, classes)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    correct = (logits.detach().argmax(dim=1) == labels).sum()
    return loss.detach(), correct


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, precision: str = "fp32",
             num_classes: int | None = None) -> dict[str, Any]:
    """Loss, top-1 and top-5 error (percent) and per-class top-1 error over `loader`.

    `loader` yields (images, labels) batches already on the model's device. per_class_err is
    a list indexed by class (None for a class with no images). The model is put in eval mode
    and restored to its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    count = 0
    wrong_top1 = 0
    wrong_top5 = 0
    class_total: torch.Tensor | None = None
    class_wrong: torch.Tensor | None = None
    try:
        for images, labels in loader:
            with autocast(images.device, precision):
                logits = model(images)
            logits = logits.float()
            classes = logits.shape[1]
            if class_total is None:
                n = max(classes, num_classes or 0)
                class_total = torch.zeros(n, dtype=torch.long)
                class_wrong = torch.zeros(n, dtype=torch.long)
            loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
            top = logits.topk(min(5, classes), dim=1).indices  # (B, k)
            hit1 = top[:, 0] == labels
            hit5 = (top == labels[:, None]).any(dim=1)
            wrong_top1 += int((~hit1).sum())
            wrong_top5 += int((~hit5).sum())
            labels_cpu = labels.cpu()
            class_total += torch.bincount(labels_cpu, minlength=len(class_total))
            class_wrong += torch.bincount(labels_cpu[~hit1.cpu()], minlength=len(class_total))
            count += len(labels)
    finally:
        model.train(was_training)
    if count == 0:
        raise UserError("nothing to evaluate: the split is empty")
    per_class = [None if int(t) == 0 else 100.0 * int(w) / int(t)
                 for w, t in zip(class_wrong, class_total)]
    return {"loss": loss_sum / count, "err": 100.0 * wrong_top1 / count,
            "err_top5": 100.0 * wrong_top5 / count, "per_class_err": per_class, "n": count}


def image_shape(dataset) -> list[int]:
    """[C, H, W] of a dataset's images (in memory, or streamed from disk)."""
    if hasattr(dataset, "images"):
        return list(dataset.images.shape[1:])
    return list(dataset[0][0].shape)


def _git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def _environment() -> dict[str, Any]:
    import resnets

    return {"resnets": resnets.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "git_commit": _git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}


class _SigintFlag:
    """While active, Ctrl-C sets a flag (checked between steps) instead of raising at an
    arbitrary point, so the checkpoint written on Ctrl-C is a consistent state. A second
    Ctrl-C raises at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class _Meter:
    """Training figures accumulated since the last training line (float64 sums on device)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    steps: int = 0
    images: int = 0
    seconds: float = 0.0

    @classmethod
    def zero(cls, device) -> "_Meter":
        return cls(torch.zeros((), dtype=torch.float64, device=device),
                   torch.zeros((), dtype=torch.long, device=device))

    def state(self) -> dict:
        return {"loss_sum": self.loss_sum.item(), "correct": int(self.correct.item()),
                "steps": self.steps, "images": self.images, "seconds": self.seconds}

    @classmethod
    def from_state(cls, state: dict, device) -> "_Meter":
        meter = cls.zero(device)
        meter.loss_sum += state["loss_sum"]
        meter.correct += state["correct"]
        meter.steps, meter.images = state["steps"], state["images"]
        meter.seconds = state["seconds"]
        return meter


# ------------------------------------------------------------------------------ fit


def fit(config: Config, run_dir: str | Path, *, resume: bool = False,
        progress: str | Progress = "auto") -> dict[str, Any]:
    """Train `config` into `run_dir` and return the summary (also written to summary.json).

    resume: continue from `run_dir/checkpoints/last.pt`; the config must match the saved one
    except for RESUMABLE_CHANGES. A finished run (summary.json present) returns its summary.
    progress: "auto" (a live bar on a terminal, one line per epoch otherwise), "bar",
    "lines", "none", or a `Progress` object.

    Raises `TrainingInterrupted` (a KeyboardInterrupt) after Ctrl-C, once a checkpoint is
    written, and `TrainingDiverged` (a UserError) when the loss stops being finite.
    """
    run_dir = Path(run_dir)
    checkpoint_dir = run_dir / "checkpoints"
    last_path, best_path = checkpoint_dir / "last.pt", checkpoint_dir / "best.pt"
    device = resolve_device(config.device)
    precision = resolve_precision(config.precision, device)
    checkpoint = None
    if resume:
        if not run_dir.is_dir():
            raise UserError(f"cannot resume: run directory not found: {run_dir}")
        if (run_dir / "summary.json").is_file():
            import json

            if last_path.is_file():  # a finished run: nothing to train, but no silent changes
                _check_resumable(config, load_checkpoint(last_path, map_location="cpu"), last_path)
            return json.loads((run_dir / "summary.json").read_text())
        if not last_path.is_file():
            raise UserError(f"cannot resume {run_dir}: it has no checkpoint (the run stopped "
                            f"before its first evaluation); start it again without --resume")
        checkpoint = load_checkpoint(last_path, map_location=device)
        _check_resumable(config, checkpoint, last_path)
        # The arithmetic the run started with, whatever "auto" means on this machine: a
        # resumed run must compute what the uninterrupted one would have.
        precision = checkpoint.get("precision", precision)
    elif last_path.exists() or (run_dir / "summary.json").exists():
        raise UserError(f"run directory {run_dir} already holds a run; resume it with "
                        f"--resume {run_dir}, or choose another --name/--out")
    elif (run_dir / "metrics.jsonl").exists():
        # A run that died before its first checkpoint: nothing to resume, start it afresh.
        (run_dir / "metrics.jsonl").unlink()

    torch.manual_seed(config.seed)
    train_set = load_dataset(config, "train")
    if len(train_set) == 0:
        raise UserError(f"dataset {config.data.data!r} has no training images")
    eval_sets = {split: ds for split in ("val", "test")
                 if len(ds := load_dataset(config, split)) > 0}
    classes = list(train_set.classes)
    input_size = image_shape(train_set)  # [C, H, W]
    model_kwargs = {"num_classes": len(classes), "in_channels": input_size[0],
                    **config.model_args}
    if checkpoint is not None:
        normalizer = normalizer_from_state(checkpoint["normalizer"])
    else:
        normalizer = fit_normalizer(config.normalize, train_set)

    model = create_model(config.model.model, **model_kwargs).to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.wd, nesterov=config.nesterov)
    if len(train_set) < config.batch_size:
        raise UserError(f"batch_size {config.batch_size} is larger than the training set "
                        f"({len(train_set)} images)")
    flip = config.flip if config.flip is not None else getattr(train_set, "default_flip", False)
    loader = make_loader(train_set, config.batch_size, shuffle=True, pad=config.pad, flip=flip,
                         normalizer=normalizer, device=device, seed=config.seed, drop_last=True,
                         channels_last=config.channels_last)
    eval_loaders = {split: make_loader(ds, config.eval_batch_size, shuffle=False, pad=0,
                                       flip=False, normalizer=normalizer, device=device,
                                       seed=config.seed, drop_last=False,
                                       channels_last=config.channels_last)
                    for split, ds in eval_sets.items()}
    steps_per_epoch = len(loader)
    total_steps = (config.iters if config.iters is not None
                   else max(1, round(config.epochs * steps_per_epoch)))
    lr_at = schedule_from_config(config, total_steps)
    log_every = config.log_every or max(1, steps_per_epoch // 10)
    eval_every = config.eval_every or steps_per_epoch
    best_split = "val" if "val" in eval_sets else "test" if "test" in eval_sets else None

    step = 0
    counters = {"time": 0.0, "train_seconds": 0.0, "train_images": 0}
    best = {"step": None, "err": None, "split": best_split}
    meter = _Meter.zero(device)
    if checkpoint is not None:
        if checkpoint["model"] != config.model.model or checkpoint["model_kwargs"] != \
                model_kwargs:
            raise UserError(f"{last_path}: checkpoint is for {checkpoint['model']} "
                            f"{checkpoint['model_kwargs']}, not {config.model.model} "
                            f"{model_kwargs}")
        model.load_state_dict(checkpoint["model_state"])
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        set_rng_state(checkpoint["rng"])
        step = checkpoint["step"]
        counters = dict(checkpoint["progress"]["counters"])
        meter = _Meter.from_state(checkpoint["progress"]["meter"], device)
        best = dict(checkpoint["best"])
        truncate_metrics(run_dir / "metrics.jsonl", step)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", {**config.to_dict(), "environment": {
            **_environment(), "device": str(device), "precision": precision}})

    forward_model = torch.compile(model) if config.compile else model
    model.train()

    def state(at_step: int) -> dict[str, Any]:
        return {"model": config.model.model, "model_kwargs": model_kwargs,
                "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                "step": at_step, "schedule": {"step": at_step, "lr": lr_at(at_step)},
                "rng": rng_state(), "config": config.to_dict(),
                "normalizer": normalizer.state_dict(), "classes": classes,
                "input_size": input_size, "data": config.data.data,
                "progress": {"counters": dict(counters), "meter": meter.state()},
                "best": dict(best), "precision": precision}

    display = progress if isinstance(progress, Progress) else make_progress(progress)
    metrics = MetricsWriter(run_dir / "metrics.jsonl")
    resumed_at = time.perf_counter() - counters["time"]
    last_lr = lr_at(step)

    def flush_train_line() -> None:
        nonlocal meter
        if meter.steps == 0:
            return
        loss = meter.loss_sum.item() / meter.steps
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} near step {step} (lr {last_lr:.4g}); training stopped. "
                f"The last good checkpoint is {_describe_checkpoint(last_path)}. Try a lower "
                f"--lr, a --warmup, or --precision fp32")
        record = {"split": "train", "step": step, "epoch": step / steps_per_epoch,
                  "loss": loss, "err": 100.0 * (1 - meter.correct.item() / meter.images),
                  "lr": last_lr, "img_s": meter.images / max(meter.seconds, 1e-9),
                  "time": time.perf_counter() - resumed_at}
        metrics.write(record)
        display.train(record)
        meter = _Meter.zero(device)

    def run_evaluation() -> None:
        for split, split_loader in eval_loaders.items():
            result = evaluate(forward_model, split_loader, precision=precision,
                              num_classes=len(classes))
            record = {"split": split, "step": step, "epoch": step / steps_per_epoch,
                      "loss": result["loss"], "err": result["err"],
                      "err_top5": result["err_top5"], "time": time.perf_counter() - resumed_at}
            metrics.write(record)
            display.evaluation(record)
            if split == best_split and (best["err"] is None or result["err"] < best["err"]):
                best.update(step=step, err=result["err"])
                counters["time"] = time.perf_counter() - resumed_at
                save_checkpoint(state(step), best_path)

    def save_last() -> None:
        counters["time"] = time.perf_counter() - resumed_at
        save_checkpoint(state(step), last_path)

    try:
        display.start(total_steps, steps_per_epoch, step)
        with _SigintFlag() as sigint:
            while step < total_steps:
                epoch, start = divmod(step, steps_per_epoch)
                tick = time.perf_counter()
                for images, labels in loader.batches(epoch, start):
                    last_lr = lr_at(step)
                    for group in optimizer.param_groups:
                        group["lr"] = last_lr
                    loss, correct = train_step(forward_model, optimizer, images, labels,
                                               precision=precision)
                    step += 1
                    meter.loss_sum += loss
                    meter.correct += correct
                    meter.steps += 1
                    meter.images += len(labels)
                    counters["train_images"] += len(labels)
                    evaluate_now = step % eval_every == 0 or step == total_steps
                    if step % log_every == 0 or step % steps_per_epoch == 0 or evaluate_now:
                        now = time.perf_counter()
                        meter.seconds += now - tick
                        counters["train_seconds"] += now - tick
                        flush_train_line()
                        tick = time.perf_counter()
                    if evaluate_now:
                        run_evaluation()
                        save_last()
                        tick = time.perf_counter()
                    display.step(step)
                    if sigint.requested:
                        now = time.perf_counter()
                        meter.seconds += now - tick
                        counters["train_seconds"] += now - tick
                        if meter.steps and not math.isfinite(meter.loss_sum.item()):
                            flush_train_line()  # raises TrainingDiverged
                        save_last()
                        raise TrainingInterrupted(
                            f"interrupted at step {step}/{total_steps}; checkpoint written to "
                            f"{last_path}; continue with `resnets train --resume {run_dir}`")
                    if step >= total_steps:
                        break
    finally:
        display.close()
        metrics.close()

    records = read_metrics(run_dir / "metrics.jsonl")
    summary = _summary(config, model, records, step, steps_per_epoch, counters, best)
    try:
        from resnets.train.plots import plot_runs

        plot_runs([run_dir], run_dir / "plots")
    except Exception as error:  # a plot failure must not lose a finished run
        display.message(f"warning: plots not drawn ({type(error).__name__}: {error})")
    write_json(run_dir / "summary.json", summary)
    return summary


def _describe_checkpoint(path: Path) -> str:
    if not path.is_file():
        return "none (no checkpoint was written before the loss diverged)"
    try:
        step = load_checkpoint(path)["step"]
    except UserError:
        return f"{path}"
    return f"{path} (step {step})"


def _check_resumable(config: Config, checkpoint: dict, path: Path) -> None:
    saved = Config.from_dict(checkpoint["config"]).flat()
    given = config.flat()
    changed = [f"{key}={saved[key]!r} (given {given[key]!r})" for key in saved
               if key not in RESUMABLE_CHANGES and saved[key] != given[key]]
    if changed:
        raise UserError(f"{path}: cannot resume with a different config: the checkpoint has "
                        f"{'; '.join(changed)}")


def _last(records: list[dict], split: str) -> dict | None:
    matching = [r for r in records if r.get("split") == split]
    return matching[-1] if matching else None


def _summary(config, model, records, step, steps_per_epoch, counters, best) -> dict:
    train, val, test = (_last(records, s) for s in ("train", "val", "test"))
    return {
        "model": config.model.model, "params": count_parameters(model), "steps": step,
        "epochs": step / steps_per_epoch, "time_s": counters["time"],
        "img_s": counters["train_images"] / max(counters["train_seconds"], 1e-9),
        "final": {"train_loss": train and train["loss"], "train_err": train and train["err"],
                  "val_err": val and val["err"], "test_loss": test and test["loss"],
                  "test_err": test and test["err"], "test_err_top5": test and test["err_top5"]},
        "best": {"step": best["step"], "val_err": best["err"], "split": best["split"]},
    }
