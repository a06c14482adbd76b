"""Input normalisation fitted on the training images.

kind "pixel_mean": the paper's (section 3.4, 4.2) per-pixel mean subtraction, x - mean_image,
    then divided by 255 so inputs span about [-1, 1] (BatchNorm follows the first convolution,
    so the scale changes nothing but the size of the first layer's weights).
kind "channel":    per-channel standardisation, (x - mean_c) / std_c, on the [0, 1] scale.
kind "none":       x / 255.
"""

from __future__ import annotations

import torch

from resnets.errors import UserError

KINDS = ("pixel_mean", "channel", "none")
FIT_SAMPLE = 2048  # images drawn to fit a dataset streamed from disk
CHUNK_VALUES = 1 << 24  # pixel values converted to float64 at a time while fitting


class Normalizer:
    """Maps uint8 (or float in [0, 255]) images (B, C, H, W) to float32 model inputs."""

    def __init__(self, kind: str, mean: torch.Tensor, std: torch.Tensor):
        if kind not in KINDS:
            raise UserError(f"unknown normalisation {kind!r}: expected one of {', '.join(KINDS)}")
        self.kind = kind
        self.mean = mean.float()  # on the [0, 255] scale: (C, H, W) for pixel_mean, (C, 1, 1) else
        self.std = std.float()  # on the [0, 255] scale, broadcastable like mean

    @classmethod
    def fit(cls, kind: str, images) -> "Normalizer":
        """Fit on training images: a uint8 tensor (N, C, H, W) or a dataset.

        A dataset streamed from disk contributes a fixed sample of up to 2,048 images.
        """
        if kind not in KINDS:
            raise UserError(f"unknown normalisation {kind!r}: expected one of {', '.join(KINDS)}")
        if not isinstance(images, torch.Tensor):
            if hasattr(images, "images"):
                images = images.images
            elif kind == "none":  # a streamed RGB folder: nothing to fit, nothing to decode
                return cls(kind, torch.zeros(3, 1, 1), torch.full((3, 1, 1), 255.0))
            else:
                images = images.sample(FIT_SAMPLE)
        if images.ndim != 4 or images.shape[0] == 0:
            raise UserError(f"cannot fit a normaliser on images of shape {tuple(images.shape)}: expected (N>0, C, H, W)")
        channels = images.shape[1]
        if kind == "none":
            return cls(kind, torch.zeros(channels, 1, 1), torch.full((channels, 1, 1), 255.0))
        # Sum in float64 in chunks of at most CHUNK_VALUES values (sums of integers, exact in
        # any order): no (N, C, H, W) float copy of a large set, 128 MB at ImageNet's 224 x 224.
        total = torch.zeros(images.shape[1:], dtype=torch.float64)
        total_sq = torch.zeros(images.shape[1:], dtype=torch.float64)
        for chunk in images.split(max(1, CHUNK_VALUES // images[0].numel())):
            chunk = chunk.to("cpu", torch.float64)
            total += chunk.sum(0)
            total_sq += chunk.square().sum(0)
        n = images.shape[0]
        if kind == "pixel_mean":
            return cls(kind, (total / n).float(), torch.full((channels, 1, 1), 255.0))
        count = n * images.shape[2] * images.shape[3]
        mean = total.sum((1, 2)) / count
        var = (total_sq.sum((1, 2)) / count - mean.square()).clamp_min(1e-6)
        return cls(kind, mean.view(-1, 1, 1).float(), var.sqrt().view(-1, 1, 1).float())

    def to(self, device) -> "Normalizer":
        return Normalizer(self.kind, self.mean.to(device), self.std.to(device))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        mean = self.mean if self.mean.device == images.device else self.mean.to(images.device)
        std = self.std if self.std.device == images.device else self.std.to(images.device)
        return images.to(torch.float32, copy=True).sub_(mean).div_(std)  # one new tensor, the caller's untouched

    def state_dict(self) -> dict:
        """Plain tensors and a string: safe to save and load with weights_only=True."""
        return {"kind": self.kind, "mean": self.mean.cpu(), "std": self.std.cpu()}

    @classmethod
    def from_state_dict(cls, state: dict) -> "Normalizer":
        try:
            kind, mean, std = state["kind"], state["mean"], state["std"]
        except (KeyError, TypeError):
            raise UserError(f"normaliser state has keys {sorted(state)}: expected kind, mean, std") from None
        if not (isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)):
            raise UserError(f"normaliser mean and std must be tensors, got {type(mean).__name__} "
                            f"and {type(std).__name__}")
        check_range(mean, "mean", low=0.0, high=255.0)
        check_range(std, "std", low=0.0, high=255.0, low_included=False)
        return cls(kind, mean, std)

    def __repr__(self) -> str:
        return f"Normalizer(kind={self.kind!r}, mean shape {tuple(self.mean.shape)})"


def check_range(values: torch.Tensor, name: str, *, low: float, high: float,
                low_included: bool = True) -> None:
    """A UserError unless every value is finite and in [low, high] ((low, high] without
    `low_included`): a normaliser read from a file (pixel values on the [0, 255] scale; a std
    of 0 or NaN would send every image to the same answer)."""
    values = values.detach().double()
    if values.numel() == 0:
        raise UserError(f"normaliser {name} is empty")
    above = values > low if not low_included else values >= low
    bad = ~(torch.isfinite(values) & above & (values <= high))
    if bad.any():
        first = values[bad][0].item()
        bounds = f"{'[' if low_included else '('}{low:g}, {high:g}]"
        raise UserError(f"normaliser {name} holds {first!r} ({int(bad.sum())} of "
                        f"{values.numel()} values outside {bounds}, the pixel scale)")
