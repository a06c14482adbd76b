"""Training: configs and presets, the lr schedule, the loop, checkpoints, metrics.

    config = resolve_config("quick", overrides={"epochs": 5})
    summary = fit(config, "runs/my-run")
"""

from resnets.train.checkpoint import load_checkpoint, save_checkpoint
from resnets.train.config import Config, list_presets, resolve_config
from resnets.train.loop import TrainingDiverged, TrainingInterrupted, evaluate, fit
from resnets.train.schedule import lr_at

__all__ = ["Config", "TrainingDiverged", "TrainingInterrupted", "evaluate", "fit",
           "list_presets", "load_checkpoint", "lr_at", "resolve_config", "save_checkpoint"]
