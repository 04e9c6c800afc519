"""Video decoding and the data pipeline: frames/s and samples/s.

CPU (`pytest benchmarks/`): LF-VILA's pre-training read (4 clips x 8 frames at floor(j*n/8)) of
generated clips, 40 frames each at 3 fps, 180x320: PyAV vs DALI's CPU decoder on VP9 and PyAV on
H.264, decode only ("decode": frames/s) and decode + train augmentation to 192x320 ("sample":
samples/s; DALI augments inside its pipeline).
GPU (marked `gpu`; benchmarks/gpu_check.sh): the same reads of H.264 clips at 720p, 3 fps,
through the whole loader (sampling, crop/flip/normalise, batch 8): DALI on the GPU (NVDEC,
`DaliLoader`) vs PyAV in 16 DataLoader worker processes. Smoke mode: tiny VP9 clips, DALI's CPU
decoder, 2 workers.
Every provider's frames are checked against PyAV's before timing.
"""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import torch

from benchmarks.shapes import smoke_mode
from benchmarks.utils import run
from lfvila.data import (
    DataOptions,
    augment_train,
    build_dataset,
    clip_frame_indices,
    probe,
    random_resized_crop_box,
    read_frames,
)
from lfvila.data.demo import clip_frames, write_video

CLIP_FRAMES, FPS, CLIPS, PER_CLIP = 40, 3, 4, 8  # 13.4 s clips at 3 fps (SPEC §10.1)


def _dali_missing() -> str | None:
    try:
        import nvidia.dali  # noqa: F401
    except Exception as exc:
        return f"nvidia.dali not importable ({type(exc).__name__}); pip install nvidia-dali-cuda130"
    return None


def _write_clips(root, codec: str, count: int, size: tuple[int, int]) -> list[str]:
    """`count` textured clips with a moving shape (the demo's scenes) in `codec`."""
    pytest.importorskip("av", reason="PyAV is not installed (pip install av)")
    rng, nprng = random.Random(0), np.random.default_rng(0)
    suffix = ".webm" if "vp" in codec else ".mp4"
    paths = []
    for i in range(count):
        frames = clip_frames(rng, nprng, "red", "circle", "moves up", CLIP_FRAMES, *size)
        path = root / f"clip{i}{suffix}"
        write_video(path, frames, FPS, codec=codec, fmt="rgb24")
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def cpu_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    size = (36, 64) if smoke_mode() else (180, 320)
    return {
        "vp9": _write_clips(root, "libvpx-vp9", CLIPS, size),
        "h264": _write_clips(root, "libx264", CLIPS, size),
    }


CPU_CASES = [("pyav", "vp9"), ("dali-cpu", "vp9"), ("pyav", "h264")]


def _sample_read(paths, provider):
    backend = "dali" if provider.startswith("dali") else "pyav"
    indices = clip_frame_indices(probe(paths[0], exact=False)["num_frames"], PER_CLIP)
    return [read_frames(p, indices, backend) for p in paths], indices


@pytest.mark.parametrize("provider, codec", CPU_CASES, ids=[f"{p}-{c}" for p, c in CPU_CASES])
def test_bench_decode_cpu(benchmark, cpu_clips, provider, codec):
    if provider.startswith("dali") and (reason := _dali_missing()):
        pytest.skip(reason)
    paths = cpu_clips[codec]
    frames, indices = _sample_read(paths, provider)
    reference = [read_frames(p, indices, "pyav") for p in paths]
    for ours, theirs in zip(frames, reference):  # the same frames (decoders differ by ~1 level)
        assert (ours.float() - theirs.float()).abs().mean() < 2.0
    h, w = frames[0].shape[1:3]
    run(
        benchmark,
        lambda: _sample_read(paths, provider),
        "cpu",
        rounds=5,
        warmup=1,
        level="decode",
        case=f"{codec} {h}x{w}",
        provider=provider,
        frames=CLIPS * PER_CLIP,
        samples=1,
    )


