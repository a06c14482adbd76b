"""Building a run to train (`fit`'s first part): data, model, optimizer, loaders and state,
restored from a checkpoint when resuming; the loop itself is `resnets.train.loop`'s."""

from __future__ import annotations

import time
import warnings

import torch

from resnets.atomic import write_json
from resnets.errors import UserError
from resnets.models.summary import count_parameters, training_bytes
from resnets.rundir import RunDir
from resnets.train.autocompile import StepCompiler
from resnets.train.config import Config
from resnets.train import finetune
from resnets.train.device import check_memory, machine_busy_warning, resolve_device, resolve_threads
from resnets.train.distributed import World, broadcast_text, convert_sync_bn, wrap_model
from resnets.train.probe import training_precision
from resnets.train.metrics import truncate_metrics
from resnets.train.parts import Parts
from resnets.train.schedule import peak_lr, schedule_from_config
from resnets.train.state import Counters, Meter, TrainState
from resnets.train.tensorboard import Board

from resnets.train.steps import augmentation, image_shape
from resnets.train.runs import (environment)

TRAIN_LINES_PER_EPOCH = 10  # training lines in metrics.jsonl when log_every is 0


class TrainingSetup:
    """A run being trained, built: data, model, optimizer, loaders, state (restored from a
    checkpoint when resuming). `resnets.train.loop` trains it."""

    def __init__(self, config: Config, run: RunDir, parts: Parts, checkpoint: dict | None,
                 world: World | None = None, device: torch.device | None = None):
        self.config, self.run = config, run
        self.world = world or World()
        self.device = device or resolve_device(config.device)
        self.threads = resolve_threads(config.threads)
        self.notes: list[str] = []  # lines for the display once it has started
        precision, why = self._precision(checkpoint)
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
                    **environment(), "device": str(self.device), "precision": precision,
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

    def _precision(self, checkpoint: dict | None) -> tuple[str, str]:
        """(precision, why): a resumed run keeps the arithmetic it started with, whatever
        "auto" means here; else "auto" is measured (resnets.train.probe) by rank 0 and every
        process follows. The first progress line says which and why."""
        precision, why = ((checkpoint["precision"], "the precision this run started with")
                          if checkpoint and "precision" in checkpoint
                          else ("", "") if not self.world.main  # rank 0 measures, all follow
                          else training_precision(self.config.precision, self.device))
        precision, _, why = broadcast_text(f"{precision}:{why}", self.world,
                                           self.device).partition(":")
        self.notes.append(f"precision: {precision} ({self.config.precision}): {why}"
                          if why != "as set" else f"precision: {precision} (as set)")
        return precision, why

    def _wrap_model(self, checkpoint: dict | None) -> None:
        """`forward_model`, what a training step calls (the model, under
        DistributedDataParallel across processes), and `compiler`, which compiles the model's
        units in place when `config.compile` says so (True, or "auto" and the run is long
        enough: resnets.train.autocompile); a resumed run keeps its checkpoint's decision.
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
        check_memory(training_bytes(probe, input_size, self.config.batch_size), self.device,
                     f"training {self.config.model} ({parameters:,} parameters) at batch size "
                     f"{self.config.batch_size} on {list(input_size)} images",
                     "use a smaller --batch-size or model")

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
