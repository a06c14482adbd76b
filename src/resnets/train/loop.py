"""`fit` (train a config into a run directory), `train_step` and `evaluate`.

The loop is deliberately plain: one step is forward under autocast, cross-entropy in fp32,
backward, SGD. The learning rate is set from `lr_at(step)` before every step, and the loader's
batch `i` of epoch `e` depends only on (seed, e, i), so the step counter is the whole position
of a run: a resumed run replays exactly what an uninterrupted one would have done.

`fit` is three parts: build (`_Training.__init__`: data, model, optimizer, loaders, state,
restored from a checkpoint when resuming), loop (`_Training.loop`), finish (summary, plots).
What a checkpoint holds is `TrainState`'s business; what a run directory holds is `RunDir`'s.
"""

from __future__ import annotations

import math
import platform
import signal
import subprocess
import threading
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from resnets.atomic import write_json
from resnets.errors import UserError
from resnets.models.resnet import TRAINING_BYTES_PER_PARAMETER
from resnets.models.summary import activation_bytes, count_parameters
from resnets.modes import eval_mode
from resnets.rundir import RunDir
from resnets.train.checkpoint import load_checkpoint
from resnets.train.config import Config
from resnets.train import finetune
from resnets.train.device import (autocast, cpu_threads, machine_busy_warning, memory_limit,
                                  resolve_device, resolve_precision, resolve_threads)
from resnets.train.metrics import MetricsWriter, read_metrics, truncate_metrics
from resnets.train import parts as parts_module
from resnets.train.parts import Parts
from resnets.train.progress import Progress, make_progress
from resnets.train.schedule import peak_lr, schedule_from_config
from resnets.train.state import TRAINING_KEYS, Counters, Meter, TrainState, require
from resnets.train.tensorboard import Board, check_available as check_tensorboard

# Fields that may change when a run is resumed: they do not change what the run computes
# (skip_bad_images changes only batches that held a file the run could not read: resuming
# with it is how a run that stopped at a broken file goes on).
RESUMABLE_CHANGES = frozenset({"device", "compile", "out", "name", "eval_batch_size",
                               "threads", "workers", "skip_bad_images", "tensorboard"})
TRAIN_LINES_PER_EPOCH = 10  # training lines in metrics.jsonl when log_every is 0


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during `fit`: a checkpoint was written; `str(error)` says where and
    how to resume; `signal_number` is the signal that stopped it."""

    def __init__(self, message: str, signal_number: int = signal.SIGINT):
        super().__init__(message)
        self.signal_number = signal_number


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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


def class_scores(model: nn.Module, images: torch.Tensor, precision: str = "fp32"
                 ) -> torch.Tensor:
    """Scores (B, classes), fp32, whose softmax is the prediction: the logits of a batch
    (B, C, H, W); for several crops of each image (B, K, C, H, W), the log of the mean of the
    K crops' softmax (the paper's 10-crop testing averages the crops' scores)."""
    if images.ndim == 5:
        batch, crops = images.shape[:2]
        with autocast(images.device, precision):
            logits = model(images.flatten(0, 1))  # (B * K, classes)
        probabilities = logits.float().softmax(dim=1).view(batch, crops, -1).mean(dim=1)
        return probabilities.log()
    with autocast(images.device, precision):
        logits = model(images)  # (B, classes)
    return logits.float()


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, precision: str = "fp32",
             num_classes: int | None = None,
             on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
             ) -> dict[str, Any]:
    """Loss, top-1 and top-5 error (percent) and per-class top-1 error over `loader`.

    `loader` yields (images, labels) batches already on the model's device; images of shape
    (B, K, C, H, W) are K crops of each image, judged by their mean softmax (`class_scores`).
    per_class_err is a list indexed by class (None for a class with no images). The model is
    evaluated in eval mode and left in the mode it had. `on_batch(images, labels, scores)` is
    called with every batch (TensorBoard keeps a few misclassified images this way).
    """
    loss_sum, count, wrong_top1, wrong_top5 = 0.0, 0, 0, 0
    class_total = class_wrong = None
    with eval_mode(model):
        for images, labels in loader:
            scores = class_scores(model, images, precision)  # (B, classes)
            if on_batch is not None:
                on_batch(images, labels, scores)
            if class_total is None:
                n = max(scores.shape[1], num_classes or 0)
                class_total = torch.zeros(n, dtype=torch.long)
                class_wrong = torch.zeros(n, dtype=torch.long)
            loss_sum += F.cross_entropy(scores, labels, reduction="sum").item()
            top = scores.topk(min(5, scores.shape[1]), dim=1).indices  # (B, k)
            hit1 = top[:, 0] == labels
            wrong_top1 += int((~hit1).sum())
            wrong_top5 += int((~(top == labels[:, None]).any(dim=1)).sum())
            labels_cpu = labels.cpu()
            class_total += torch.bincount(labels_cpu, minlength=len(class_total))
            class_wrong += torch.bincount(labels_cpu[~hit1.cpu()], minlength=len(class_total))
            count += len(labels)
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
    if getattr(dataset, "image_shape", None) is not None:  # known without decoding a file
        return list(dataset.image_shape)
    return list(dataset[0][0].shape)


