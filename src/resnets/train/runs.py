"""A training run's directory: where a new run goes, whether a run can be resumed and with
which settings, its checkpoint to resume from, and the environment recorded beside its config.

What a run directory holds is `RunDir`'s; this module is what training asks of it."""

from __future__ import annotations

import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from resnets.errors import UserError
from resnets.rundir import RunDir
from resnets.train.checkpoint import load_checkpoint
from resnets.train.config import Config
from resnets.train.device import cpu_description
from resnets.train.distributed import (World, broadcast_text, current_world, session)
from resnets.train.state import TRAINING_KEYS, require


# Fields that may change when a run is resumed: they do not change what the run computes
# (skip_bad_images changes only batches that held a file the run could not read: resuming
# with it is how a run that stopped at a broken file goes on).
RESUMABLE_CHANGES = frozenset({"device", "compile", "out", "name", "eval_batch_size",
                               "threads", "workers", "skip_bad_images", "checkpoint_every",
                               "dist_timeout", "tensorboard"})


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
        raise no_run_to_resume(run)
    saved = saved_config(run)
    given = saved.replace(**(overrides or {}))
    check_resumable(saved, given, run)
    return given


def no_run_to_resume(run: RunDir) -> UserError:
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


def saved_config(run: RunDir) -> Config:
    """The config a run was started with (its config.json, less the environment entry)."""
    if not run.config.is_file():
        raise UserError(f"cannot resume {run}: no config.json (not a resnets run directory)")
    return Config.from_dict({k: v for k, v in run.read_config().items() if k != "environment"})


def resume_checkpoint(run: RunDir, config: Config) -> dict:
    if not run.last.is_file() and run.best.is_file():  # a write of last.pt failed
        raise UserError(f"cannot resume {run}: it has no {run.last.name} (its last checkpoint "
                        f"write failed?) but has {run.best} from an evaluation: copy it to "
                        f"{run.last} to resume from that evaluation")
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


def after_failure(run: RunDir) -> str:
    """What a process whose group failed says about the run (rank 0 may be on another machine)."""
    if not run.last.is_file():
        return "no checkpoint was written yet: start the run again"
    return (f"the last checkpoint, {describe_checkpoint(run.last)}, is intact: torchrun "
            f"--max-restarts K goes on from it by itself, or add --resume {run}")


def describe_checkpoint(path: Path) -> str:
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


def environment() -> dict[str, Any]:
    import resnets

    return {"resnets": resnets.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu": cpu_description(),
            "git_commit": _git_commit(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
