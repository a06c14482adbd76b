"""Batched augmentation: pure functions of (images, generator), run on the images' device.

Each function draws its random numbers from the CPU `torch.Generator` it is given (a handful
per batch), so one seed gives the same augmentation on a CPU and on a GPU. Images are
(B, C, H, W) of any dtype; shape, dtype and device are kept.

`within=(rows, total)` says the images are rows `rows` (a slice or an index tensor) of a batch
of `total` images: the numbers are drawn for the whole batch and those rows' are used, so a
process that holds one slice of a batch (torchrun) augments it exactly as one process holding
the whole batch would.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Within = tuple  # (rows: slice | torch.Tensor, total: int)


def _draw(draw, batch: int, within: Within | None) -> torch.Tensor:
    """`draw(n)` for the whole batch, then the rows of this part (`within`)."""
    if within is None:
        return draw(batch)
    rows, total = within
    return draw(total)[rows]


def flip(images: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image left-right with probability `p`."""
    chosen = torch.rand(images.shape[0], generator=generator) < p  # (B,)
    chosen = chosen.to(images.device).view(-1, 1, 1, 1)
    return torch.where(chosen, images.flip(-1), images)


def pad_crop(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Zero-pad each side by `pad` pixels, then crop a random window of the original size.

    The paper's CIFAR augmentation (section 4.2): "4 pixels are padded on each side, and a
    32x32 crop is randomly sampled from the padded image". Each image gets its own offsets.
    """
    if pad == 0:
        return images
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))  # (B, C, H + 2 pad, W + 2 pad), zeros
    top = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(device)
    left = torch.randint(0, 2 * pad + 1, (batch,), generator=generator).to(device)
    # Two gathers (rows, then columns) move each image by its own offset: no Python loop.
    rows = (top.view(-1, 1) + torch.arange(height, device=device)).view(batch, 1, height, 1)
    band = padded.gather(2, rows.expand(batch, channels, height, width + 2 * pad))  # (B, C, H, W + 2 pad)
    cols = (left.view(-1, 1) + torch.arange(width, device=device)).view(batch, 1, 1, width)
    return band.gather(3, cols.expand(batch, channels, height, width))  # (B, C, H, W)


def pad_crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True,
                  within: Within | None = None) -> torch.Tensor:
    """`flip(pad_crop(images, generator, pad), generator)` in one gather (the Loader's path).

    Draws the same random numbers in the same order, so it gives exactly the same images as
    the two functions applied in turn, at about half the memory traffic: each output pixel is
    read straight from its source pixel (or is zero, where the window overhangs the image).
    """
    batch, channels, height, width = images.shape
    device = images.device
    rows = torch.arange(height, device=device).expand(batch, height)  # (B, H) source row of each output row
    cols = torch.arange(width, device=device).expand(batch, width)  # (B, W)
    if pad:
        offsets = lambda n: torch.randint(0, 2 * pad + 1, (n,), generator=generator)  # noqa: E731
        top = _draw(offsets, batch, within).to(device)
        left = _draw(offsets, batch, within).to(device)
        rows = rows + (top - pad).view(-1, 1)
        cols = cols + (left - pad).view(-1, 1)
    if flip:
        chosen = (_draw(lambda n: torch.rand(n, generator=generator), batch, within) < 0.5)
        chosen = chosen.to(device).view(-1, 1)
        cols = torch.where(chosen, cols.flip(-1), cols)
    inside = ((rows >= 0) & (rows < height)).view(batch, 1, height, 1) & ((cols >= 0) & (cols < width)).view(batch, 1, 1, width)
    source = rows.clamp(0, height - 1).view(batch, 1, height, 1) * width + cols.clamp(0, width - 1).view(batch, 1, 1, width)
    flat = images.reshape(batch, channels, height * width)
    out = flat.gather(2, source.view(batch, 1, height * width).expand(batch, channels, height * width))
    return out.view(batch, channels, height, width) * inside  # (B, C, H, W), zeros outside the image


# ImageNet's RGB principal components on the [0, 1] pixel scale (eigenvalues, and eigenvectors
# as columns; rows are R, G, B), as published with AlexNet's colour augmentation and used by
# the ResNet authors' Torch reproduction (fb.resnet.torch).
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = ((-0.5675, 0.7192, 0.4009),
                         (-0.5808, -0.0045, -0.8140),
                         (-0.5836, -0.6948, 0.4203))


def lighting(images: torch.Tensor, generator: torch.Generator, std: float = 0.1,
             scale: torch.Tensor | None = None, within: Within | None = None) -> torch.Tensor:
    """AlexNet's PCA colour augmentation (Krizhevsky et al. 2012, section 4.1): add to every
    pixel of each image sum_j alpha_j * eigenvalue_j * eigenvector_j, alpha_j ~ N(0, std).

    The offset is in [0, 1] pixel units times `scale` (per channel, shape (3,), or (1,) for
    all): pass 255 / the normaliser's std to add it to normalised images, which is the same
    as adding it before normalising. Images are (B, 3, H, W) floats; a new tensor is returned.
    """
    batch = images.shape[0]
    alpha = _draw(lambda n: torch.randn(n, 3, generator=generator), batch, within) * std  # (B, 3)
    values = torch.tensor(IMAGENET_EIGENVALUES)
    vectors = torch.tensor(IMAGENET_EIGENVECTORS)  # (3 channels, 3 components)
    offset = (alpha * values) @ vectors.T  # (B, 3): offset[b, c] = sum_j V[c, j] alpha[b, j] lambda_j
    if scale is not None:
        offset = offset * scale.reshape(1, -1).to(offset.dtype).cpu()
    return images + offset.to(images.device, images.dtype).view(batch, 3, 1, 1)