def augmentation(config: Config, dataset) -> tuple[int, bool]:
    """(pad, flip) for training on `dataset`: the config's where it sets them, else the
    dataset's own defaults (photos: pad 4 and flips; digits: pad 2, no flips), else none."""
    pad = config.pad if config.pad is not None else getattr(dataset, "default_pad", 0)
    flip = config.flip if config.flip is not None else getattr(dataset, "default_flip", False)
    return pad, flip


def check_resumable(saved: Config, given: Config, where: str | Path) -> None:
    """Refuse to continue a run with settings that change what it computes."""
    saved_values, given_values = saved.to_dict(), given.to_dict()
    changed = [f"{key}={saved_values[key]!r} (given {given_values[key]!r})"
               for key in saved_values
               if key not in RESUMABLE_CHANGES and saved_values[key] != given_values[key]]
    if changed:
        raise UserError(f"{where}: cannot resume with a different config: the run has "
                        f"{'; '.join(changed)}")


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> Config:
    """The saved config of a run directory with `overrides` applied, refused at once if an
    override changes what the run computes (only RESUMABLE_CHANGES may differ)."""
    run = RunDir(run_dir)
    if not run.exists():
        raise UserError(f"cannot resume: run directory not found: {run}")
    saved = _saved_config(run)
    given = saved.replace(**(overrides or {}))
    check_resumable(saved, given, run)
    return given


def new_run_dir(config: Config) -> RunDir:
    """Where a new run of `config` goes: OUT/NAME, or, without a name, a fresh default name
    (MODEL-DATA-TIMESTAMP, numbered if taken) claimed atomically."""
    if config.name:
        return RunDir(Path(config.out) / config.name)
    return RunDir.claim_new(config.out, RunDir.default_name(config.model, config.data))


