"""NVIDIA DALI decoding and augmentation (imported lazily: nothing else imports nvidia.dali).

One pipeline per (device, batch size, mode) is built once per process and fed through external
sources: the encoded file bytes, the frame indices (computed by `lfvila.data.sampling`, so DALI
decodes exactly the frames PyAV would) and, for augmentation, the crop box and flip drawn on the
host. On a GPU frames are decoded by NVDEC ("mixed" backend) and cropped, resized, flipped and
normalised on the GPU; on the CPU DALI decodes only VP8, VP9 and MJPEG.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from .augment import (
    EVAL_CROP,
    EVAL_RESIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropBox,
    center_crop_offsets,
)

logger = logging.getLogger(__name__)

# Fed one batch at a time and run at once: no prefetching ahead of the caller's inputs.
_SYNC = dict(
    num_threads=max(1, min(4, os.cpu_count() or 1)),
    prefetch_queue_depth=1,
    exec_async=False,
    exec_pipelined=False,
)


def _device_id(device: str) -> int | None:
    return torch.cuda.current_device() if device == "cuda" else None


@functools.lru_cache(maxsize=8)
def _decode_pipeline(device: str, batch_size: int):
    @pipeline_def(batch_size=batch_size, device_id=_device_id(device), **_SYNC)
    def pipe():
        data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        return fn.decoders.video(data, device="mixed" if device == "cuda" else "cpu", frames=frames)

    p = pipe()
    p.build()
    return p


def _read_bytes(path) -> np.ndarray:
    with open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8)


def _to_torch(tensor_list, index: int, device: str) -> torch.Tensor:
    if device == "cuda":
        out = torch.empty(tensor_list[index].shape(), dtype=torch.uint8, device="cuda")
        from nvidia.dali.plugin.pytorch import feed_ndarray

        feed_ndarray(tensor_list[index], out, cuda_stream=torch.cuda.current_stream())
        return out
    return torch.from_numpy(np.array(tensor_list[index]))


def read_frames(path, indices: Sequence[int], device: str) -> torch.Tensor:
    """(N, H, W, 3) uint8 frames at `indices`; validity of the indices is the caller's concern
    (`lfvila.data.video.read_frames` checks them against the probed frame count)."""
    from .video import VideoDecodeError, probe

    count = probe(path)["num_frames"]
    if max(indices) >= count:  # DALI would pad silently: never return a wrong frame
        raise VideoDecodeError(
            path, f"asked for frame {max(indices)} but the video has {count} frames"
        )
    p = _decode_pipeline(device, 1)
    p.feed_input("data", [_read_bytes(path)])
    p.feed_input("frames", [np.asarray(indices, dtype=np.int32)])
    try:
        (out,) = p.run()
    except Exception as exc:
        raise VideoDecodeError(
            path, f"DALI could not decode it ({type(exc).__name__}: {exc})"
        ) from exc
    return _to_torch(out.as_cpu() if device == "cpu" else out, 0, device)


_LINEAR = dict(interp_type=types.INTERP_LINEAR, antialias=False, dtype=types.FLOAT)


@functools.lru_cache(maxsize=8)
def _augment_pipeline(device: str, batch_size: int, size: tuple[int, int], evaluation: bool):
    """Resizes are linear without antialiasing, as the CPU path (`lfvila.data.augment`)."""

    @pipeline_def(batch_size=batch_size, device_id=_device_id(device), **_SYNC)
    def pipe():
        data = fn.external_source(name="data", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        video = fn.decoders.video(
            data, device="mixed" if device == "cuda" else "cpu", frames=frames
        )
        if evaluation:  # resize to EVAL_RESIZE, then the centre EVAL_CROP resized to `size`
            video = fn.resize(video, size=list(EVAL_RESIZE), **_LINEAR)
            top, left = center_crop_offsets(EVAL_RESIZE, EVAL_CROP)
            video = fn.resize(
                video,
                size=list(size),
                roi_start=[top, left],
                roi_end=[top + EVAL_CROP[0], left + EVAL_CROP[1]],
                roi_relative=False,
                **_LINEAR,
            )
            flip = 0
        else:  # the sampled crop box and resize in one op, then the sampled flip
            roi_start = fn.external_source(name="roi_start", dtype=types.FLOAT, ndim=1)
            roi_end = fn.external_source(name="roi_end", dtype=types.FLOAT, ndim=1)
            flip = fn.external_source(name="flip", dtype=types.INT32, ndim=0)
            video = fn.resize(
                video,
                size=list(size),
                roi_start=roi_start,
                roi_end=roi_end,
                roi_relative=False,
                **_LINEAR,
            )
        mean, std = [255.0 * m for m in IMAGENET_MEAN], [255.0 * s for s in IMAGENET_STD]
        return fn.crop_mirror_normalize(
            video, dtype=types.FLOAT, output_layout="CFHW", mirror=flip, mean=mean, std=std
        )

    p = pipe()
    p.build()
    return p


def decode_and_augment(
    paths: Sequence,
    indices: Sequence[Sequence[int]],
    boxes: Sequence[CropBox] | None,
    flips: Sequence[bool] | None,
    size: tuple[int, int],
    device: str,
) -> list[torch.Tensor]:
    """Decode the frames at `indices` of each path and augment them inside DALI: with `boxes`,
    crop each box (pixels), resize to `size` and apply `flips` (training); with boxes None, the
    evaluation resize / centre crop / resize. Returns one (3, T, H, W) float32 tensor per path,
    on `device`; equal to `lfvila.data.augment` on the same decoded frames."""
    p = _augment_pipeline(device, len(paths), tuple(size), boxes is None)
    p.feed_input("data", [_read_bytes(path) for path in paths])
    p.feed_input("frames", [np.asarray(i, dtype=np.int32) for i in indices])
    if boxes is not None:
        p.feed_input("roi_start", [np.array([b.top, b.left], dtype=np.float32) for b in boxes])
        p.feed_input(
            "roi_end",
            [np.array([b.top + b.height, b.left + b.width], dtype=np.float32) for b in boxes],
        )
        p.feed_input("flip", [np.array(int(f), dtype=np.int32) for f in flips])
    try:
        (out,) = p.run()
    except Exception as exc:
        from .video import VideoDecodeError

        raise VideoDecodeError(
            ", ".join(map(str, paths)), f"DALI failed on this batch ({exc})"
        ) from exc
    if device == "cpu":
        return [torch.from_numpy(np.array(out[i])) for i in range(len(paths))]
    from nvidia.dali.plugin.pytorch import feed_ndarray

    tensors = []
    for i in range(len(paths)):
        t = torch.empty(out[i].shape(), dtype=torch.float32, device="cuda")
        feed_ndarray(out[i], t, cuda_stream=torch.cuda.current_stream())
        tensors.append(t)
    return tensors


class DaliLoader:
    """Batches of a `lfvila.data.datasets` dataset decoded and augmented by DALI: the dataset
    plans each item on the host (frame indices, crop, flip, text; replacements for unreadable
    files), DALI decodes and augments every clip of the batch in one run, and the clips of an
    item are concatenated in time. Yields dicts of stacked tensors, videos on `device`.

    `sampler` yields item indices or (epoch, index) pairs (`EpochSampler`). When DALI fails on a
    batch, its items are decoded again on the CPU (PyAV, the same frames and crops), where an
    unreadable file is replaced or raises as the dataset's rules say; the event is logged."""

    def __init__(
        self, dataset, sampler, batch_size: int, drop_last: bool = True, device: str = "cuda"
    ):
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.drop_last, self.device = drop_last, device
        self.batch_failures = 0

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        batch = []
        for key in self.sampler:
            batch.append(key if isinstance(key, tuple) else (None, key))
            if len(batch) == self.batch_size:
                yield self._batch(batch)
                batch = []
        if batch and not self.drop_last:
            yield self._batch(batch)

    def _batch(self, keys) -> dict:
        items = [self.dataset.with_replacement(i, decode=False, epoch=e) for e, i in keys]
        plans = [item.pop("plan") for item in items]
        paths, frames, boxes, flips, owners = [], [], [], [], []
        for k, plan in enumerate(plans):
            for path, idx in plan.files:
                paths.append(path)
                frames.append(idx)
                boxes.append(plan.box)
                flips.append(plan.flip)
                owners.append(k)
        evaluation = plans[0].box is None
        try:
            videos = decode_and_augment(
                paths,
                frames,
                None if evaluation else boxes,
                None if evaluation else flips,
                tuple(self.dataset.opt.size),
                self.device,
            )
        except Exception as exc:
            self.batch_failures += 1
            logger.warning("DALI failed on a batch (%s); decoding it with PyAV", exc)
            return self._pyav_batch(keys)
        per_item = [
            torch.cat([v for v, o in zip(videos, owners) if o == k], dim=1)
            for k in range(len(items))
        ]
        out = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        out["video"] = torch.stack(per_item)
        return out

    def _pyav_batch(self, keys) -> dict:
        """The same items decoded on the CPU (same plans: they depend only on epoch and index)."""
        items = [
            self.dataset.with_replacement(i, decode=True, epoch=e, backend="pyav") for e, i in keys
        ]
        out = {key: torch.stack([item[key] for item in items]) for key in items[0]}
        out["video"] = out["video"].to(self.device)
        return out
