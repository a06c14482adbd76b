"""What training and inference need from the model and data rooms, declared in one place.

`Parts` holds five functions: build a model by name, load a dataset split for a config, fit a
normaliser, rebuild one from its state, and make a loader. `default_parts()` gives the real
ones (`resnets.create_model`, `resnets.data.load`, ...). `fit`, `load_trained` and
`evaluate_checkpoint` take a `parts=` argument, so a test or a user can train the loop on
stand-ins (a tiny model, generated data) without patching any module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class Parts:
    create_model: Callable[..., nn.Module]        # (name, **kwargs) -> model
    load_dataset: Callable[[Any, str], Any]       # (config, split) -> Dataset
    fit_normalizer: Callable[[str, Any], Any]     # (kind, dataset) -> Normalizer
    normalizer_from_state: Callable[[dict], Any]  # (state dict) -> Normalizer
    # (dataset, batch_size, **options) -> Loader; options: shuffle, pad, flip, normalizer,
    # device, seed, drop_last, channels_last, workers, and augment, lighting (training) or
    # crops (evaluation): see resnets.data.Loader
    make_loader: Callable[..., Any]


def load_dataset(config, split: str):
    """One split of the config's dataset, with its split, image-size and cropping settings."""
    from resnets.data import load

    return load(config.data, split, root=config.data_dir, seed=config.split_seed,
                val_fraction=config.val_fraction, image_size=config.image_size,
                augment=config.augment, crop_size=config.crop_size,
                resize_size=config.resize_size, skip_bad_images=config.skip_bad_images,
                image_crop=getattr(config, "image_crop", None))


def default_parts() -> Parts:
    """The real model registry, datasets, normaliser and loader."""
    from resnets.data import Loader, Normalizer
    from resnets.models import create_model

    return Parts(create_model=create_model, load_dataset=load_dataset,
                 fit_normalizer=Normalizer.fit,
                 normalizer_from_state=Normalizer.from_state_dict, make_loader=Loader)
