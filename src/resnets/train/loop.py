"""`fit` (train a config into a run directory), `train_step` and `evaluate`.

The loop is deliberately plain: one step is forward under autocast, cross-entropy in fp32,
backward, SGD. The learning rate is set from `lr_at(step)` before every step, and the loader's
batch `i` of epoch `e` depends only on (seed, e, i), so the step counter is the whole position
of a run: a resumed run replays exactly what an uninterrupted one would have done. Whether the
steps run compiled is `resnets.train.autocompile`'s business (`_Training._wrap_model`).

`fit` is three parts: build (`resnets.train.setup.TrainingSetup`: data, model, optimizer,
loaders, state, restored from a checkpoint when resuming), loop (`_Training.loop`), finish
(summary, plots). A step and an evaluation are `resnets.train.steps`'; the run directory's
questions (new, resumable, its checkpoint) are `resnets.train.runs`'.
What a checkpoint holds is `TrainState`'s business; what a run directory holds is `RunDir`'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch

from resnets.atomic import write_json
from resnets.errors import UserError
from resnets.models.fold import fold_batchnorm
from resnets.models.fuse import fuse_for_cpu
from resnets.models.summary import count_parameters
from resnets.rundir import RunDir
from resnets.train.config import Config
from resnets.train.device import cpu_threads
from resnets.train.distributed import (World, any_rank, average_buffers, broadcast_checkpoint,
                                       broadcast_text, collective_errors, session, sum_over_ranks)
from resnets.train.eval_policy import evaluation_point, splits_due
from resnets.train.launch import launched_here, resume_command
from resnets.train.metrics import MetricsWriter, read_metrics
from resnets.train import parts as parts_module
from resnets.train.parts import Parts
from resnets.train.progress import Progress, make_progress
from resnets.train.state import Meter
from resnets.train.tensorboard import check_available as check_tensorboard
from resnets.train.runs import (after_failure, check_resumable, describe_checkpoint, new_run_dir,
                                no_run_to_resume, resume_checkpoint, saved_config)
from resnets.train.setup import TrainingSetup
from resnets.train.steps import evaluate, train_step


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during `fit`: a checkpoint was written; `str(error)` says where and
    how to resume; `signal_number` is the signal that stopped it."""

    def __init__(self, message: str, signal_number: int = signal.SIGINT):
        super().__init__(message)
        self.signal_number = signal_number


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


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
                raise no_run_to_resume(run)
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
        check_resumable(saved_config(run), config, run)
        finished = json.dumps(run.read_summary())
    finished = broadcast_text(finished, world, device)
    if finished:
        return json.loads(finished)
    checkpoint = None
    if world.main:
        checkpoint = resume_checkpoint(run, config) if resume else None
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
    with metrics, training.board, collective_errors(world, lambda: after_failure(run)):
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


class _Training(TrainingSetup):
    """One run being trained: built from a config (and a checkpoint when resuming) by
    `TrainingSetup`, then trained by `loop` and closed by `finish`."""

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
                                                      precision=state.precision,
                                                      label_smoothing=self.config.label_smoothing)
                    state.step += 1
                    state.meter.add(loss, correct, len(labels), processes=world.size)
                    state.counters.train_images += len(labels) * world.size
                    step = state.step
                    evaluate_now = evaluation_point(step, total_steps=self.total_steps,
                                                    every=self.eval_every)
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
        loss = loss_sum / meter.steps  # the meter holds each step's global loss (state.Meter)
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"loss is {loss} near step {state.step} (lr {self.lr:.4g}); training stopped. "
                f"The last good checkpoint is {describe_checkpoint(self.run.last)}. Try a "
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
        due = splits_due(state.step, total_steps=self.total_steps, every=self.eval_every,
                         policies={"val": self.config.eval_val, "test": self.config.eval_test},
                         available=self.eval_loaders)
        if not due:  # an evaluation point with every split left for the end
            return
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
        for split in due:
            loader, wrong = self.eval_loaders[split], self.board.collector()
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
        if launched_here():  # `resnets train --nproc-per-node N` started this process
            how = resume_command(self.world.size, self.run)
        elif self.world.distributed:  # as many processes as now keep the run bit-exact
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
