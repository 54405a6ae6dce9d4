"""Tile pixels to model input, in torch on the model's device.

Tiles arrive as ``uint8 [B, H, W, 3]`` tensors; converting each to a PIL image and back (what
Hugging Face processors do) costs more than the forward pass of a small model. Here the batch
moves to the device as uint8 (a quarter of the bytes of float32), and resizing, cropping and
normalisation run there as a few batched tensor operations.

The whole tile is resized to the model's square input, without the centre crop of CLIP's
processor: region boxes are fractions of the tile, so the model must see all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ftfsearch.errors import BadInput

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resample codes used in Hugging Face processor configs -> torch interpolation modes.
_RESAMPLE_MODES = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}


class PixelNorm(nn.Module):
    """``(x - mean) / std`` per RGB channel with the statistics a model was trained with: buffers
    that follow the model to its device, not weights (a model directory does not store them)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def check_images(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate a tile batch (``uint8 [B, H, W, 3]``) and return it as a torch tensor."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise BadInput(f"images: expected a uint8 tensor [B, H, W, 3], got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise BadInput(
            f"images: expected a uint8 tensor [B, H, W, 3], got {images.dtype} {tuple(images.shape)}; "
            "convert tiles to 8-bit RGB first"
        )
    if images.shape[1] < 1 or images.shape[2] < 1:
        raise BadInput(f"images: tiles of size {tuple(images.shape[1:3])} are empty")
    return images


def box_pixels(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Pixel bounds ``(x0, y0, x1, y1)`` of a fractional box, at least one pixel wide and high."""
    x0 = min(int(round(float(box[0]) * width)), width - 1)
    y0 = min(int(round(float(box[1]) * height)), height - 1)
    x1 = max(int(round(float(box[2]) * width)), x0 + 1)
    y1 = max(int(round(float(box[3]) * height)), y0 + 1)
    return x0, y0, x1, y1


@dataclass(frozen=True)
class ImageTransform:
    """Resize to a square input and normalise, as the model's image processor would."""

    size: int
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"

    @classmethod
    def from_processor_config(cls, config: dict[str, Any], size: int) -> ImageTransform:
        """Read mean, std and resampling from a Hugging Face image processor config."""
        mean = tuple(float(v) for v in config.get("image_mean", OPENAI_CLIP_MEAN))
        std = tuple(float(v) for v in config.get("image_std", OPENAI_CLIP_STD))
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise BadInput(f"image processor config: image_mean/image_std must be 3 values (std > 0), got {mean}, {std}")
        mode = _RESAMPLE_MODES.get(int(config.get("resample", 3)), "bicubic")
        return cls(size=size, mean=mean, std=std, interpolation=mode)

    def to_float(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``uint8 [B, H, W, 3]`` -> ``float32 [B, 3, H, W]`` in ``[0, 1]`` on ``device``."""
        x = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
        return x.float().div_(255.0)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        """``float [B, 3, h, w]`` in ``[0, 1]`` -> normalised ``[B, 3, S, S]``."""
        if x.shape[-2:] != (self.size, self.size):
            antialias = self.interpolation in ("bilinear", "bicubic")
            x = F.interpolate(x, size=(self.size, self.size), mode=self.interpolation, antialias=antialias)
            x = x.clamp_(0.0, 1.0)  # bicubic overshoots; PIL clamps to uint8 too
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def __call__(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``uint8 [B, H, W, 3]`` -> model input ``[B, 3, S, S]`` on ``device``."""
        return self.resize(self.to_float(check_images(images), device))

    def crop(self, x: torch.Tensor, box: np.ndarray) -> torch.Tensor:
        """Crop one fractional box out of ``float [B, 3, H, W]`` and resize it to model input."""
        x0, y0, x1, y1 = box_pixels(box, x.shape[-2], x.shape[-1])
        return self.resize(x[:, :, y0:y1, x0:x1])
