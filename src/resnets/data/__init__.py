"""Datasets as uint8 tensors and a loader that augments whole batches on the device.

    from resnets.data import load, Normalizer, Loader
    train = load("bundled", split="train")            # 1 x 28 x 28 digits, 10 classes
    norm = Normalizer.fit("pixel_mean", train.images)
    loader = Loader(train, 128, shuffle=True, pad=2, flip=train.default_flip,
                    normalizer=norm, device="cpu", seed=0)
    for images, labels in loader.batches(epoch=0): ...

See docs/data.md for the datasets, the splits and the cache.
"""

from resnets.data.dataset import SPLITS, Dataset
from resnets.data.datasets import load
from resnets.data.download import download
from resnets.data.folder import StreamingFolder
from resnets.data.loader import Loader
from resnets.data.normalize import Normalizer

__all__ = ["SPLITS", "Dataset", "Loader", "Normalizer", "StreamingFolder", "download", "load"]
