"""`fit` (train a config into a run directory), `train_step` and `evaluate`.

The loop is deliberately plain: one step is forward under autocast, cross-entropy in fp32,
backward, SGD. The learning rate is set from `lr_at(step)` before every step, and the loader's
batch `i` of epoch `e` depends only on (seed, e, i), so the step counter is the whole position
of a run: a resumed run replays exactly what an uninterrupted one would have done. Whether the
steps run compiled is `resnets.train.compile`'s business (`_Training._wrap_model`).

`fit` is three parts: build (`_Training.__init__`: data, model, optimizer, loaders, state,
restored from a checkpoint when resuming), loop (`_Training.loop`), finish (summary, plots).
What a checkpoint holds is `TrainState`'s business; what a run directory holds is `RunDir`'s.
"""

from __future__ import annotations

import contextlib
import json
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
from resnets.models.fold import fold_batchnorm
from resnets.models.fuse import fuse_for_cpu
from resnets.models.summary import activation_bytes, count_parameters
from resnets.modes import eval_mode
from resnets.rundir import RunDir
from resnets.train.checkpoint import load_checkpoint
from resnets.train.compile import StepCompiler
from resnets.train.config import Config
from resnets.train import finetune
from resnets.train.device import (autocast, cpu_threads,
                                  machine_busy_warning, memory_limit, resolve_device,
                                  resolve_threads)
from resnets.train.distributed import (World, any_rank, average_buffers, broadcast_checkpoint,
                                       broadcast_text, collective_errors, convert_sync_bn,
                                       current_world, session, sum_over_ranks, wrap_model)
from resnets.train.metrics import MetricsWriter, read_metrics, truncate_metrics
from resnets.train import parts as parts_module
from resnets.train.parts import Parts
from resnets.train.probe import training_precision
from resnets.train.progress import Progress, make_progress
from resnets.train.schedule import peak_lr, schedule_from_config
from resnets.train.state import TRAINING_KEYS, Counters, Meter, TrainState, require
from resnets.train.tensorboard import Board, check_available as check_tensorboard

# Fields that may change when a run is resumed: they do not change what the run computes
# (skip_bad_images changes only batches that held a file the run could not read: resuming
# with it is how a run that stopped at a broken file goes on).
RESUMABLE_CHANGES = frozenset({"device", "compile", "out", "name", "eval_batch_size",
                               "threads", "workers", "skip_bad_images", "checkpoint_every",
                               "dist_timeout", "tensorboard"})
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
             combine: Callable[[torch.Tensor], torch.Tensor] | None = None,
             on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None
             ) -> dict[str, Any]:
    """Loss, top-1 and top-5 error (percent) and per-class top-1 error over `loader`.

    `loader` yields (images, labels) batches already on the model's device; images of shape
    (B, K, C, H, W) are K crops of each image, judged by their mean softmax (`class_scores`).
    per_class_err is a list indexed by class (None for a class with no images). The model is
    evaluated in eval mode and left in the mode it had. combine: sums the counts of several
    processes that each saw part of every batch (torchrun); it needs `num_classes`.
    `on_batch(images, labels, scores)` is called with every batch (TensorBoard keeps a few
    misclassified images this way).
    """
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, images, top-1 wrong, top-5 wrong
    class_total = class_wrong = None
    if num_classes is not None:
        class_total = torch.zeros(num_classes, dtype=torch.long)
        class_wrong = torch.zeros(num_classes, dtype=torch.long)
    with eval_mode(model):
        for images, labels in loader:
            if len(labels) == 0:  # this process's part of a last, small batch
                continue
            scores = class_scores(model, images, precision)  # (B, classes)
            if on_batch is not None:
                on_batch(images, labels, scores)
            if class_total is None or scores.shape[1] > len(class_total):
                grown = max(scores.shape[1], num_classes or 0)
                class_total = _grown(class_total, grown)
                class_wrong = _grown(class_wrong, grown)
            top = scores.topk(min(5, scores.shape[1]), dim=1).indices  # (B, k)
            hit1 = top[:, 0] == labels
            totals += torch.tensor([F.cross_entropy(scores, labels, reduction="sum").item(),
                                    len(labels), int((~hit1).sum()),
                                    int((~(top == labels[:, None]).any(dim=1)).sum())],
                                   dtype=torch.float64)
            labels_cpu = labels.cpu()
            class_total += torch.bincount(labels_cpu, minlength=len(class_total))
            class_wrong += torch.bincount(labels_cpu[~hit1.cpu()], minlength=len(class_total))
    if combine is not None:
        totals = combine(totals)
        class_total, class_wrong = combine(torch.stack([class_total, class_wrong]))
    loss_sum, count, wrong_top1, wrong_top5 = totals.tolist()
    if count == 0:
        raise UserError("nothing to evaluate: the split is empty")
    per_class = [None if int(t) == 0 else 100.0 * int(w) / int(t)
                 for w, t in zip(class_wrong, class_total)]
    return {"loss": loss_sum / count, "err": 100.0 * wrong_top1 / count,
            "err_top5": 100.0 * wrong_top5 / count, "per_class_err": per_class, "n": int(count)}


