"""NVIDIA DALI decoding and augmentation (imported lazily: nothing else imports nvidia.dali).

A pipeline takes one external source per batch: the encoded file bytes, the frame indices
(computed by `lfvila.data.sampling`, so DALI decodes exactly the frames PyAV would) and, for
augmentation, the crop box and flip drawn on the host. On a GPU frames are decoded by NVDEC
("mixed" backend) and cropped, resized, flipped and normalised on the GPU; on the CPU DALI
decodes only VP8, VP9 and MJPEG.

Errors. The video decoder runs with out-of-range padding off (`pad_mode="none"`; DALI's
default pads with black frames), so a frame index past the end of a file is an error. DALI
invalidates a pipeline that raised ("Current pipeline object is no longer valid"): it is
dropped and rebuilt, never run again, and the batch that failed is decoded clip by clip to find
the file(s) at fault. Every error names its file.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from torch.utils.data import DataLoader, Dataset, get_worker_info

from .augment import (
    EVAL_CROP,
    EVAL_RESIZE,
    IMAGENET_MEAN,
    IMAGENET_STD,
    CropBox,
    center_crop_offsets,
)
from .containers import VideoDecodeError, probe, read_bytes

logger = logging.getLogger(__name__)

_THREADS = max(1, min(4, os.cpu_count() or 1))
# One batch in, one batch out, at once: read_frames, decode_and_augment and the clip-by-clip
# decode of a batch that failed.
_SYNC = dict(prefetch_queue_depth=1, exec_async=False, exec_pipelined=False)
_LINEAR = dict(interp_type=types.INTERP_LINEAR, antialias=False, dtype=types.FLOAT)


@dataclasses.dataclass
class Clip:
    """One file's part of a batch: its bytes (uint8, (n,)), the frames to decode and, in
    training, the crop box (pixels of this file's frames) and the flip."""

    path: str
    data: np.ndarray | torch.Tensor
    frames: list[int]
    box: CropBox | None = None
    flip: bool = False


class DaliFailure(RuntimeError):
    """DALI raised while running a batch (the reason is DALI's, shortened)."""


def _reason(exc: Exception) -> str:
    """DALI's own words from its (long, multi-line) error message."""
    text = str(exc)
    if "encountered:" in text:
        text = text.split("encountered:", 1)[1]
    text = text.split("C++ context:", 1)[0].split("Current pipeline object", 1)[0].strip()
    if text.startswith("Assert on") and " failed: " in text:
        text = text.split(" failed: ", 1)[1]
    return " ".join(text.split()) or type(exc).__name__


def _device_id(device: str) -> int | None:
    return torch.cuda.current_device() if device == "cuda" else None


def _build(device: str, batch_size: int, mode: str, size, source, depth: int | None):
    """A pipeline of `mode` "decode" (frames as decoded, uint8 NHWC), "eval" (resize, centre
    crop, resize, normalise) or "train" (the sampled box resized to `size`, the sampled flip,
    normalise), fed by `source()` (a callable returning one batch of inputs, see `_inputs`).
    depth None: synchronous (outputs valid until the next run); an int: asynchronous and
    pipelined with `depth` batches in flight (DALI's default executor, which allocates every
    output anew). Resizes are linear without antialiasing, as the CPU path (`augment`)."""
    execution = _SYNC if depth is None else dict(prefetch_queue_depth=depth)

    @pipeline_def(
        batch_size=batch_size, device_id=_device_id(device), num_threads=_THREADS, **execution
    )
    def pipe():
        if mode == "train":
            data, frames, roi_start, roi_end, flip = fn.external_source(
                source=source,
                num_outputs=5,
                batch=True,
                dtype=[types.UINT8, types.INT32, types.FLOAT, types.FLOAT, types.INT32],
                ndim=[1, 1, 1, 1, 0],
            )
        else:
            data, frames = fn.external_source(
                source=source, num_outputs=2, batch=True, dtype=[types.UINT8, types.INT32],
                ndim=[1, 1],
            )  # fmt: skip
        video = fn.decoders.video(
            data, device="mixed" if device == "cuda" else "cpu", frames=frames, pad_mode="none"
        )
        if mode == "decode":
            return video
        if mode == "eval":  # resize to EVAL_RESIZE, then the centre EVAL_CROP resized to `size`
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


def _inputs(clips: Sequence[Clip], mode: str) -> tuple[list, ...]:
    data = [c.data.numpy() if isinstance(c.data, torch.Tensor) else c.data for c in clips]
    frames = [np.asarray(c.frames, dtype=np.int32) for c in clips]
    if mode != "train":
        return data, frames
    return (
        data,
        frames,
        [np.array([c.box.top, c.box.left], dtype=np.float32) for c in clips],
        [np.array([c.box.top + c.box.height, c.box.left + c.box.width], np.float32) for c in clips],
        [np.array(int(c.flip), dtype=np.int32) for c in clips],
    )


def _tensors(out, count: int, device: str, mode: str, copy: bool = True) -> list:
    """The `count` samples of a DALI output: copies (a synchronous pipeline reuses its output
    buffers), or with copy=False on the CPU read-only numpy views (an asynchronous pipeline, whose
    executor allocates every output anew: the views stay valid; `DaliLoader` copies each clip
    once, into its batch)."""
    if device == "cpu":
        if not copy:
            return [np.asarray(out[i]) for i in range(count)]
        return [torch.from_numpy(np.array(out[i])) for i in range(count)]
    from nvidia.dali.plugin.pytorch import feed_ndarray

    dtype = torch.uint8 if mode == "decode" else torch.float32
    tensors = []
    for i in range(count):
        t = torch.empty(out[i].shape(), dtype=dtype, device="cuda")
        feed_ndarray(out[i], t, cuda_stream=torch.cuda.current_stream())
        tensors.append(t)
    return tensors


class _Slot:
    """The source of a synchronous pipeline: the batch put in before each run."""

    def __init__(self):
        self.batch = None

    def __call__(self):
        batch, self.batch = self.batch, None
        return batch


# Synchronous pipelines by (device, batch size, mode, size): built once per process, dropped
# when they raise (DALI invalidates them).
_pipelines: collections.OrderedDict = collections.OrderedDict()
_MAX_PIPELINES = 8


def _run(device: str, mode: str, size, clips: Sequence[Clip]) -> list[torch.Tensor]:
    """Run `clips` as one batch on the cached synchronous pipeline; DaliFailure when DALI
    raises, after dropping the pipeline."""
    key = (device, len(clips), mode, None if size is None else tuple(size))
    if key not in _pipelines:
        slot = _Slot()
        _pipelines[key] = (_build(device, len(clips), mode, size, slot, None), slot)
        while len(_pipelines) > _MAX_PIPELINES:
            _pipelines.popitem(last=False)
    _pipelines.move_to_end(key)
    pipe, slot = _pipelines[key]
    slot.batch = _inputs(clips, mode)
    try:
        (out,) = pipe.run()
    except Exception as exc:
        del _pipelines[key]
        raise DaliFailure(_reason(exc)) from exc
    return _tensors(out, len(clips), device, mode)


def _decode_each(clips: Sequence[Clip], mode: str, size, device: str) -> list:
    """Each clip alone: its tensor, or the VideoDecodeError naming its file."""
    results = []
    for clip in clips:
        try:
            results.append(_run(device, mode, size, [clip])[0])
        except DaliFailure as exc:
            results.append(VideoDecodeError(clip.path, f"DALI could not decode it ({exc})"))
    return results


def _mode(boxes) -> str:
    return "eval" if boxes is None else "train"


def read_frames(path, indices: Sequence[int], device: str) -> torch.Tensor:
    """(N, H, W, 3) uint8 frames at `indices`, on `device`. The frame count is the probe's (the
    container header, else the packets: no decode); an index DALI cannot deliver raises."""
    count = probe(path, exact=False)["num_frames"]
    if max(indices) >= count:
        raise VideoDecodeError(
            path, f"asked for frame {max(indices)} but the video has {count} frames"
        )
    clip = Clip(str(path), np.frombuffer(read_bytes(path), dtype=np.uint8), list(indices))
    try:
        return _run(device, "decode", None, [clip])[0]
    except DaliFailure as exc:
        raise VideoDecodeError(path, f"DALI could not decode it ({exc})") from exc


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
    on `device`; equal to `lfvila.data.augment` on the same decoded frames.

    When DALI fails on the batch, its clips are decoded one by one and the first that fails
    raises VideoDecodeError naming its file (the others decoded)."""
    mode = _mode(boxes)
    clips = [
        Clip(
            str(p),
            np.frombuffer(read_bytes(p), dtype=np.uint8),
            list(idx),
            None if boxes is None else boxes[i],
            False if flips is None else bool(flips[i]),
        )
        for i, (p, idx) in enumerate(zip(paths, indices))
    ]
    try:
        return _run(device, mode, size, clips)
    except DaliFailure as exc:
        logger.warning("DALI failed on a batch (%s); decoding it clip by clip", exc)
        results = _decode_each(clips, mode, size, device)
    for r in results:
        if isinstance(r, VideoDecodeError):
            raise r
    return results


# --- the loader ----------------------------------------------------------------------------


def _ignore_sigint(worker_id: int) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _clip_box(plan, i: int) -> CropBox | None:
    return plan.clip_box(i) if hasattr(plan, "clip_box") else plan.box


def _bytes_tensor(data: bytes) -> np.ndarray | torch.Tensor:
    """In a DataLoader worker, a shared-memory tensor (it reaches the training process without a
    copy through the pipe); in the training process, a view of the bytes."""
    array = np.frombuffer(data, dtype=np.uint8)
    if get_worker_info() is None:
        return array
    t = torch.empty(len(array), dtype=torch.uint8).share_memory_()
    t.numpy()[:] = array
    return t


@dataclasses.dataclass
class _HostBatch:
    """A batch's host half: per item its (epoch, index) and text/labels (stacked in `fields`),
    the clips DALI decodes (`owners[j]`: the item of clip j), and the videos of items already
    decoded on the host (their file vanished between planning and reading: PyAV replaced it)."""

    keys: list[tuple[int | None, int]]
    fields: dict[str, torch.Tensor]
    clips: list[Clip]
    owners: list[int]
    decoded: dict[int, torch.Tensor]


class _Planner(Dataset):
    """The host half of a DaliLoader item (planning, text encoding, file bytes), run in
    DataLoader worker processes."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (None, key)
        item = self.dataset.with_replacement(index, decode=False, epoch=epoch)
        plan = item.pop("plan")
        served = int(item["index"])
        try:  # the bytes the plan's probes read (kept for this), else one read each
            clips = [
                Clip(path, _bytes_tensor(read_bytes(path)), idx, _clip_box(plan, i), plan.flip)
                for i, (path, idx) in enumerate(plan.files)
            ]
        except VideoDecodeError as exc:  # gone since its probe: decoded (or replaced) by PyAV
            logger.warning("%s; item %d decoded on the host", exc, served)
            failures, replaced = item["decode_failures"], item["replaced"]
            item = self.dataset.with_replacement(served, decode=True, epoch=epoch, backend="pyav")
            item["decode_failures"] = item["decode_failures"] + failures
            item["replaced"] = replaced if replaced.any() else item["replaced"]  # one request
            return (epoch, served), item, None
        return (epoch, served), item, clips


def _collate(samples) -> _HostBatch:
    fields = {
        k: torch.stack([item[k] for _, item, _ in samples]) for k in samples[0][1] if k != "video"
    }
    batch = _HostBatch([key for key, _, _ in samples], fields, [], [], {})
    for k, (_, item, clips) in enumerate(samples):
        if clips is None:
            batch.decoded[k] = item["video"]
            continue
        batch.clips += clips
        batch.owners += [k] * len(clips)
    return batch


class _Feed:
    """One epoch's batches on their way through DALI: `ready` (planned, not yet in DALI),
    `inflight` (handed to DALI, in order; a batch without clips passes through it untouched)."""

    def __init__(self, host, mode: str):
        self.host, self.mode = host, mode
        self.ready: collections.deque[_HostBatch] = collections.deque()
        self.inflight: collections.deque[_HostBatch] = collections.deque()
        self.exhausted = False
        self.error: BaseException | None = None

    def pull(self, dali_batches: int) -> None:
        """Plan batches until `ready` holds `dali_batches` with clips (or the epoch ends). An
        error of the host side is kept and raised when the batches before it are consumed."""
        while not self.exhausted and sum(bool(b.clips) for b in self.ready) < dali_batches:
            try:
                self.ready.append(next(self.host))
            except StopIteration:
                self.exhausted = True
            except Exception as exc:
                self.exhausted, self.error = True, exc

    def __call__(self):
        """DALI's source: the next batch with clips (batches without pass to `inflight`)."""
        while self.ready and not self.ready[0].clips:
            self.inflight.append(self.ready.popleft())
        if not self.ready:
            raise StopIteration
        batch = self.ready.popleft()
        self.inflight.append(batch)
        return _inputs(batch.clips, self.mode)


class DaliLoader:
    """Batches of a `lfvila.data.datasets` dataset decoded and augmented by DALI. Yields dicts
    of stacked tensors (the dataset's fields; `video` (B, 3, T, H, W) on `device`), in the
    sampler's order.

    The host half of each item (its plan: frame indices, crop, flip; its text, tokenised; its
    files' bytes, read once: the plan's probes keep them) runs in `workers` DataLoader worker
    processes (0: in this process, as each batch is scheduled). DALI runs asynchronously
    with `prefetch` batches in flight: while the training step holds batch k, batches k+1 ..
    k+prefetch are being decoded and augmented, and the workers plan the ones after.

    `sampler` yields item indices or (epoch, index) pairs (`EpochSampler`). When DALI fails on a
    batch, its pipeline is dropped and rebuilt, and the batch is decoded clip by clip: items
    whose clips all decode keep DALI's frames; an item whose clip fails is decoded with PyAV
    through the dataset (`with_replacement`), which records it as unreadable, counts it and
    replaces it in training (or raises in evaluation), or decodes it when only DALI cannot.
    `batch_failures` counts the batches DALI failed on."""

    def __init__(
        self,
        dataset,
        sampler,
        batch_size: int,
        drop_last: bool = True,
        device: str = "cuda",
        workers: int = 0,
        prefetch: int = 2,
    ):
        if workers < 0 or prefetch < 1:
            raise ValueError(f"workers must be >= 0 and prefetch >= 1, got {workers}, {prefetch}")
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.drop_last, self.device = drop_last, device
        self.workers, self.prefetch = workers, prefetch
        self.batch_failures = 0
        self.pipeline = None
        """The running DALI pipeline (rebuilt after an error and every epoch)."""
        self._mode = "eval" if not dataset.train else "train"
        self._max_clips = 0
        self._host_loader: DataLoader | None = None

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _host(self):
        if self._host_loader is None:
            self._host_loader = DataLoader(
                _Planner(self.dataset),
                batch_size=self.batch_size,
                sampler=self.sampler,
                num_workers=self.workers,
                collate_fn=_collate,
                drop_last=self.drop_last,
                persistent_workers=self.workers > 0,
                worker_init_fn=_ignore_sigint if self.workers > 0 else None,
                generator=torch.Generator().manual_seed(0),  # never draws from torch's stream
            )
        return iter(self._host_loader)

    def __iter__(self):
        feed = _Feed(self._host(), self._mode)
        try:
            while True:
                batch, results = self._next(feed)
                if batch is None:
                    return
                yield self._assemble(batch, results)
        finally:
            self.pipeline = None  # a new epoch (or an abandoned one) starts on a new pipeline

    def _start(self, feed: _Feed) -> None:
        feed.pull(self.prefetch)
        if not feed.ready:
            return
        self._max_clips = max(self._max_clips, 1, *(len(b.clips) for b in feed.ready))
        self.pipeline = _build(
            self.device,
            self._max_clips,
            self._mode,
            tuple(self.dataset.opt.size),
            feed,
            self.prefetch,
        )
        self.pipeline.schedule_run()  # DALI takes `prefetch` batches from the feed

    def _next(self, feed: _Feed):
        """(host batch, per clip a tensor or a VideoDecodeError), or (None, None) at the end."""
        if not feed.inflight:
            self._start(feed)
        if not feed.inflight:
            if feed.error is not None:
                raise feed.error
            return None, None
        batch = feed.inflight[0]
        if not batch.clips:
            feed.inflight.popleft()
            return batch, []
        try:
            (out,) = self.pipeline.outputs()
            results = _tensors(out, len(batch.clips), self.device, self._mode, copy=False)
        except Exception as exc:
            # DALI invalidated the pipeline: drop it and decode this batch clip by clip; the
            # batches it had already taken go back to the feed, for the next pipeline
            feed.inflight.popleft()
            feed.ready.extendleft(reversed(feed.inflight))
            feed.inflight.clear()
            self.pipeline = None
            self.batch_failures += 1
            logger.warning(
                "DALI failed on a batch (%s); decoding its %d clips one by one",
                _reason(exc),
                len(batch.clips),
            )
            size = tuple(self.dataset.opt.size)
            return batch, _decode_each(batch.clips, self._mode, size, self.device)
        feed.inflight.popleft()
        feed.pull(1)
        self.pipeline.schedule_run()  # the next batch decodes while this one trains
        return batch, results

    def _assemble(self, batch: _HostBatch, results: list) -> dict:
        """The batch dict; each clip is copied once, into its place in time of its item's video
        (on the CPU these copies, not the decode, would otherwise dominate the wait)."""
        out = batch.fields
        first = [len(c.frames) for c, owner in zip(batch.clips, batch.owners) if owner == 0]
        if first:
            frames, (height, width) = sum(first), self.dataset.opt.size
        else:
            _, frames, height, width = batch.decoded[0].shape
        video = torch.empty(len(batch.keys), 3, frames, height, width, device=self.device)
        for k, (epoch, index) in enumerate(batch.keys):
            if k in batch.decoded:
                video[k].copy_(batch.decoded[k])
                continue
            clips = [r for r, owner in zip(results, batch.owners) if owner == k]
            error = next((r for r in clips if isinstance(r, VideoDecodeError)), None)
            if error is None:
                start = 0
                for clip in clips:
                    part = video[k, :, start : start + clip.shape[1]]
                    if isinstance(clip, np.ndarray):  # a read-only view of DALI's output
                        np.copyto(part.numpy(), clip)
                    else:
                        part.copy_(clip)
                    start += clip.shape[1]
                continue
            logger.warning("%s; item %d, decoding it with PyAV", error, index)
            item = self.dataset.with_replacement(index, decode=True, epoch=epoch, backend="pyav")
            item["decode_failures"] = item["decode_failures"] + out["decode_failures"][k]
            if out["replaced"][k].any():  # the planned item was a replacement already
                item["replaced"] = out["replaced"][k]
            for key in out:
                out[key][k] = item[key]
            video[k].copy_(item["video"])
        out["video"] = video
        return out
