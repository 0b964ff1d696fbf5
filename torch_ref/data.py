"""Torch side of the data pipeline: the dataset placed on the device once, batched augmentation, normalization.

Sources and batch order come from `flax_resnet.data` (so both trainers see the same images in the same order);
this module only turns uint8 NHWC numpy arrays into device tensors and augments whole NCHW batches with tensor
ops (no per-image Python loop), the torchvision RandomCrop(32, padding=4) + RandomHorizontalFlip + Normalize
recipe.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from flax_resnet.data import CIFAR10_MEAN, CIFAR10_STD


def to_device(images: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 NHWC numpy images -> one contiguous uint8 NCHW tensor on `device` (copied there once)."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 NHWC images, got {images.dtype} with shape {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()


def normalize(
    images: torch.Tensor, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD
) -> torch.Tensor:
    """uint8 NCHW -> float32 (x/255 - mean)/std per channel: torchvision's ToTensor + Normalize on a batch."""
    x = images.to(torch.float32) / 255.0
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (x - m) / s


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Per image: a random HxW window of the zero-padded image, mirrored left-right with p=0.5 (uint8 in/out).

    The batch is padded once; each image's window is gathered with its own row/column offsets (uniform over
    the (2*pad+1)^2 positions) by advanced indexing, and a flip just reverses that image's column indices.
    """
    if images.ndim != 4:
        raise ValueError(f"expected NCHW images, got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    dev = images.device
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=dev)
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    rows = offsets[:, 0:1] + torch.arange(h, device=dev)  # (n, h) rows of the padded image
    cols = offsets[:, 1:2] + torch.arange(w, device=dev)  # (n, w) columns of the padded image
    if flip:
        flips = torch.rand(n, generator=generator, device=dev) < 0.5
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
    chan = torch.arange(c, device=dev).view(1, c, 1, 1)
    return padded[batch, chan, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


def cutout(x: torch.Tensor, generator: torch.Generator, size: int) -> torch.Tensor:
    """Zero a size x size square at a uniformly random center in each NCHW image (clipped at the border).

    Applied to normalized images, so the square takes the dataset's mean colour (DeVries & Taylor 2017).
    """
    n, _, h, w = x.shape
    centers = torch.stack(
        [torch.randint(0, m, (n,), generator=generator, device=x.device) for m in (h, w)], dim=1
    )
    return x * cutout_keep(centers, size, h, w)[:, None].to(x.dtype)


def cutout_keep(centers: torch.Tensor, size: int, h: int, w: int) -> torch.Tensor:
    """(n, h, w) bool: False inside rows/columns [center - size//2, center - size//2 + size) of each image."""
    start = centers - size // 2
    r = torch.arange(h, device=centers.device)
    c = torch.arange(w, device=centers.device)
    rows = (r >= start[:, :1]) & (r < start[:, :1] + size)
    cols = (c >= start[:, 1:]) & (c < start[:, 1:] + size)
    return ~(rows[:, :, None] & cols[:, None, :])
