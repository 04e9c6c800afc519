"""Augmentation (SPEC §10.2): torchvision as the independent reference, the same transform for
every frame of a sample, and DALI's GPU-side version equal to the CPU one for fixed parameters."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from lfvila.data import CropBox, augment_eval, augment_train, random_resized_crop_box, read_frames

from ..helpers import write_index_clip

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def _frames(t=3, h=72, w=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=g)


def _torchvision_train(frames, box, flip, size):
    x = frames.permute(0, 3, 1, 2).float() / 255
    x = TF.resized_crop(x, box.top, box.left, box.height, box.width, list(size), antialias=False)
    if flip:
        x = TF.horizontal_flip(x)
    return TF.normalize(x, MEAN, STD).transpose(0, 1)


def test_crop_boxes_follow_random_resized_crop():
    rng = random.Random(0)
    tops = set()
    for _ in range(300):
        b = random_resized_crop_box(240, 300, rng=rng)
        assert 0 <= b.top and b.top + b.height <= 240 and 0 <= b.left and b.left + b.width <= 300
        assert 0.8 * 240 * 300 * 0.98 <= b.height * b.width <= 240 * 300  # rounding of w, h
        assert 3 / 4 * 0.97 <= b.width / b.height <= 4 / 3 * 1.03
        tops.add(b.top)
    assert len(tops) > 10  # random positions, not one box
    # 16:9 frames: no crop of scale >= 0.8 has a ratio <= 4/3, so every draw is torchvision's
    # fallback, the centre crop of ratio 4/3 (as in the original)
    assert {random_resized_crop_box(720, 1280, rng=rng) for _ in range(50)} == {
        CropBox(0, 160, 720, 960)
    }
    # a frame far outside the ratio range falls back to the clamped centre crop
    assert random_resized_crop_box(10, 400, scale=(0.99, 1.0), rng=rng) == CropBox(0, 193, 10, 13)


@pytest.mark.parametrize("flip", [False, True])
def test_train_matches_torchvision_and_is_the_same_for_every_frame(flip):
    frames = _frames()
    box = CropBox(5, 9, 60, 100)
    out = augment_train(frames, box, flip, (48, 80))
    assert out.shape == (3, 3, 48, 80) and out.dtype == torch.float32
    torch.testing.assert_close(out, _torchvision_train(frames, box, flip, (48, 80)))
    for t in range(3):  # each frame alone gets exactly what it got in the stack
        torch.testing.assert_close(
            out[:, t], augment_train(frames[t : t + 1], box, flip, (48, 80))[:, 0]
        )


def test_eval_matches_torchvision():
    frames = _frames(2, 100, 170)
    x = frames.permute(0, 3, 1, 2).float() / 255
    x = TF.resize(x, [240, 428], antialias=False)
    x = TF.center_crop(x, [216, 385])
    x = TF.resize(x, [192, 320], antialias=False)
    expected = TF.normalize(x, MEAN, STD).transpose(0, 1)
    torch.testing.assert_close(augment_eval(frames), expected)


@pytest.fixture(scope="module")
def vp9(tmp_path_factory):
    return write_index_clip(tmp_path_factory.mktemp("v") / "clip.webm", codec="libvpx-vp9")


@pytest.mark.dali
@pytest.mark.parametrize("train", [True, False])
def test_dali_augmentation_equals_cpu_for_fixed_parameters(vp9, train):
    """DALI decodes and augments in its pipeline; the CPU path augments the frames DALI decoded
    with torch. Same crop and flip -> equal to 1e-4 (float32 rounding of the two resizes)."""
    from lfvila.data.dali import decode_and_augment

    indices = [[0, 7, 21], [39, 2, 2]]
    boxes = [CropBox(3, 11, 80, 130), CropBox(0, 0, 96, 160)] if train else None
    flips = [True, False] if train else None
    outs = decode_and_augment([vp9, vp9], indices, boxes, flips, (48, 80), "cpu")
    for k, out in enumerate(outs):
        frames = read_frames(vp9, indices[k], "dali")
        if train:
            expected = augment_train(frames, boxes[k], flips[k], (48, 80))
        else:
            expected = augment_eval(frames, (48, 80))
        assert out.shape == (3, 3, 48, 80)
        torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
