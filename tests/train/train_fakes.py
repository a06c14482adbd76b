"""Tiny stand-ins for the model and data rooms, built to the interfaces in the brief."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn



@dataclass
class FakeDataset:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: list
    name: str = "fake"

    def __len__(self):
        return len(self.labels)


def make_dataset(n: int, seed: int, channels: int = 1, size: int = 8, classes: int = 4):
    """Class k is a bright quadrant k on noise: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    images = torch.randint(0, 60, (n, channels, size, size), generator=g)
    half = size // 2
    for k in range(classes):
        row, col = divmod(k % 4, 2)
        images[labels == k, :, row * half:(row + 1) * half, col * half:(col + 1) * half] += 150
    return FakeDataset(images.to(torch.uint8), labels, [f"class{k}" for k in range(classes)])


class FakeNormalizer:
    def __init__(self, kind, mean, std):
        self.kind, self.mean, self.std = kind, mean, std

    @classmethod
    def fit(cls, kind, images):
        x = getattr(images, "images", images).float()
        return cls(kind, x.mean(dim=(0, 2, 3), keepdim=True)[0],
                   x.std(dim=(0, 2, 3), keepdim=True)[0])

    def __call__(self, images):
        return ((images.float() - self.mean.to(images.device)) / self.std.to(images.device))

    def state_dict(self):
        return {"kind": self.kind, "mean": self.mean, "std": self.std}

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["kind"], state["mean"], state["std"])


class FakeLoader:
    """Batch i of epoch e is a pure function of (seed, e, i), as the real Loader promises."""

    made: list = []  # the options of every loader made, for tests of what training asks for

    def __init__(self, dataset, batch_size, *, shuffle, pad=0, flip=False, normalizer=None,
                 device="cpu", seed=0, drop_last=True, channels_last=False, **options):
        FakeLoader.made.append({"shuffle": shuffle, "pad": pad, "flip": flip, **options})
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.pad, self.normalizer, self.device, self.seed = pad, normalizer, device, seed
        self.drop_last, self.channels_last = drop_last, channels_last
        self.epoch = 0

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        return self.batches(self.epoch)

    def batches(self, epoch, start=0):
        n = len(self.dataset)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(
            self.seed * 1000 + epoch)) if self.shuffle else torch.arange(n))
        for i in range(start, len(self)):
            index = order[i * self.batch_size:(i + 1) * self.batch_size]
            images = self.dataset.images[index].float()
            if self.pad:
                g = torch.Generator().manual_seed((self.seed * 1000 + epoch) * 1000 + i)
                shift = torch.randint(-self.pad, self.pad + 1, (2,), generator=g).tolist()
                images = torch.roll(images, shifts=shift, dims=(2, 3))
            if self.normalizer is not None:
                images = self.normalizer(images)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images.to(self.device), self.dataset.labels[index].to(self.device)


class TinyNet(nn.Module):
    def __init__(self, num_classes=4, in_channels=1, width=8):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x):
        x = self.pool(self.act(self.bn(self.conv(x))))  # (B, width, 2, 2)
        return self.fc(x.flatten(1))


def fake_create_model(name, **kwargs):
    if not name.startswith("tiny"):
        raise ValueError(f"fake registry has only tiny*, not {name}")
    return TinyNet(**kwargs)


SPLIT_SIZES = {"train": 96, "val": 32, "test": 40}


def fake_load_dataset(config, split):
    if split == "val" and config.val_fraction == 0:
        return make_dataset(0, seed=1)
    return make_dataset(SPLIT_SIZES[split], seed={"train": 0, "val": 1, "test": 2}[split])


def tiny_config(**overrides):
    from resnets.train import resolve_config

    values = {"model": "tiny", "data": "fake", "iters": 12, "batch_size": 16, "lr": 0.1,
              "warmup": 2, "pad": 0, "device": "cpu", "eval_every": 4, "log_every": 1}
    values.update(overrides)
    return resolve_config(overrides=values)
