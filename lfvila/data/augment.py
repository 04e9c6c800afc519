"""Frame augmentation (SPEC.md §10.2) on the CPU with torch ops; `lfvila.data.dali` computes the
same on the GPU. Every frame of a sample gets the same crop and flip.

- train: RandomResizedCrop to 192x320 (scale 0.8-1.0, ratio 3/4-4/3) and a horizontal flip, then
  ImageNet normalisation;
- eval: Resize(240, 428) -> CenterCrop(216, 385) -> Resize(192, 320) -> normalisation.
Resizes are bilinear without antialiasing (the original's torchvision resized tensors so).
Note (faithful to the original): on frames wider than 4:3 / 0.8 (16:9 included) no crop of
scale >= 0.8 has an aspect ratio within 3/4-4/3, so RandomResizedCrop always falls back to the
centre crop of ratio 4/3; training randomness on such videos is the flip and the frames only.
Clips of different resolutions in one sample (a pre-training window whose clips were cut or
re-encoded apart): the box is drawn for the first clip's size, and a clip of another size gets
the same relative region of its own frame (`lfvila.data.datasets.scale_box`); every clip is then
resized to the output size, so the sample still has one crop and one flip. Frames whose
resolution changes inside one file are decoded at the file's first frame size.
Output: (3, T, H, W) float32.
"""

from __future__ import annotations

import dataclasses
import math
import random

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EVAL_RESIZE, EVAL_CROP = (240, 428), (216, 385)  # Resize, then CenterCrop (SPEC §10.2)


@dataclasses.dataclass(frozen=True)
class CropBox:
    top: int
    left: int
    height: int
    width: int


def random_resized_crop_box(
    height: int,
    width: int,
    scale=(0.8, 1.0),
    ratio=(3 / 4, 4 / 3),
    rng: random.Random | None = None,
) -> CropBox:
    """torchvision's RandomResizedCrop.get_params: 10 tries at a random area and aspect, then a
    centre crop clamped to the ratio range."""
    rng = rng or random
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return CropBox(rng.randint(0, height - h), rng.randint(0, width - w), h, w)
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return CropBox((height - h) // 2, (width - w) // 2, h, w)


def center_crop_offsets(size: tuple[int, int], crop: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of torchvision's CenterCrop: round((size - crop) / 2), Python's round (half to
    even): 240x428 -> 216x385 starts at (12, 22), not (12, 21)."""
    return int(round((size[0] - crop[0]) / 2.0)), int(round((size[1] - crop[1]) / 2.0))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    """x: (T, 3, H, W) in [0, 1] -> (3, T, H, W) normalised."""
    mean = x.new_tensor(IMAGENET_MEAN)[None, :, None, None]
    std = x.new_tensor(IMAGENET_STD)[None, :, None, None]
    return ((x - mean) / std).transpose(0, 1).contiguous()


def augment_train(frames: torch.Tensor, box: CropBox, flip: bool, size=(192, 320)) -> torch.Tensor:
    """frames (T, H, W, 3) uint8 -> (3, T, size) float: crop `box`, resize, optional flip."""
    # crop the uint8 frames first: only the box is converted to float
    crop = frames[:, box.top : box.top + box.height, box.left : box.left + box.width]
    x = _resize(crop.permute(0, 3, 1, 2).float() / 255.0, tuple(size))
    if flip:
        x = x.flip(-1)
    return _normalise(x)


def augment_eval(
    frames: torch.Tensor, size=(192, 320), resize=EVAL_RESIZE, crop=EVAL_CROP
) -> torch.Tensor:
    """frames (T, H, W, 3) uint8 -> (3, T, size) float: resize, centre crop, resize."""
    x = _resize(frames.permute(0, 3, 1, 2).float() / 255.0, tuple(resize))
    top, left = center_crop_offsets(resize, crop)
    x = _resize(x[:, :, top : top + crop[0], left : left + crop[1]], tuple(size))
    return _normalise(x)
