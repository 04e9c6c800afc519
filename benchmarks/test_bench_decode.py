"""Video decoding and the data pipeline: frames/s and samples/s.

CPU (`pytest benchmarks/`): LF-VILA's pre-training read (4 clips x 8 frames at floor(j*n/8)) of
generated clips, 40 frames each at 3 fps, 180x320: PyAV vs DALI's CPU decoder on VP9 and PyAV on
H.264, decode only ("decode": frames/s) and decode + train augmentation to 192x320 ("sample":
samples/s; DALI augments inside its pipeline). "cold" cases read clips this process has never
probed, every call (as at LF-VILA scale: 34M clips, none cached from one epoch to the next).
The CPU loader ("loader"): `DaliLoader` on DALI's CPU decoder (VP9 180x320, batch 2, fresh
records, 0 or 1 planning worker) vs a PyAV DataLoader with 1 worker, each with no training step
and with a simulated 200 ms step (a sleep: the GPU's time, the CPU idle), samples/s.
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
import time
from pathlib import Path

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


COLD_SETS = 8  # rounds + warmup + the check, each on clips never probed before


@pytest.fixture(scope="module")
def cpu_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("decode")
    size = (36, 64) if smoke_mode() else (180, 320)
    clips = {
        "vp9": _write_clips(root, "libvpx-vp9", CLIPS, size),
        "h264": _write_clips(root, "libx264", CLIPS, size),
    }
    for codec in ("vp9", "h264"):  # new names (symlinks) of the same files, for cold reads
        sets = []
        for s in range(COLD_SETS):
            (root / f"cold{s}").mkdir(exist_ok=True)
            links = [root / f"cold{s}" / f"{codec}-{i}{p[-5:]}" for i, p in enumerate(clips[codec])]
            for link, src in zip(links, clips[codec]):
                link.symlink_to(src)
            sets.append([str(link) for link in links])
        clips[f"{codec}-cold"] = sets
    return clips


CPU_CASES = [
    ("pyav", "vp9"),
    ("dali-cpu", "vp9"),
    ("pyav", "h264"),
    ("pyav", "vp9-cold"),
    ("dali-cpu", "vp9-cold"),
]


def _sample_read(paths, provider):
    backend = "dali" if provider.startswith("dali") else "pyav"
    indices = clip_frame_indices(probe(paths[0], exact=False)["num_frames"], PER_CLIP)
    return [read_frames(p, indices, backend) for p in paths], indices


@pytest.mark.parametrize("provider, codec", CPU_CASES, ids=[f"{p}-{c}" for p, c in CPU_CASES])
def test_bench_decode_cpu(benchmark, cpu_clips, provider, codec):
    if provider.startswith("dali") and (reason := _dali_missing()):
        pytest.skip(reason)
    if codec.endswith("cold"):
        sets = iter(cpu_clips[codec])
        paths = next(sets)

        def read():
            return _sample_read(next(sets), provider)
    else:
        paths = cpu_clips[codec]

        def read():
            return _sample_read(paths, provider)

    frames, indices = _sample_read(paths, provider)
    reference = [read_frames(p, indices, "pyav") for p in paths]
    for ours, theirs in zip(frames, reference):  # the same frames (decoders differ by ~1 level)
        assert (ours.float() - theirs.float()).abs().mean() < 2.0
    h, w = frames[0].shape[1:3]
    run(
        benchmark,
        read,
        "cpu",
        rounds=5,
        warmup=1,
        level="decode",
        case=f"{codec} {h}x{w}",
        provider=provider,
        frames=CLIPS * PER_CLIP,
        samples=1,
    )


SAMPLE_CASES = CPU_CASES[:3]


@pytest.mark.parametrize("provider, codec", SAMPLE_CASES, ids=[f"{p}-{c}" for p, c in SAMPLE_CASES])
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
DALI_WORKERS = 1 if smoke_mode() else 4  # planning, file reads and tokenisation for DALI
GPU_POOL = 8 if smoke_mode() else 48  # distinct clip files
GPU_BATCHES = 2 if smoke_mode() else 12  # batches per timed round


def _pretrain_records(root, pool: list[str], videos: int, clips_per_video) -> Path:
    """`videos` long videos of clips_per_video(r) clips each, every clip a new name (symlink)
    of a clip of the pool; their pre-training annotations."""
    records = []
    for r in range(videos):
        clips = []
        for k in range(clips_per_video(r)):
            src = pool[(r * 5 + k) % len(pool)]
            clip_id = f"v{r:03d}.{k}{src[-5:] if src.endswith('.webm') else '.mp4'}"
            (root / f"v{r:03d}").mkdir(exist_ok=True)
            (root / f"v{r:03d}" / clip_id).symlink_to(src)
            clips.append({"clip_id": clip_id, "text": f"clip {k} of video {r}"})
        records.append(clips)
    ann = root / "pretrain.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    return ann


@pytest.fixture(scope="module")
def loader_data(tmp_path_factory):
    """Pre-training records over a pool of H.264 720p clips (smoke: VP9 36x64 for DALI-CPU)."""
    root = tmp_path_factory.mktemp("loader")
    codec, size = ("libvpx-vp9", (36, 64)) if smoke_mode() else ("libx264", (720, 1280))
    pool = _write_clips(root / "_pool", codec, GPU_POOL, size)
    return _pretrain_records(root, pool, 64, lambda r: 4 + r % 3), root  # 4..6 clips each


# --- CPU: the DALI loader (DALI's CPU decoder) vs a PyAV DataLoader ---------------------------

CPU_BATCH, CPU_BATCHES, CPU_ROUNDS = 2, 6, 3
CPU_STEP_S = 0.2
CPU_LOADER_CASES = [
    ("dali-cpu", 0, 0.0),
    ("dali-cpu", 1, 0.0),
    ("pyav", 1, 0.0),
    ("dali-cpu", 0, CPU_STEP_S),
    ("dali-cpu", 1, CPU_STEP_S),
    ("pyav", 1, CPU_STEP_S),
]


@pytest.fixture(scope="module")
def cpu_loader_data(tmp_path_factory):
    """Records of 4 clips (VP9 180x320; smoke 36x64), enough that no clip is read twice."""
    root = tmp_path_factory.mktemp("cpu_loader")
    size = (36, 64) if smoke_mode() else (180, 320)
    pool = _write_clips(root / "_pool", "libvpx-vp9", 8, size)
    videos = CPU_BATCH * (CPU_ROUNDS * CPU_BATCHES + 4)
    return _pretrain_records(root, pool, videos, lambda r: CLIPS), root


@pytest.mark.parametrize(
    "provider, workers, step",
    CPU_LOADER_CASES,
    ids=[f"{p}-{w}-workers-step-{int(s * 1000)}ms" for p, w, s in CPU_LOADER_CASES],
)
def test_bench_loader_cpu(benchmark, cpu_loader_data, provider, workers, step):
    """Samples/s of a training loop whose step takes `step` seconds of the GPU's time: with the
    loader's work overlapping the step, a batch costs max(step, loader) instead of the sum."""
    from torch.utils.data import DataLoader

    from lfvila.data.datasets import EpochSampler, ExactDistributedSampler

    if provider.startswith("dali") and (reason := _dali_missing()):
        pytest.skip(reason)
    ann, root = cpu_loader_data
    size = (48, 80) if smoke_mode() else (192, 320)
    ds = build_dataset("pretrain", ann, root, True, DataOptions(size=size, max_tokens=16))
    sampler = EpochSampler(ExactDistributedSampler(len(ds)))  # in order: every clip once
    if provider.startswith("dali"):
        from lfvila.data.dali import DaliLoader

        loader = DaliLoader(ds, sampler, CPU_BATCH, device="cpu", workers=workers)
    else:
        loader = DataLoader(
            ds, batch_size=CPU_BATCH, sampler=sampler, num_workers=workers, drop_last=True
        )
    batches = iter(loader)

    def epoch_part():
        for batch in itertools.islice(batches, CPU_BATCHES):
            assert batch["video"].shape == (CPU_BATCH, 3, CLIPS * PER_CLIP, *size)
            time.sleep(step)  # the training step

    next(batches)  # warm: workers started, the pipeline built
    info = probe(sorted(root.glob("_pool/*"))[0], exact=False)
    rounds = 1 if smoke_mode() else CPU_ROUNDS
    run(
        benchmark,
        epoch_part,
        "cpu",
        rounds=rounds,
        warmup=0,
        level="loader",
        case=f"vp9 {info['height']}x{info['width']} -> {size[0]}x{size[1]}, batch {CPU_BATCH}, "
        f"step {int(step * 1000)} ms",
        provider=f"{provider}-{workers}-workers",
        frames=CPU_BATCHES * CPU_BATCH * CLIPS * PER_CLIP,
        samples=CPU_BATCHES * CPU_BATCH,
    )


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

        batches = iter(DaliLoader(ds, sampler, GPU_BATCH, device=dali_device, workers=DALI_WORKERS))
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