def _grown(counts: torch.Tensor | None, size: int) -> torch.Tensor:
    grown = torch.zeros(size, dtype=torch.long)
    if counts is not None:
        grown[:len(counts)] = counts
    return grown


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
        raise _no_run_to_resume(run)
    saved = _saved_config(run)
    given = saved.replace(**(overrides or {}))
    check_resumable(saved, given, run)
    return given


def _no_run_to_resume(run: RunDir) -> UserError:
    path = Path(run.path)
    if path.is_file():  # a checkpoint of a run, or weights from elsewhere
        folder = RunDir(path.parent.parent if path.parent.name == "checkpoints" else path.parent)
        if folder.ours():
            return UserError(f"cannot resume from a file ({path}): --resume takes a run "
                             f"directory, e.g. {folder} (it continues from checkpoints/last.pt)")
        return UserError(f"cannot resume from a file ({path}): --resume takes a run directory; "
                         f"to start a new run from these weights, use --weights {path}")
    return UserError(f"cannot resume: run directory not found: {run}")


def new_run_dir(config: Config, world: World | None = None) -> RunDir:
    """Where a new run of `config` goes: OUT/NAME, or, without a name, a fresh default name
    (MODEL-DATA-TIMESTAMP, numbered if taken) claimed atomically. Under torchrun, rank 0
    decides and every process gets its answer (call it on every process); a job torchrun may
    restart names its run after the rendezvous id, so the restarted group finds it again."""
    world = world or current_world()
    if config.name:
        return RunDir(Path(config.out) / config.name)
    if not world.distributed:
        return RunDir.claim_new(config.out, RunDir.default_name(config.model, config.data))
    path = ""
    if world.main:
        if world.run_id:
            path = str(Path(config.out) / f"{RunDir.default_name(config.model, config.data)}"
                       f"-{_safe(world.run_id)}")
        elif world.max_restarts:
            raise UserError("under torchrun --max-restarts, give the run a --name (or torchrun "
                            "an --rdzv-id), so a restarted group finds the run it continues")
        else:
            path = str(RunDir.claim_new(config.out, RunDir.default_name(config.model,
                                                                        config.data)).path)
    with session(config.device, config.dist_timeout) as (_, device):
        return RunDir(broadcast_text(path, world, device))


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:40]


def fit(config: Config, run_dir: str | Path | None = None, *, resume: bool = False,
        progress: str | Progress = "auto", parts: Parts | None = None) -> dict[str, Any]:
    """Train `config` into `run_dir` and return the summary (also written to summary.json).

    run_dir: where the run goes (None: `new_run_dir(config)`).
    resume: continue from the run's last checkpoint; the config must match the saved one
    except for RESUMABLE_CHANGES. A finished run returns its summary.
    progress: "auto" (a live bar on a terminal, one line per epoch otherwise), "bar",
    "lines", "none", or a `Progress` object. parts: the model and data functions to use
    (default: the real ones).

    Under torchrun every process calls `fit` alike (`resnets.train.distributed`): rank 0
    writes the run directory and shows progress; a group torchrun restarted resumes the run
    from its last checkpoint by itself.

    Raises `TrainingInterrupted` (a KeyboardInterrupt) after Ctrl-C or SIGTERM, once a
    checkpoint is written, and `TrainingDiverged` (a UserError) when the loss stops being
    finite. Two processes never train in one run directory: the second is refused.
    """
    if config.tensorboard:
        check_tensorboard()  # before the run directory is made
    with session(config.device, config.dist_timeout) as (world, device):
        run = RunDir(run_dir) if run_dir is not None else new_run_dir(config, world)
        if world.restarts and run.ours() and (run.finished() or run.last.exists()):
            resume = True  # torchrun restarted the group: go on from the last checkpoint
        if not world.main:
            return _fit(config, run, resume, progress, parts, world, device)
        if resume:
            if not run.exists():
                raise _no_run_to_resume(run)
        elif run.ours() and (run.finished() or run.last.exists()):
            raise UserError(f"run directory {run} already holds a run; resume it with "
                            f"--resume {run}, or choose another --name/--out")
        else:
            run.create()  # refuses a folder resnets did not make
        with run.lock():
            return _fit(config, run, resume, progress, parts, world, device)


