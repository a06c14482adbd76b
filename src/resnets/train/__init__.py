"""Training: configs and presets, the lr schedule, the loop, checkpoints, metrics.

    config = resolve_config("quick", overrides={"epochs": 5})
    summary = fit(config, "runs/my-run")
    summary = fit(resume_config("runs/my-run"), "runs/my-run", resume=True)
    trained = load_trained("runs/my-run")          # the model, its normaliser and classes
    evaluate_checkpoint(trained)                   # what `resnets eval` prints, as a dict
    predict_images(trained, ["digit.png"])         # what `resnets predict` prints
"""

from resnets.train.checkpoint import load_checkpoint, save_checkpoint
from resnets.train.config import Config, list_presets, resolve_config
from resnets.train.inference import (InferenceModel, Trained, evaluate_checkpoint, load_trained,
                                     predict_images)
from resnets.train.loop import TrainingDiverged, TrainingInterrupted, fit
from resnets.train.runs import resume_config
from resnets.train.steps import evaluate, train_step
from resnets.train.parts import Parts, default_parts
from resnets.train.schedule import lr_at
from resnets.train.state import TrainState

__all__ = ["Config", "InferenceModel", "Parts", "TrainState", "Trained", "TrainingDiverged",
           "TrainingInterrupted", "default_parts", "evaluate", "evaluate_checkpoint", "fit",
           "list_presets", "load_checkpoint", "load_trained", "lr_at", "predict_images",
           "resolve_config", "resume_config", "save_checkpoint", "train_step"]
