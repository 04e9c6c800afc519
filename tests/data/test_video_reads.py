"""How a clip is read: the codec and the frame count from the container header (no decode, no
demux when the header has the count), one open per clip per epoch, bounded caches."""

from __future__ import annotations

import builtins
import collections
import json

import pytest

from lfvila.data import DataOptions, build_dataset, containers, probe, read_frames

from ..helpers import frame_marks, write_index_clip

# PyAV is optional (the GPU image has none): skip this module, not error, without it.
av = pytest.importorskip("av")

SMALL = dict(size=(48, 80), max_tokens=16)


class _Counting:
    """A PyAV container that counts the frames it decodes and the packets it demuxes."""

    def __init__(self, container, counts):
        self._c, self._counts = container, counts

    def __getattr__(self, name):
        return getattr(self._c, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._c.close()

    def decode(self, *args, **kwargs):
        for frame in self._c.decode(*args, **kwargs):
            self._counts["decoded"] += 1
            yield frame

    def demux(self, *args, **kwargs):
        for packet in self._c.demux(*args, **kwargs):
            self._counts["demuxed"] += 1
            yield packet


def count_io(monkeypatch) -> collections.Counter:
    """Frames decoded and packets demuxed by PyAV, and (`.opens`) file opens per path, by PyAV
    or Python's open, from now to the end of the test."""
    counts = collections.Counter()
    opens = collections.Counter()
    av_open, py_open = av.open, builtins.open

    def counting_av_open(file, *args, **kwargs):
        if isinstance(file, str) or hasattr(file, "__fspath__"):
            opens[str(file)] += 1
        return _Counting(av_open(file, *args, **kwargs), counts)

    def counting_open(file, *args, **kwargs):
        if isinstance(file, str) or hasattr(file, "__fspath__"):
            opens[str(file)] += 1
        return py_open(file, *args, **kwargs)

    monkeypatch.setattr(av, "open", counting_av_open)
    monkeypatch.setattr(builtins, "open", counting_open)
    counts.opens = opens
    return counts


@pytest.fixture
def counts(monkeypatch):
    return count_io(monkeypatch)


def _truncated_fast_start_mp4(path, frames=40, cut=300):
    """A VP9 mp4 whose header (moov first) lists `frames` frames and whose tail is cut off: the
    header promises frames the file no longer has."""
    full = path.with_name("full_" + path.name)
    write_index_clip(full, frames=frames, codec="libvpx-vp9")  # .mp4 name: mp4 container
    faststart = {"movflags": "faststart"}
    with av.open(str(full)) as src, av.open(str(path), "w", options=faststart) as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = out
                dst.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    return path


def test_auto_and_dali_read_the_codec_without_decoding(tmp_path, counts):
    """Item 7: choosing a backend reads the codec from the container header. read_frames(...,
    'auto') on a fresh clip decodes only the frames up to the last one asked for (no probing
    decode of the whole file), and DALI's read decodes nothing with PyAV."""
    clip = write_index_clip(tmp_path / "clip.webm", frames=40, codec="libvpx-vp9")
    frames = read_frames(clip, [3], "auto")
    assert frame_marks(frames) == [3]
    assert counts["decoded"] == 4  # frames 0..3, nothing else
    pytest.importorskip("nvidia.dali")
    from lfvila.data import dali

    other = write_index_clip(tmp_path / "other.webm", frames=40, codec="libvpx-vp9")
    counts.clear()
    assert frame_marks(dali.read_frames(other, [5, 39], "cpu")) == [5, 39]
    assert counts["decoded"] == 0


def test_frame_count_from_the_header_else_the_packets(tmp_path, counts):
    """Item 9: an mp4 states its frame count in its header (no demux); WebM does not, so its
    packets are counted (demux, no decode). A truncated fast-start mp4 whose header lists
    frames the file lacks counts only the frames whose bytes are inside the file, so a plan
    never asks for a frame that is not there (DALI would return a black or garbage frame)."""
    mp4 = write_index_clip(tmp_path / "header.mp4", frames=40, codec="libvpx-vp9")
    webm = write_index_clip(tmp_path / "packets.webm", frames=37, codec="libvpx-vp9")
    assert probe(mp4, exact=False)["num_frames"] == 40
    assert counts["demuxed"] == 0 and counts["decoded"] == 0
    assert probe(webm, exact=False)["num_frames"] == 37
    assert counts["demuxed"] >= 37 and counts["decoded"] == 0

    truncated = _truncated_fast_start_mp4(tmp_path / "truncated.mp4")
    with av.open(str(truncated)) as c:
        assert c.streams.video[0].frames == 40  # the header still says 40
        decodable = sum(1 for _ in c.decode(video=0))
    assert 0 < decodable < 40
    assert probe(truncated, exact=False)["num_frames"] == decodable
    wanted = [0, decodable // 2, decodable - 1]
    assert frame_marks(read_frames(truncated, wanted, "pyav")) == wanted
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return
    from lfvila.data import dali

    assert frame_marks(dali.read_frames(truncated, wanted, "cpu")) == wanted


def _pretrain_data(root, videos=2, clips=4, codec="libvpx-vp9"):
    suffix = ".webm" if "vp" in codec else ".mp4"
    records = []
    for v in range(videos):
        (root / f"v{v}").mkdir(parents=True, exist_ok=True)
        record = []
        for k in range(clips):
            clip_id = f"v{v}.{k}{suffix}"
            write_index_clip(root / f"v{v}" / clip_id, frames=24 + k, codec=codec)
            record.append({"clip_id": clip_id, "text": f"clip {k} of video {v}"})
        records.append(record)
    ann = root / "pretrain.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    return ann


def _clip_opens(opens, root):
    return {path: n for path, n in opens.items() if path.startswith(str(root / "v"))}


def test_one_open_per_clip_per_epoch(tmp_path, counts):
    """Item 9: planning an item (frame counts, crop size) and decoding it open each clip file
    once, also when the probe cache no longer holds the clip (every epoch at 34M clips)."""
    ann = _pretrain_data(tmp_path)
    ds = build_dataset("pretrain", ann, tmp_path, True, DataOptions(**SMALL))
    for epoch in range(2):
        containers._probe_cached.cache_clear()  # a probe cache too small for the dataset
        counts.opens.clear()
        for index in range(len(ds)):
            item = ds.with_replacement(index, epoch=epoch)
            assert item["video"].shape == (3, 32, 48, 80)
        opens = _clip_opens(counts.opens, tmp_path)
        assert len(opens) == 8 and set(opens.values()) == {1}, opens
    counts.opens.clear()  # with the probes cached: still one open (the decode's)
    ds.with_replacement(0, epoch=2)
    assert set(_clip_opens(counts.opens, tmp_path).values()) == {1}


def test_probe_and_read_caches_are_bounded(tmp_path):
    """The probe cache is a bounded LRU; bytes read by a probe and kept for the decode that
    follows are bounded in count and size (an unused entry is dropped, never accumulated)."""
    info = containers._probe_cached.cache_info()
    assert info.maxsize is not None and info.maxsize <= 1 << 17
    clips = [
        write_index_clip(tmp_path / f"c{i}.webm", frames=4, codec="libvpx-vp9")
        for i in range(containers.KEPT_READS + 5)
    ]
    for clip in clips:
        probe(clip, exact=False)  # planned, never decoded
    kept = containers.kept_reads()
    assert kept["entries"] <= containers.KEPT_READS and kept["bytes"] <= containers.KEPT_READ_BYTES
    assert kept["entries"] == containers.KEPT_READS  # the most recent ones
    read_frames(clips[-1], [0], "pyav")  # a decode takes its clip's bytes
    assert containers.kept_reads()["entries"] == containers.KEPT_READS - 1