def _fit(config: Config, run: RunDir, resume: bool, progress, parts: Parts | None,
         world: World, device: torch.device) -> dict[str, Any]:
    """`fit` once the run directory is settled (and, on rank 0, locked)."""
    finished = ""
    if world.main and resume and run.finished():  # nothing to train, but no silent changes
        check_resumable(_saved_config(run), config, run)
        finished = json.dumps(run.read_summary())
    finished = broadcast_text(finished, world, device)
    if finished:
        return json.loads(finished)
    checkpoint = None
    if world.main:
        checkpoint = _resume_checkpoint(run, config) if resume else None
        if checkpoint is None and run.has_metrics():
            run.clear_partial()  # died before its first checkpoint: start it afresh
    checkpoint = broadcast_checkpoint(checkpoint, world, device)
    try:
        training = _Training(config, run, parts or parts_module.default_parts(), checkpoint,
                             world, device)
    except BaseException:
        if world.main and not resume and run.empty():  # refused before it wrote anything
            run.remove_empty()
        raise
    if not world.main:
        progress = "none"
    display = progress if isinstance(progress, Progress) else make_progress(progress)
    metrics = MetricsWriter(run.metrics) if world.main else _NoMetrics()
    with metrics, training.board, collective_errors(world, lambda: _after_failure(run)):
        try:
            display.start(training.total_steps, training.steps_per_epoch, training.state.step)
            for note in training.notes:
                display.message(note)
            training.loop(metrics, display)
        finally:
            display.close()
        return training.finish(display)


class _NoMetrics(contextlib.nullcontext):
    """What processes other than rank 0 write metrics to: nothing."""

    def write(self, record: dict) -> None:
        pass


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

    def __init__(self, repeat_raises: bool = True):
        # Under torchrun the launcher passes a Ctrl-C on to its workers, which the terminal
        # already sent them: a repeat is then not a second request (torchrun kills workers
        # that do not stop in 30 s itself).
        self.repeat_raises = repeat_raises
        self.requested: int | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        if self.requested is not None and self.repeat_raises:
            raise KeyboardInterrupt
        self.requested = signum

    def __exit__(self, *exc):
        for number, handler in self._previous.items():
            signal.signal(number, handler)


