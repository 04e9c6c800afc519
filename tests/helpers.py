"""Shared test helpers (the library-side ones live in lfvila.kernels.testing)."""

from __future__ import annotations

import torch

from lfvila.kernels.testing import assert_close_verbose  # noqa: F401  (re-exported for tests)


def grads(out: torch.Tensor, inputs: list[torch.Tensor], g: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of `out` with upstream `g`; an input the graph does not reach gets zeros."""
    got = torch.autograd.grad(out, inputs, g, allow_unused=True)
    return [torch.zeros_like(x) if d is None else d for d, x in zip(got, inputs)]


def leaves(*tensors, dtype=None, device=None):
    """Detached copies that require grad (None passes through), optionally cast / moved."""
    out = []
    for t in tensors:
        if t is None:
            out.append(None)
            continue
        t = t.detach().to(dtype=dtype or t.dtype, device=device or t.device).clone()
        out.append(t.requires_grad_(True))
    return out


def write_index_clip(path, frames: int = 40, codec: str = "libx264", size=(96, 160), fps: int = 3):
    """A clip whose pixels encode the frame index: a smooth colour gradient (so decoders agree
    closely) with a flat 16x16 block of value 6*i (mod 256) in every channel at the top left.
    libx264 writes .mp4 (PyAV), libvpx-vp9 .webm (DALI's CPU decoder)."""
    import av
    import numpy as np

    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            img = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 128)], -1).astype(
                np.uint8
            )
            img[:16, :16] = (6 * i) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_marks(frames) -> list[int]:
    """The index each decoded frame encodes (see write_index_clip): round(block mean / 6)."""
    return [round(float(f[2:14, 2:14].float().mean()) / 6) for f in frames]