def fit(config: Config, run_dir: str | Path, *, resume: bool = False,
        progress: str | Progress = "auto", parts: Parts | None = None) -> dict[str, Any]:
    """Train `config` into `run_dir` and return the summary (also written to summary.json).

    resume: continue from the run's last checkpoint; the config must match the saved one
    except for RESUMABLE_CHANGES. A finished run returns its summary.
    progress: "auto" (a live bar on a terminal, one line per epoch otherwise), "bar",
    "lines", "none", or a `Progress` object. parts: the model and data functions to use
    (default: the real ones).

    Raises `TrainingInterrupted` (a KeyboardInterrupt) after Ctrl-C or SIGTERM, once a
    checkpoint is written, and `TrainingDiverged` (a UserError) when the loss stops being
    finite. Two processes never train in one run directory: the second is refused.
    """
    run = RunDir(run_dir)
    if config.tensorboard:
        check_tensorboard()  # before the run directory is made
    if resume:
        if not run.exists():
            raise UserError(f"cannot resume: run directory not found: {run}")
    elif run.ours() and (run.finished() or run.last.exists()):
        raise UserError(f"run directory {run} already holds a run; resume it with "
                        f"--resume {run}, or choose another --name/--out")
    else:
        run.create()  # refuses a folder resnets did not make
    with run.lock():
        if resume and run.finished():  # nothing to train, but no silent changes either
            check_resumable(_saved_config(run), config, run)
            return run.read_summary()
        checkpoint = _resume_checkpoint(run, config) if resume else None
        if checkpoint is None and run.has_metrics():
            run.clear_partial()  # died before its first checkpoint: start it afresh
        try:
            training = _Training(config, run, parts or parts_module.default_parts(), checkpoint)
        except BaseException:
            if not resume and run.empty():  # refused before it wrote anything: leave no litter
                run.remove_empty()
            raise
        display = progress if isinstance(progress, Progress) else make_progress(progress)
        with MetricsWriter(run.metrics) as metrics, training.board:
            try:
                display.start(training.total_steps, training.steps_per_epoch, training.state.step)
                training.loop(metrics, display)
            finally:
                display.close()
        return training.finish(display)


def _saved_config(run: RunDir) -> Config:
    """The config a run was started with (its config.json, less the environment entry)."""
    if not run.config.is_file():
        raise UserError(f"cannot resume {run}: no config.json (not a resnets run directory)")
    return Config.from_dict({k: v for k, v in run.read_config().items() if k != "environment"})


def _resume_checkpoint(run: RunDir, config: Config) -> dict:
    if not run.last.is_file():
        raise UserError(f"cannot resume {run}: it has no checkpoint (the run stopped "
                        f"before its first evaluation); start it again without --resume")
    try:
        checkpoint = load_checkpoint(run.last)
    except UserError as error:
        if not run.best.is_file():
            raise
        raise UserError(f"{error}; {run.best} may still be good: copy it over {run.last} to "
                        f"resume from the best evaluation") from None
    require(checkpoint, TRAINING_KEYS, run.last)  # a hand-edited one: one line, not a KeyError
    _check_checkpoint_config(config, checkpoint, run.last)
    return checkpoint


def _check_checkpoint_config(config: Config, checkpoint: dict, path: Path) -> None:
    if "config" not in checkpoint:
        raise UserError(f"{path}: checkpoint lacks its config (was it edited?)")
    check_resumable(Config.from_dict(checkpoint["config"]), config, path)