class _Training:
    """One run being trained: built from a config (and a checkpoint when resuming)."""

    def __init__(self, config: Config, run: RunDir, parts: Parts, checkpoint: dict | None,
                 world: World | None = None, device: torch.device | None = None):
        self.config, self.run = config, run
        self.world = world or World()
        self.device = device or resolve_device(config.device)
        self.threads = resolve_threads(config.threads)
        self.notes: list[str] = []  # lines for the display once it has started
        # A resumed run keeps the arithmetic it started with, whatever "auto" means here.
        precision, why = ((checkpoint["precision"], "the precision this run started with")
                          if checkpoint and "precision" in checkpoint
                          else ("", "") if not self.world.main  # rank 0 measures, all follow
                          else training_precision(config.precision, self.device))
        precision, _, why = broadcast_text(f"{precision}:{why}", self.world,
                                           self.device).partition(":")
        self.notes.append(f"precision: {precision} ({config.precision}): {why}"
                          if why != "as set" else f"precision: {precision} (as set)")
        torch.manual_seed(config.seed)
        train_set, eval_sets = self._datasets(parts)
        self.state = self._state(parts, train_set, checkpoint, precision)
        self._loaders(parts, train_set, eval_sets)
        self.lr_at = schedule_from_config(config, self.total_steps,
                                          depth=getattr(self.state.model, "depth", None),
                                          steps_per_epoch=self.steps_per_epoch)
        if checkpoint is not None:
            self.state.load_state_dict(checkpoint, run.last)
            self._resumed_on(checkpoint.get("world_size", 1))
            if self.world.main:
                truncate_metrics(run.metrics, self.state.step)
        else:
            self.state.best["split"] = self.best_split
            if self.world.main:
                write_json(run.config, {**config.to_dict(), "environment": {
                    **_environment(), "device": str(self.device), "precision": precision,
                    "precision_reason": why,
                    "threads": self.threads, "processes": self.world.size}})
        self._wrap_model(checkpoint)
        self.board = Board.open(config.tensorboard and self.world.main, run.path,
                                self.state.step, self.state.normalizer, self.state.labels())
        self.started = time.perf_counter() - self.state.counters.time
        self.lr = self.lr_at(self.state.step)
        busy = machine_busy_warning() if self.world.main else None
        if busy:  # last, so a mistake in the settings is reported first; before the display
            warnings.warn(busy)

    def _wrap_model(self, checkpoint: dict | None) -> None:
        """`forward_model`, what a training step calls (the model, under
        DistributedDataParallel across processes), and `compiler`, which compiles the model's
        units in place when `config.compile` says so (True, or "auto" and the run is long
        enough: resnets.train.compile); a resumed run keeps its checkpoint's decision.
        Evaluation and checkpoints use `state.model` itself."""
        state = self.state
        self.forward_model = wrap_model(state.model, self.device, self.world)
        self.compiler = StepCompiler(
            state.model, self.config.compile, device=self.device,
            total_steps=self.total_steps, start_step=state.step, model_name=self.config.model,
            run_key=(self.config.model, state.model_kwargs, state.input_size,
                     self.config.batch_size, state.precision, self.config.channels_last,
                     self.threads),
            saved=checkpoint.get("compiled") if checkpoint else None,
            on_decision=lambda on: setattr(state, "compiled", on), processes=self.world.size)

    def _resumed_on(self, processes: int) -> None:
        """Keep the rank-0-collects invariant of the meter, and say when the number of
        processes changed (the global batch is the same, its BatchNorm slices are not)."""
        if not self.world.main:
            self.state.meter = Meter.zero(self.device)
        if processes != self.world.size:
            self.notes.append(
                f"note: this run started on {processes} process{'es' if processes > 1 else ''} "
                f"and continues on {self.world.size}: the same global batch of "
                f"{self.config.batch_size}, but BatchNorm now sees slices of "
                f"{self.config.batch_size // self.world.size} images, so it is no longer "
                f"bit-exact with an uninterrupted run")

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
        if config.sync_bn:
            model = convert_sync_bn(model, self.device, self.world)
        finetune.freeze(model, config.freeze)
        model = model.to(self.device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = finetune.optimizer(model, config, peak_lr(config))
        return TrainState(config=config, model=model, model_kwargs=model_kwargs,
                          normalizer=normalizer, classes=list(train_set.classes),
                          class_names=getattr(train_set, "class_names", None),
                          input_size=input_size, precision=precision, optimizer=optimizer,
                          meter=Meter.zero(self.device), counters=Counters(),
                          world_size=self.world.size)

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
        if self.world.distributed:  # each process takes its part of every batch
            common["part"] = self.world.part
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
        state, world = self.state, self.world
        with _StopRequests(repeat_raises=not world.launched) as stop, \
                cpu_threads(self.threads):
            self.compiler.begin(display.message)  # says whether it compiles, and why
            while state.step < self.total_steps:
                epoch, start = divmod(state.step, self.steps_per_epoch)
                tick = time.perf_counter()
                for images, labels in self.loader.batches(epoch, start):
                    self.lr = self.lr_at(state.step)
                    for group in state.optimizer.param_groups:  # the backbone's may be scaled
                        group["lr"] = self.lr * group.get("lr_scale", 1.0)
                    loss, correct = self.compiler.run(train_step, self.forward_model,
                                                      state.optimizer, images, labels,
                                                      precision=state.precision)
                    state.step += 1
                    state.meter.add(loss, correct, len(labels))
                    state.counters.train_images += len(labels) * world.size
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
                    elif self.config.checkpoint_every and step % self.config.checkpoint_every == 0:
                        self._count_training_time(tick)
                        self._save(self.run.last)
                        tick = time.perf_counter()
                    display.step(step)
                    if any_rank(stop.requested is not None, world, self.device):
                        self._count_training_time(tick)
                        self._stop(stop.requested or signal.SIGTERM, metrics, display)
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
        loss_sum, correct, images = self._meter_totals()
        loss = loss_sum / (meter.steps * self.world.size)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} near step {state.step} (lr {self.lr:.4g}); training stopped. "
                f"The last good checkpoint is {_describe_checkpoint(self.run.last)}. Try a "
                f"lower --lr, a --warmup, or --precision fp32")
        record = {"split": "train", "step": state.step,
                  "epoch": state.step / self.steps_per_epoch, "loss": loss,
                  "err": 100.0 * (1 - correct / images), "lr": self.lr,
                  "img_s": images / max(meter.seconds, 1e-9), "time": self._elapsed()}
        metrics.write(record)
        self.board.train(record)
        display.train(record)
        state.meter = Meter.zero(self.device)

    def _meter_totals(self) -> tuple[float, int, int]:
        """(loss sum, correct, images) of the meter over every process. Rank 0's meter holds
        what the others' gave at the last checkpoint (`_collect_meter`); theirs restart at 0."""
        meter = self.state.meter
        totals = torch.tensor([meter.loss_sum.item(), meter.correct.item(), meter.images],
                              dtype=torch.float64)
        loss_sum, correct, images = sum_over_ranks(totals, self.world).tolist()
        return loss_sum, int(correct), int(images)

    def _collect_meter(self) -> None:
        """Move the other processes' meter sums into rank 0's, which the checkpoint saves."""
        if not self.world.distributed:
            return
        meter = self.state.meter
        loss_sum, correct, images = self._meter_totals()
        if self.world.main:
            meter.loss_sum.fill_(loss_sum)
            meter.correct.fill_(correct)
            meter.images = images
        else:
            steps, seconds = meter.steps, meter.seconds
            self.state.meter = Meter.zero(self.device)
            self.state.meter.steps, self.state.meter.seconds = steps, seconds

    def _evaluate(self, metrics: MetricsWriter, display: Progress) -> None:
        state = self.state
        average_buffers(state.model, self.world)  # every rank evaluates the same statistics
        combine = (lambda counts: sum_over_ranks(counts, self.world)) \
            if self.world.distributed else None
        # A copy with BatchNorm folded into the convolutions computes what the model computes
        # in eval mode, up to rounding, without the BN passes (resnets.models.fold); it is
        # made afresh for each evaluation and never checkpointed. On the CPU in fp32 its
        # convolutions, additions and ReLUs also run fused (resnets.models.fuse; under bf16
        # autocast they stay as they are). Uncompiled: compiling eval-mode graphs would not pay.
        with self.compiler.eager():
            model = fold_batchnorm(state.model)
        if state.precision == "fp32":
            model = fuse_for_cpu(model)  # on the CPU; elsewhere as it is
        for split, loader in self.eval_loaders.items():
            wrong = self.board.collector()
            result = evaluate(model, loader, precision=state.precision,
                              num_classes=len(state.classes), combine=combine, on_batch=wrong)
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
        """Write a checkpoint (rank 0; every process calls this at the same step)."""
        average_buffers(self.state.model, self.world)
        self._collect_meter()
        self._note_skipped()
        self.state.counters.time = self._elapsed()
        if self.world.main:
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
        how = f"`resnets train --resume {self.run}`"
        if self.world.distributed:  # as many processes as now keep the run bit-exact
            how = (f"`torchrun --nproc-per-node {self.world.local_size} -m resnets train "
                   f"--resume {self.run}`")
            if self.world.size > self.world.local_size:
                how += " on each machine, with the torchrun options it started with"
        raise TrainingInterrupted(
            f"{what} at step {self.state.step}/{self.total_steps}; checkpoint written to "
            f"{self.run.last}; continue with {how}", signal_number)

    # -------------------------------------------------------------------- the finish
    def finish(self, display: Progress) -> dict[str, Any]:
        """Write summary.json (the run is then finished) and the plots; return the summary
        (on every process: rank 0's)."""
        if not self.world.main:
            return json.loads(broadcast_text(None, self.world, self.device))
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
        broadcast_text(json.dumps(summary), self.world, self.device)
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


def _after_failure(run: RunDir) -> str:
    """What a process whose group failed says about the run (rank 0 may be on another machine)."""
    if not run.last.is_file():
        return "no checkpoint was written yet: start the run again"
    return (f"the last checkpoint, {_describe_checkpoint(run.last)}, is intact: torchrun "
            f"--max-restarts K goes on from it by itself, or add --resume {run}")


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
