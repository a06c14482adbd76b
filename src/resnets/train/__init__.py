"""Training: configs and presets, the lr schedule, the loop, checkpoints, metrics.

    config = resolve_config("quick", overrides={"epochs": 5})
    summary = fit(config, "runs/my-run")
    summary = fit(resume_config("runs/my-run"), "runs/my-run", resume=True)
"""

from resnets.train.checkpoint import load_checkpoint, save_checkpoint
from resnets.train.config import Config, list_presets, resolve_config
from resnets.train.loop import (TrainingDiverged, TrainingInterrupted, evaluate, fit,
                                resume_config, train_step)
from resnets.train.parts import Parts, default_parts
from resnets.train.schedule import lr_at
from resnets.train.state import TrainState

__all__ = ["Config", "Parts", "TrainState", "TrainingDiverged", "TrainingInterrupted",
           "default_parts", "evaluate", "fit", "list_presets", "load_checkpoint", "lr_at",
           "resolve_config", "resume_config", "save_checkpoint", "train_step"]