@pytest.mark.parametrize("provider, codec", CPU_CASES, ids=[f"{p}-{c}" for p, c in CPU_CASES])
def test_bench_sample_cpu(benchmark, cpu_clips, provider, codec):
    """One pre-training sample: decode 4 x 8 frames and apply the train augmentation."""
    if provider.startswith("dali") and (reason := _dali_missing()):
        pytest.skip(reason)
    paths = cpu_clips[codec]
    info = probe(paths[0], exact=False)
    indices = clip_frame_indices(info["num_frames"], PER_CLIP)
    box = random_resized_crop_box(info["height"], info["width"], rng=random.Random(0))
    size = (48, 80) if smoke_mode() else (192, 320)

    if provider.startswith("dali"):
        from lfvila.data.dali import decode_and_augment

        def sample():
            return decode_and_augment(
                paths, [indices] * CLIPS, [box] * CLIPS, [True] * CLIPS, size, "cpu"
            )
    else:

        def sample():
            return [augment_train(read_frames(p, indices, "pyav"), box, True, size) for p in paths]

    out = sample()
    assert len(out) == CLIPS and out[0].shape == (3, PER_CLIP, *size)
    run(
        benchmark,
        sample,
        "cpu",
        rounds=5,
        warmup=1,
        level="sample",
        case=f"{codec} {info['height']}x{info['width']} -> {size[0]}x{size[1]}",
        provider=provider,
        frames=CLIPS * PER_CLIP,
        samples=1,
    )


# --- GPU: the whole loader, DALI (NVDEC) vs PyAV in 16 worker processes -----------------------

GPU_BATCH, GPU_WORKERS = (2, 2) if smoke_mode() else (8, 16)
GPU_POOL = 8 if smoke_mode() else 48  # distinct clip files
GPU_BATCHES = 2 if smoke_mode() else 12  # batches per timed round


@pytest.fixture(scope="module")
def loader_data(tmp_path_factory):
    """Pre-training records over a pool of H.264 720p clips (smoke: VP9 36x64 for DALI-CPU)."""
    root = tmp_path_factory.mktemp("loader")
    codec, size = ("libvpx-vp9", (36, 64)) if smoke_mode() else ("libx264", (720, 1280))
    pool = _write_clips(root / "_pool", codec, GPU_POOL, size)
    records = []
    for r in range(64):  # long videos of 4..6 clips drawn from the pool
        clips = []
        for k in range(4 + r % 3):
            src = pool[(r * 5 + k) % len(pool)]
            clip_id = f"v{r:03d}.{k}{src[-5:] if src.endswith('.webm') else '.mp4'}"
            (root / f"v{r:03d}").mkdir(exist_ok=True)
            (root / f"v{r:03d}" / clip_id).symlink_to(src)
            clips.append({"clip_id": clip_id, "text": f"clip {k} of video {r}"})
        records.append(clips)
    ann = root / "pretrain.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    return ann, root


@pytest.mark.gpu
@pytest.mark.parametrize("provider", ["dali", "pyav"])
def test_bench_loader_gpu(benchmark, loader_data, provider):
    from lfvila.data.datasets import EpochSampler

    ann, root = loader_data
    dali_device = "cuda" if torch.cuda.is_available() else "cpu"
    if provider == "dali" and (reason := _dali_missing()):
        pytest.skip(reason)
    if provider == "pyav" and not torch.cuda.is_available() and not smoke_mode():
        pytest.skip("needs CUDA")
    size = (48, 80) if smoke_mode() else (192, 320)
    ds = build_dataset("pretrain", ann, root, True, DataOptions(size=size, max_tokens=16))
    from torch.utils.data import DataLoader, RandomSampler

    sampler = EpochSampler(RandomSampler(range(len(ds)), replacement=True, num_samples=10**7))
    if provider == "dali":
        from lfvila.data.dali import DaliLoader

        batches = iter(DaliLoader(ds, sampler, GPU_BATCH, device=dali_device))
    else:
        loader = DataLoader(
            ds,
            batch_size=GPU_BATCH,
            sampler=sampler,
            num_workers=GPU_WORKERS,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=True,
            prefetch_factor=4,
        )
        batches = iter(loader)

    def pull():
        for batch in itertools.islice(batches, GPU_BATCHES):
            batch["video"].to(dali_device, non_blocking=True)

    first = next(batches)
    assert first["video"].shape == (GPU_BATCH, 3, CLIPS * PER_CLIP, *size)
    pull()  # warm: workers started, DALI pipelines built, probe caches filled
    info = probe(sorted(root.glob("_pool/*"))[0], exact=False)
    if provider == "pyav":
        name = f"pyav-{GPU_WORKERS}-workers"
    else:
        name = "dali-gpu" if dali_device == "cuda" else "dali-cpu"
    run(
        benchmark,
        pull,
        dali_device,
        rounds=3,
        warmup=0,
        level="loader",
        case=f"{info['codec']} {info['height']}x{info['width']} {FPS} fps, batch {GPU_BATCH}",
        provider=name,
        frames=GPU_BATCHES * GPU_BATCH * CLIPS * PER_CLIP,
        samples=GPU_BATCHES * GPU_BATCH,
    )
