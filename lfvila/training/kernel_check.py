"""The kernel self-check of a run: before the first step, every fused kernel the model will run,
at the run's own shapes, against the reference on this machine (lfvila.kernels.self_check).

What is checked:
- window attention: the video encoder runs once without gradients on a random clip at the check
  batch (`kernels.self_check_batch`, default `train.batch_size`) under the engine's precision,
  recording each fused call (module, shapes, dtypes, packed or not, window, shift); each distinct
  call then runs forward and backward against the reference;
- the contrastive losses the model computes (global InfoNCE; MTC in stage 1), at the gathered
  training batch (train.batch_size x processes) and the projection's dtype under that precision.
Nothing runs where nothing is fused (CPU tensors take the reference unless a backend is forced).

Every rank checks; the verdicts are summed over ranks, so all send the same calls to their
fallback route, SDPA on a GPU and the reference on the CPU (`kernels.on_mismatch=fallback`, the
default: a warning per call and a summary line naming them all) or all stop together (`error`:
KernelMismatchError naming the layer, shape and error). After the check the process's first-call
check takes the run's `on_mismatch`, so a call signature met later (another batch in evaluation,
a last partial batch) is checked on its first call. `<run_dir>/kernel_check.json` records every
check and every call that fell back: written after the check and again at the end of the run
(`write_kernel_record`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lfvila.kernels import WindowAttention3D, check_calls, record_fused_calls
from lfvila.kernels import _self_check as self_check
from lfvila.kernels._backend import interpreter_enabled

from ..config import Config

logger = logging.getLogger("lfvila")


def _may_fuse(backend: str, device: torch.device) -> bool:
    """Whether `backend` can pick a fused kernel on `device` (CPU 'auto' is the reference)."""
    if backend in ("reference", "sdpa"):
        return False
    return device.type == "cuda" or (backend in ("triton", "cuda") and interpreter_enabled())


def _attention_calls(model, cfg: Config, batch: int, engine, device) -> list:
    encoder = getattr(model, "video_encoder", None)
    if encoder is None:
        return []
    backends = {m.backend for m in encoder.modules() if isinstance(m, WindowAttention3D)}
    if not any(_may_fuse(b, device) for b in backends):
        return []
    video_cfg = cfg.model.video
    dtype = next(encoder.parameters()).dtype
    video = torch.randn(
        batch, video_cfg.in_chans, video_cfg.num_frames, *video_cfg.input_size,
        generator=torch.Generator().manual_seed(0), dtype=torch.float32,
    ).to(device, dtype)  # fmt: skip
    was_training = encoder.training
    encoder.eval()  # no DropPath: shapes only
    try:
        with (
            record_fused_calls() as calls,
            self_check.module_labels(model),
            torch.no_grad(),
            engine.autocast(),
        ):
            encoder(video, with_local=False)
    finally:
        encoder.train(was_training)
    return [(call, name) for call, name in calls if call.op == "window_attention"]


def _loss_calls(model, cfg: Config, engine, world) -> list:
    """The fused losses the model's forward computes, as FusedCalls, at the training's gathered
    batch (train.batch_size x processes): cheap at any size, and a batch of one would make the
    InfoNCE identically zero (nothing for the error-ratio rule to measure)."""
    from lfvila.model.pretrain import LFVILA
    from lfvila.model.tasks import LFVILAForRetrieval

    device = world.device
    if not _may_fuse(getattr(model, "kernel_backend", "reference"), device):
        return []
    stage1 = isinstance(model, LFVILA) and cfg.model.stage == 1
    if not (stage1 or isinstance(model, LFVILAForRetrieval)):
        return []
    video_dim = cfg.model.video.dims()[-1]
    proj = model.video_global_proj
    with torch.no_grad(), engine.autocast():
        probe = torch.zeros(1, video_dim, device=device, dtype=proj.weight.dtype)
        dtype = F.normalize(proj(probe), dim=-1).dtype  # the features' dtype in the forward
    n = cfg.train.batch_size * world.world_size
    loss = cfg.model.loss
    calls = [
        self_check.loss_call(
            "contrastive_loss",
            (n, cfg.model.projection_dim),
            dtype,
            device,
            temperature=float(loss.temperature),
        )  # fmt: skip
    ]
    if stage1 and loss.use_mtc:
        calls.append(
            self_check.loss_call(
                "mtc_loss",
                (n, cfg.model.video.num_clips, cfg.model.projection_dim),
                dtype,
                device,
                temperature=float(loss.mtc_temperature),
                num_key=loss.num_key,
                num_value=loss.num_value,
                num_other_neg=loss.num_other_neg,
            )  # fmt: skip
        )
    return [(call, "loss") for call in calls]


def run_kernel_self_check(
    model, cfg: Config, engine, world, run_dir: Path | None = None
) -> list | None:
    """Check every fused kernel `model` will run; apply `kernels.on_mismatch` on a mismatch.

    Returns the CheckResults (None when the check is off or nothing is fused). Raises
    KernelMismatchError (every rank) in 'error' mode when any rank found a mismatch. With
    `run_dir`, rank 0 writes run_dir/kernel_check.json.
    """
    if not cfg.kernels.self_check:
        return None
    start = time.perf_counter()
    self_check.reset()  # a new model: earlier verdicts of this process do not carry over
    batch = cfg.kernels.self_check_batch or cfg.train.batch_size
    calls = _attention_calls(model, cfg, batch, engine, world.device)
    calls += _loss_calls(model, cfg, engine, world)
    if not calls:
        logger.debug("kernel self-check: nothing runs fused on %s", world.device)
        return None
    # signatures the run meets later are checked on their first call, by the run's policy
    self_check.set_first_call_check(cfg.kernels.on_mismatch)
    results = check_calls(calls, on_mismatch=None, log=logger.info)
    # the same calls on every rank (one config): sum the verdicts so all ranks act alike
    bad = world.sum(torch.tensor([0.0 if r.ok else 1.0 for r in results]))
    failed = []
    for result, count in zip(results, bad.tolist()):
        if count and result.ok:
            result.ok = False
            result.message = f"mismatch on {int(count)} other rank(s); this rank matched"
        if not result.ok:
            failed.append(result)
    where = _device_name(world.device)
    seconds = time.perf_counter() - start
    if not failed:
        logger.info(
            "kernel self-check: %d fused call(s) at batch %d match the reference on %s "
            "(%.1f s, compilation included)",
            len(results), batch, where, seconds,
        )  # fmt: skip
        write_kernel_record(run_dir, world, cfg.kernels.on_mismatch)
        return results
    self_check.apply_mismatch_policy(failed, cfg.kernels.on_mismatch)  # raises in "error" mode
    routes = sorted({self_check.fallback_route(r.call) for r in failed})
    logger.warning(
        "kernel self-check: %d of %d fused call(s) disagree with the reference on %s; they run "
        "on the %s backend (kernels.on_mismatch=fallback): %s",
        len(failed), len(results), where, " / ".join(routes),
        "; ".join(f"{r.where()}: {r.call.describe()}" for r in failed),
    )  # fmt: skip
    write_kernel_record(run_dir, world, cfg.kernels.on_mismatch)
    return results


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "the CPU"


def write_kernel_record(run_dir: Path | None, world, on_mismatch: str) -> None:
    """run_dir/kernel_check.json (rank 0): every check of this process (the run's and the
    first-call checks since) and every call signature that runs on its fallback route."""
    if run_dir is None or not world.is_main or not self_check.results():
        return
    from .checkpoint import write_text_atomic

    fallbacks = self_check.fallback_calls()
    record = {
        "device": _device_name(world.device),
        "on_mismatch": on_mismatch,
        "checks": [
            {
                "call": r.call.describe(),
                "modules": r.modules,
                "ok": r.ok,
                "worst_error_vs_bound": r.worst,
                "seconds": round(r.seconds, 3),
                "message": r.message,
            }
            for r in self_check.results()
        ],
        "fallbacks": [
            {
                "call": call.describe(),
                "route": self_check.fallback_route(call),
                "why": why.splitlines()[0],
            }
            for call, why in fallbacks.items()
        ],
    }
    write_text_atomic(Path(run_dir) / "kernel_check.json", json.dumps(record, indent=1) + "\n")
