"""Video decoding: `read_frames(path, indices)` on PyAV (CPU, any codec FFmpeg decodes) or DALI
(GPU NVDEC; on the CPU, DALI's decoder takes VP8, VP9 and MJPEG only), and `can_use_dali`.

Every failure raises `VideoDecodeError` naming the file and the reason: missing, unreadable,
truncated or corrupt, no frames, fewer frames than asked for, a codec the backend cannot decode.
A frame is never silently replaced. Opening, reading and probing a file (`probe`) live in
`lfvila.data.containers`, which the DALI path (`lfvila.data.dali`, imported lazily) uses too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch

from .containers import VideoDecodeError, open_container, probe

__all__ = ["VideoDecodeError", "can_use_dali", "probe", "read_frames", "read_frames_pyav"]

logger = logging.getLogger(__name__)

DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")


def _check_indices(path, indices: Sequence[int]) -> list[int]:
    indices = [int(i) for i in indices]
    if not indices:
        raise VideoDecodeError(path, "no frame indices asked for")
    if min(indices) < 0:
        raise VideoDecodeError(path, f"negative frame index {min(indices)}")
    return indices


def read_frames_pyav(path: str | os.PathLike, indices: Sequence[int]) -> torch.Tensor:
    """Decode the frames at 0-based `indices` (any order, repeats allowed): (N, H, W, 3) uint8."""
    indices = _check_indices(path, indices)
    wanted = set(indices)
    last = max(indices)
    frames: dict[int, np.ndarray] = {}
    container = open_container(path)
    count, size = 0, None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if count in wanted:
                    if size is None:
                        size = frame.width, frame.height
                    # a resolution change inside the file: the first frame's size throughout
                    frames[count] = frame.to_ndarray(format="rgb24", width=size[0], height=size[1])
                count += 1
                if count > last:
                    break
        except Exception as exc:
            raise VideoDecodeError(
                path, f"corrupt or truncated after {count} frames ({exc})"
            ) from exc
    finally:
        container.close()
    if count == 0:
        raise VideoDecodeError(path, "no decodable frames")
    if count <= last:
        raise VideoDecodeError(path, f"asked for frame {last} but the video has {count} frames")
    return torch.from_numpy(np.stack([frames[i] for i in indices]))


def can_use_dali(path: str | os.PathLike | None = None, device: str = "cuda") -> list[str]:
    """Reasons DALI cannot decode `path` on `device` ("cuda" or "cpu"); empty when it can."""
    reasons = []
    try:
        import nvidia.dali  # noqa: F401
    except Exception as exc:
        return [f"nvidia.dali not importable ({type(exc).__name__}: {exc})"]
    if device == "cuda" and not torch.cuda.is_available():
        reasons.append("no CUDA device for DALI's GPU decoder")
    if device == "cpu" and path is not None:
        codec = probe(path, exact=False)["codec"]  # from the header: no decode
        if codec not in DALI_CPU_CODECS:
            reasons.append(
                f"codec {codec} is not supported by DALI's CPU decoder (VP8, VP9, MJPEG only)"
            )
    return reasons


def read_frames(
    path: str | os.PathLike, indices: Sequence[int], backend: str = "auto"
) -> torch.Tensor:
    """Frames at the given 0-based indices, in order: uint8 (N, H, W, 3).

    Args:
        path: a video file.
        indices: frame indices (any order, repeats allowed), e.g. from `lfvila.data.sampling`.
        backend: "pyav" (CPU), "dali" (GPU NVDEC when CUDA is available, else DALI's CPU decoder,
            VP8/VP9/MJPEG only; the tensor comes back on the decoding device) or "auto" (DALI on
            a GPU when it can decode the file, else PyAV). Why DALI was skipped is logged at DEBUG.

    Raises:
        VideoDecodeError naming the file: missing, empty, corrupt or truncated, too short, or a
        codec the backend cannot decode.
    """
    if backend not in ("auto", "pyav", "dali"):
        raise ValueError(f"backend must be 'auto', 'pyav' or 'dali', got {backend!r}")
    indices = _check_indices(path, indices)
    if backend == "pyav":
        return read_frames_pyav(path, indices)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reasons = can_use_dali(path, device)
    if reasons:
        if backend == "dali":
            raise VideoDecodeError(path, "DALI cannot decode it: " + "; ".join(reasons))
        logger.debug("read_frames: PyAV for %s (%s)", path, "; ".join(reasons))
        return read_frames_pyav(path, indices)
    if backend == "auto" and device == "cpu":
        return read_frames_pyav(path, indices)  # DALI's CPU decoder is no faster than PyAV
    from . import dali

    return dali.read_frames(path, indices, device)