class _StopRequests:
    """While active, Ctrl-C (SIGINT) and SIGTERM set a flag, checked between steps, instead of
    raising at an arbitrary point, so the checkpoint written on the way out is a consistent
    state. A second signal raises at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signum

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


class _Training:
    """One run being trained: built from a config (and a checkpoint when resuming)."""

    def __init__(self, config: Config, run: RunDir, parts: Parts, checkpoint: dict | None):
        self.config, self.run = config, run
        self.device = resolve_device(config.device)
        self.threads = resolve_threads(config.threads)
        # A resumed run keeps the arithmetic it started with, whatever "auto" means here.
        precision = (checkpoint.get("precision") if checkpoint and "precision" in checkpoint
                     else resolve_precision(config.precision, self.device))
        torch.manual_seed(config.seed)
        train_set, eval_sets = self._datasets(parts)
        self.state = self._state(parts, train_set, checkpoint, precision)
        self._loaders(parts, train_set, eval_sets)
        self.lr_at = schedule_from_config(config, self.total_steps,
                                          depth=getattr(self.state.model, "depth", None),
                                          steps_per_epoch=self.steps_per_epoch)
        if checkpoint is not None:
            self.state.load_state_dict(checkpoint, run.last)
            truncate_metrics(run.metrics, self.state.step)
        else:
            self.state.best["split"] = self.best_split
            write_json(run.config, {**config.to_dict(), "environment": {
                **_environment(), "device": str(self.device), "precision": precision,
                "threads": self.threads}})
        self.forward_model = torch.compile(self.state.model) if config.compile \
            else self.state.model
        self.board = Board.open(config.tensorboard, run.path, self.state.step,
                                self.state.normalizer, self.state.labels())
        self.started = time.perf_counter() - self.state.counters.time
        self.lr = self.lr_at(self.state.step)
        busy = machine_busy_warning()
        if busy:  # last, so a mistake in the settings is reported first; before the display
            warnings.warn(busy)

    def _datasets(self, parts: Parts):
        train_set = parts.load_dataset(self.config, "train")
        if len(train_set) == 0:
            raise UserError(f"dataset {self.config.data!r} has no training images")
        if len(train_set) < self.config.batch_size:
            raise UserError(f"batch_size {self.config.batch_size} is larger than the training "
                            f"set ({len(train_set)} images)")
        eval_sets = {split: dataset for split in ("val", "test")
                     if len(dataset := parts.load_dataset(self.config, split)) > 0}
        return train_set, eval_sets

    def _state(self, parts: Parts, train_set, checkpoint: dict | None, precision: str
               ) -> TrainState:
        config = self.config
        input_size = image_shape(train_set)  # [C, H, W]
        base_kwargs = {"num_classes": len(train_set.classes), "in_channels": input_size[0],
                       **config.model_args}
        start = None
        if checkpoint is not None:
            model_kwargs = finetune.resumed_kwargs(config, checkpoint, base_kwargs, self.run.last)
            normalizer = parts.normalizer_from_state(checkpoint["normalizer"])
        else:  # from --weights (with the inputs they were trained on), or a fresh start
            start, model_kwargs = finetune.start_weights(config, base_kwargs)
            normalizer = (parts.normalizer_from_state(start.normalizer) if start is not None
                          else parts.fit_normalizer(config.normalize, train_set))
        self._check_memory(parts, model_kwargs, input_size)
        model = parts.create_model(config.model, **model_kwargs)
        if start is not None:
            finetune.load_start(model, start, config.model, list(train_set.classes))
        finetune.freeze(model, config.freeze)
        model = model.to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = finetune.optimizer(model, config, peak_lr(config))
        return TrainState(config=config, model=model, model_kwargs=model_kwargs,
                          normalizer=normalizer, classes=list(train_set.classes),
                          class_names=getattr(train_set, "class_names", None),
                          input_size=input_size, precision=precision, optimizer=optimizer,
                          meter=Meter.zero(self.device), counters=Counters())

    def _check_memory(self, parts: Parts, model_kwargs: dict, input_size: list[int]) -> None:
        """Refuse, before anything is allocated, a model and batch whose training state cannot
        fit on the device: parameters and optimizer state plus the batch's activations,
        estimated from a model built on the meta device."""
        with torch.device("meta"):
            probe = parts.create_model(self.config.model, **model_kwargs)
        parameters = count_parameters(probe)
        need = (parameters * TRAINING_BYTES_PER_PARAMETER
                + activation_bytes(probe, input_size) * self.config.batch_size)
        have = memory_limit(self.device)
        if have is not None and need > have:
            raise UserError(f"{self.config.model} ({parameters:,} parameters) at batch size "
                            f"{self.config.batch_size} on {list(input_size)} images needs about "
                            f"{need / 2**30:,.1f} GiB to train, more than the "
                            f"{have / 2**30:,.1f} GiB of {self.device}; use a smaller "
                            f"--batch-size or model")

    def _loaders(self, parts: Parts, train_set, eval_sets: dict) -> None:
        config, normalizer = self.config, self.state.normalizer
        pad, flip = augmentation(config, train_set)
        common = {"normalizer": normalizer, "device": self.device, "seed": config.seed,
                  "channels_last": config.channels_last, "workers": config.workers}
        self.loader = parts.make_loader(train_set, config.batch_size, shuffle=True,
                                        pad=pad, flip=flip, drop_last=True,
                                        augment=config.augment, lighting=config.lighting,
                                        **common)
        self.eval_loaders = {split: parts.make_loader(dataset, config.eval_batch_size,
                                                      shuffle=False, pad=0, flip=False,
                                                      drop_last=False, **common)
                             for split, dataset in eval_sets.items()}
        self.steps_per_epoch = len(self.loader)
        self.total_steps = (config.iters if config.iters is not None
                            else max(1, round(config.epochs * self.steps_per_epoch)))
        self.log_every = config.log_every or max(1, self.steps_per_epoch
                                                 // TRAIN_LINES_PER_EPOCH)
        self.eval_every = config.eval_every or self.steps_per_epoch
        self.best_split = next((s for s in ("val", "test") if s in eval_sets), None)

    # ---------------------------------------------------------------------- the loop
    def loop(self, metrics: MetricsWriter, display: Progress) -> None:
        """Train until total_steps, writing metrics, evaluating and checkpointing as set."""
        state = self.state
        with _StopRequests() as stop, cpu_threads(self.threads):
            while state.step < self.total_steps:
                epoch, start = divmod(state.step, self.steps_per_epoch)
                tick = time.perf_counter()
                for images, labels in self.loader.batches(epoch, start):
                    self.lr = self.lr_at(state.step)
                    for group in state.optimizer.param_groups:  # the backbone's may be scaled
                        group["lr"] = self.lr * group.get("lr_scale", 1.0)
                    loss, correct = train_step(self.forward_model, state.optimizer, images,
                                               labels, precision=state.precision)
                    state.step += 1
                    state.meter.add(loss, correct, len(labels))
                    state.counters.train_images += len(labels)
                    step = state.step
                    evaluate_now = step % self.eval_every == 0 or step == self.total_steps
                    if step % self.log_every == 0 or step % self.steps_per_epoch == 0 \
                            or evaluate_now:
                        self._count_training_time(tick)
                        self._write_train_line(metrics, display)
                        tick = time.perf_counter()
                    if evaluate_now:
                        self._evaluate(metrics, display)
                        self._save(self.run.last)
                        tick = time.perf_counter()
                    display.step(step)
                    if stop.requested is not None:
                        self._count_training_time(tick)
                        self._stop(stop.requested, metrics, display)
                    if step >= self.total_steps:
                        break

    def _count_training_time(self, tick: float) -> None:
        seconds = time.perf_counter() - tick
        self.state.meter.seconds += seconds
        self.state.counters.train_seconds += seconds

    def _elapsed(self) -> float:
        return time.perf_counter() - self.started

    def _write_train_line(self, metrics: MetricsWriter, display: Progress) -> None:
        state, meter = self.state, self.state.meter
        if meter.steps == 0:
            return
        loss = meter.loss_sum.item() / meter.steps
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} near step {state.step} (lr {self.lr:.4g}); training stopped. "
                f"The last good checkpoint is {_describe_checkpoint(self.run.last)}. Try a "
                f"lower --lr, a --warmup, or --precision fp32")
        record = {"split": "train", "step": state.step,
                  "epoch": state.step / self.steps_per_epoch, "loss": loss,
                  "err": 100.0 * (1 - meter.correct.item() / meter.images), "lr": self.lr,
                  "img_s": meter.images / max(meter.seconds, 1e-9), "time": self._elapsed()}
        metrics.write(record)
        self.board.train(record)
        display.train(record)
        state.meter = Meter.zero(self.device)

    def _evaluate(self, metrics: MetricsWriter, display: Progress) -> None:
        state = self.state
        for split, loader in self.eval_loaders.items():
            wrong = self.board.collector()
            result = evaluate(self.forward_model, loader, precision=state.precision,
                              num_classes=len(state.classes), on_batch=wrong)
            record = {"split": split, "step": state.step,
                      "epoch": state.step / self.steps_per_epoch, "loss": result["loss"],
                      "err": result["err"], "err_top5": result["err_top5"],
                      "time": self._elapsed()}
            metrics.write(record)
            self.board.evaluation(record, wrong)
            display.evaluation(record)
            best = state.best
            if split == self.best_split and (best["err"] is None or result["err"] < best["err"]):
                best.update(step=state.step, err=result["err"])
                self._save(self.run.best)

    def _note_skipped(self) -> None:
        """Add the unreadable images the loaders met since the last call to the counters."""
        known = self.state.counters.skipped
        seen = set(known)
        for loader in (self.loader, *self.eval_loaders.values()):
            for message in getattr(loader, "skipped", ()):
                if message not in seen:
                    seen.add(message)
                    known.append(message)

    def _save(self, path: Path) -> None:
        self._note_skipped()
        self.state.counters.time = self._elapsed()
        self.state.save(path, self.lr_at(self.state.step))

    def _stop(self, signal_number: int, metrics: MetricsWriter, display: Progress) -> None:
        """Checkpoint and raise TrainingInterrupted (or TrainingDiverged if the loss since the
        last line is not finite: that state is not worth keeping)."""
        meter = self.state.meter
        if meter.steps and not math.isfinite(meter.loss_sum.item()):
            self._write_train_line(metrics, display)  # raises TrainingDiverged
        self._save(self.run.last)
        what = "interrupted" if signal_number == signal.SIGINT else \
            f"stopped by {signal.Signals(signal_number).name}"
        raise TrainingInterrupted(
            f"{what} at step {self.state.step}/{self.total_steps}; checkpoint written to "
            f"{self.run.last}; continue with `resnets train --resume {self.run}`",
            signal_number)

    # -------------------------------------------------------------------- the finish
    def finish(self, display: Progress) -> dict[str, Any]:
        """Write summary.json (the run is then finished) and the plots; return the summary."""
        self._note_skipped()
        summary = self._summary(read_metrics(self.run.metrics))
        skipped = self.state.counters.skipped
        if skipped:
            display.message(f"warning: skipped {len(skipped)} unreadable image"
                            f"{'s' if len(skipped) > 1 else ''} (e.g. {skipped[0]})")
        try:
            from resnets.train.plots import plot_runs

            plot_runs([self.run.path], self.run.plots)
        except Exception as error:  # a plot failure must not lose a finished run
            display.message(f"warning: plots not drawn ({type(error).__name__}: {error})")
        write_json(self.run.summary, summary)
        return summary

    def _summary(self, records: list[dict]) -> dict[str, Any]:
        train, val, test = (_last(records, s) for s in ("train", "val", "test"))
        state, counters = self.state, self.state.counters
        return {
            "model": self.config.model, "params": count_parameters(state.model),
            "steps": state.step, "epochs": state.step / self.steps_per_epoch,
            "time_s": counters.time,
            "img_s": counters.train_images / max(counters.train_seconds, 1e-9),
            "final": {"train_loss": train and train["loss"], "train_err": train and train["err"],
                      "val_err": val and val["err"], "test_loss": test and test["loss"],
                      "test_err": test and test["err"],
                      "test_err_top5": test and test["err_top5"]},
            "best": {"step": state.best["step"], "val_err": state.best["err"],
                     "split": state.best["split"]},
            "skipped_images": len(counters.skipped),
        }


def _last(records: list[dict], split: str) -> dict | None:
    matching = [r for r in records if r.get("split") == split]
    return matching[-1] if matching else None


def _describe_checkpoint(path: Path) -> str:
    if not path.is_file():
        return "none (no checkpoint was written before the loss diverged)"
    try:
        step = load_checkpoint(path)["step"]
    except (UserError, KeyError):
        return f"{path}"
    return f"{path} (step {step})"


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
