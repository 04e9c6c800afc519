"""One small interface over the three ways to train (STYLE.md §8): one process, torchrun DDP, and
DeepSpeed (ZeRO 0-2). Nothing outside this module imports deepspeed.

    engine.model            what the loop calls forward on (DDP / DeepSpeed wrapper or the module)
    engine.module           the bare model (state dicts, evaluation features)
    engine.autocast()       the forward's precision context
    engine.prepare(batch)   tensors to the device (to the module's dtype under DeepSpeed fp16/bf16)
    engine.no_sync(last)    no gradient all-reduce on micro-steps before the last of a step
    engine.backward(loss)   one micro-batch; the engine divides by grad_accum
    engine.step(lr)         clip, optimiser step (or a skip), zero grads -> StepResult
    engine.save(dir) / load(dir), engine.export_state_dict(checkpoint_dir)

Precision (SPEC Decision 5): bf16 autocast on GPUs that have it, fp32 on the CPU; fp16 with
dynamic loss scaling: DeepSpeed's (SPEC §11.1: initial scale 2^32, window 1000, hysteresis 2, min
1), or `torch.amp.GradScaler(init_scale=2**32, growth_interval=1000)` on DDP/single (GradScaler
has no hysteresis or minimum scale). DeepSpeed in bf16/fp16 casts the module itself (fp32
master weights in its optimiser), as the original's fp16 did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import math
import os
import socket
from pathlib import Path

import torch
from torch import nn

from ..config import TrainConfig
from .dist import World

logger = logging.getLogger(__name__)


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def resolve_engine(cfg: TrainConfig, world: World) -> str:
    """'auto' -> 'deepspeed' when installed and zero_stage > 0, 'ddp' when WORLD_SIZE > 1, else
    'single'. An explicit 'deepspeed' without DeepSpeed, or 'single' under a launcher, is an
    error."""
    name = cfg.engine
    if name == "auto":
        if cfg.zero_stage > 0 and deepspeed_installed():
            name = "deepspeed"
        else:
            if cfg.zero_stage > 0:
                logger.warning(
                    "train.zero_stage %d asks for ZeRO but DeepSpeed is not installed:"
                    " training without it",
                    cfg.zero_stage,
                )
            name = "ddp" if world.distributed else "single"
    if name == "deepspeed" and not deepspeed_installed():
        raise ValueError(
            "train.engine 'deepspeed': DeepSpeed is not installed (pip install deepspeed)"
        )
    if name == "single" and world.distributed:
        raise ValueError(f"train.engine 'single' but WORLD_SIZE={world.world_size}: use 'ddp'")
    if name != "deepspeed" and cfg.zero_stage > 0 and cfg.engine != "auto":
        raise ValueError(f"train.zero_stage {cfg.zero_stage} needs train.engine 'deepspeed'")
    return name


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """'auto' -> bf16 on GPUs with bf16, fp16 on older GPUs, fp32 on the CPU."""
    if cfg.precision == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision 'fp16' needs a CUDA device (on the CPU use fp32 or bf16)")
    return cfg.precision


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclasses.dataclass
class StepResult:
    """What an optimiser step did, as 0-dim tensors on the device (reading them is a host sync:
    the loop reads them once per `log_every`)."""

    applied: torch.Tensor
    """bool: False when the update was skipped (a non-finite loss or gradient, or an overflow)."""
    nonfinite: torch.Tensor
    """bool: skipped for a non-finite loss or gradient (an error when it goes on too long)."""
    overflow: torch.Tensor
    """bool: an fp16 loss-scale overflow (a normal event of dynamic loss scaling, not an error)."""
    grad_norm: torch.Tensor
    """float: the gradient norm before clipping (non-finite when skipped for it)."""


def move(batch: dict, device: torch.device, dtype: torch.dtype | None = None) -> dict:
    """Tensors of `batch` to `device`; floating tensors also to `dtype` when given."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
        out[key] = value
    return out


class TorchEngine:
    """One process or DDP (torchrun): torch.autocast, GradScaler for fp16, clip_grad_norm_."""

    checks_loss_on_host = False
    """Non-finite losses are decided on the device (`step(lr, bad_loss)`): no sync per step."""

    def __init__(self, module: nn.Module, optimizer, cfg: TrainConfig, world: World, ddp: bool):
        self.name = "ddp" if ddp else "single"
        self.cfg, self.world, self.optimizer = cfg, world, optimizer
        self.precision = resolve_precision(cfg, world.device)
        self.module = module.to(world.device)
        self.model = self.module
        if ddp:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(
                self.module,
                device_ids=[world.local_rank] if world.device.type == "cuda" else None,
                broadcast_buffers=False,  # every buffer is a constant (indices, position ids)
                gradient_as_bucket_view=True,
            )
        self.scaler = None
        if self.precision == "fp16":
            self.scaler = torch.amp.GradScaler(
                "cuda",
                init_scale=2.0**32,
                growth_factor=2.0,
                backoff_factor=0.5,
                growth_interval=1000,
            )
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=DTYPES[self.precision])

    def prepare(self, batch: dict) -> dict:
        return move(batch, self.world.device)

    def no_sync(self, last: bool):
        if self.name == "ddp" and not last:
            return self.model.no_sync()
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss = loss / self.cfg.grad_accum
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def skip_micro_batch(self) -> None:
        """A micro-batch with a non-finite loss: nothing to back-propagate."""

    def skip_step(self) -> None:
        """A step with a non-finite micro-batch: no update; drop the accumulated gradients."""
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, lr: float, bad_loss: torch.Tensor | None = None) -> StepResult:
        """Clip, then update unless the step is bad, and zero the gradients.

        `bad_loss`: 0-dim bool on the device, true when a micro-batch's loss was non-finite.
        Without a host round trip: the flag is combined with a non-finite gradient norm on the
        device, all-reduced over the ranks (MAX) so that every rank takes the same decision, and
        handed to the fused optimiser as `found_inf`, which skips the update (and its step count)
        inside its kernel, as GradScaler does. An optimiser without that support (not fused)
        makes the decision on the host instead: one read per step.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.scaler is not None:
            if bad_loss is not None and grads:
                # a non-finite loss must skip the step even if its gradient came out finite:
                # poison the gradients, so that GradScaler (which sees only them) skips it
                nan = torch.tensor(math.nan, device=bad_loss.device)
                torch._foreach_mul_(grads, torch.where(bad_loss, nan, 1.0))
            self.scaler.unscale_(self.optimizer)
        max_norm = self.cfg.clip_grad if self.cfg.clip_grad > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm, foreach=True).detach().float()
        if bad_loss is None:
            bad_loss = torch.zeros((), dtype=torch.bool, device=norm.device)
        flags = torch.stack([bad_loss.to(norm.device), ~torch.isfinite(norm)]).float()
        if self.world.distributed:
            import torch.distributed as dist

            dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # enqueued on the stream: no host wait
        bad_loss, skip = flags[0] > 0, flags.amax() > 0
        bad = skip.float()  # 0-dim, as the fused kernel takes it
        if self.scaler is not None:
            # fp16: GradScaler skips the update on inf/NaN gradients and lowers the scale
            # (sync-free with a fused optimiser); a non-finite loss is counted as non-finite
            self.scaler.step(self.optimizer)
            self.scaler.update()
            overflow, nonfinite = skip & ~bad_loss, bad_loss
        else:
            overflow, nonfinite = torch.zeros_like(skip), skip
            if getattr(self.optimizer, "_step_supports_amp_scaling", False):
                self.optimizer.found_inf = bad  # the fused kernel skips the whole update
                try:
                    self.optimizer.step()
                finally:
                    del self.optimizer.found_inf
            elif not bool(skip):  # a non-fused optimiser: decided on the host
                self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(~skip, nonfinite, overflow, norm)

    def loss_scale(self) -> float | None:
        return self.scaler.get_scale() if self.scaler is not None else None

    # ----------------------------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Rank 0 writes the model, optimiser and scaler state (replicated on every rank)."""
        if self.world.is_main:
            state = {
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            }
            torch.save(state, directory / "state.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(
            directory / "state.pt", map_location=self.world.device, weights_only=True
        )
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    export_needs_checkpoint = False
    """The module's own weights are the fp32 weights."""

    def export_state_dict(self, checkpoint_dir: Path | None = None) -> dict:
        return self.module.state_dict()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_deepspeed_env(world: World) -> None:
    """In one process without a launcher, DeepSpeed looks for MPI unless these are set."""
    if not world.distributed:
        os.environ.setdefault("RANK", "0")
        os.environ.setdefault("LOCAL_RANK", "0")
        os.environ.setdefault("WORLD_SIZE", "1")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))


def deepspeed_config(cfg: TrainConfig, precision: str) -> dict:
    """The DeepSpeed dict derived from TrainConfig (no second config file; SPEC §11.1)."""
    ds = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "steps_per_print": 10**12,  # the loop logs
        "wall_clock_breakdown": False,
        "zero_optimization": {
            "stage": cfg.zero_stage,
            "allgather_partitions": True,
            "allgather_bucket_size": 5e8,
            "overlap_comm": False,
            "reduce_scatter": True,
            "reduce_bucket_size": 5e8,
            "contiguous_gradients": False,
        },
        "gradient_clipping": cfg.clip_grad,
    }
    if precision == "fp16":
        ds["fp16"] = {
            "enabled": True,
            "loss_scale": 0,
            "initial_scale_power": 32,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        }
    elif precision == "bf16":
        ds["bf16"] = {"enabled": True}
    return ds


class DeepSpeedEngine:
    """DeepSpeed ZeRO 0-2 with our torch AdamW and param groups; DeepSpeed accumulates gradients
    itself and checkpoints with its own layout (`<step dir>/deepspeed/`)."""

    TAG = "deepspeed"
    checks_loss_on_host = True
    """DeepSpeed cannot drop gradients it has reduced: the loop reads each loss's finiteness on
    the host and skips the backward of a poisoned micro-batch (one sync per micro-batch)."""

    def __init__(self, module: nn.Module, optimizer, cfg: TrainConfig, world: World):
        import deepspeed

        self.name, self.cfg, self.world = "deepspeed", cfg, world
        self.precision = resolve_precision(cfg, world.device)
        # DeepSpeed casts frozen parameters to half too; keep their fp32 values for the export
        self.frozen_fp32 = {
            n: p.detach().cpu().clone() for n, p in module.named_parameters() if not p.requires_grad
        }
        self.model, self.ds_optimizer, _, _ = deepspeed.initialize(
            model=module.to(world.device),
            optimizer=optimizer,
            config=deepspeed_config(cfg, self.precision),
            dist_init_required=False,
        )
        self.module, self.optimizer = self.model.module, optimizer
        self.dtype = next(self.module.parameters()).dtype

    def autocast(self):
        return contextlib.nullcontext()  # the module itself runs in fp16/bf16

    def prepare(self, batch: dict) -> dict:
        half = self.dtype if self.dtype != torch.float32 else None
        return move(batch, self.world.device, half)

    def no_sync(self, last: bool):
        return contextlib.nullcontext()  # DeepSpeed reduces only at accumulation boundaries

    def backward(self, loss: torch.Tensor) -> None:
        boundary = self.model.is_gradient_accumulation_boundary()
        self.model.backward(loss)  # scales by 1/grad_accum itself
        if not boundary:
            self.model.step()  # DeepSpeed counts micro-steps in step(); no update here

    def skip_micro_batch(self) -> None:
        """A micro-batch with a non-finite loss. At grad_accum 1 nothing runs (the step is
        skipped whole); above, a zero loss keeps DeepSpeed's micro-step count aligned."""
        if self.cfg.grad_accum > 1:
            zero = sum(p.sum() for p in self.module.parameters() if p.requires_grad) * 0.0
            self.backward(zero)

    def skip_step(self) -> None:
        """DeepSpeed cannot drop gradients it has reduced: at grad_accum 1 the step is skipped;
        above, the step applies the other micro-batches' gradients (documented limitation)."""
        if self.cfg.grad_accum > 1:
            self.model.step()

    def step(self, lr: float, bad_loss: torch.Tensor | None = None) -> StepResult:
        """DeepSpeed's own step (its overflow check and clipping). `bad_loss` is decided by the
        loop on the host for DeepSpeed (`checks_loss_on_host`): a poisoned step never gets here
        at grad_accum 1. Reads DeepSpeed's verdict on the host: one sync per step."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.step()
        applied = bool(self.model.was_step_applied())
        norm = self.model.get_global_grad_norm()
        norm = float(norm) if norm is not None else math.nan
        return StepResult(
            torch.tensor(applied), torch.tensor(False), torch.tensor(not applied),
            torch.tensor(norm if applied else math.nan),
        )  # fmt: skip

    def loss_scale(self) -> float | None:
        scale = getattr(self.ds_optimizer, "cur_scale", None)
        return float(scale) if scale is not None and self.precision == "fp16" else None

    def save(self, directory: Path) -> None:
        self.model.save_checkpoint(str(directory), tag=self.TAG, client_state={})

    def load(self, directory: Path) -> None:
        path, _ = self.model.load_checkpoint(
            str(directory),
            tag=self.TAG,
            load_optimizer_states=True,
            load_lr_scheduler_states=False,
        )
        if path is None:
            raise FileNotFoundError(f"{directory}: no DeepSpeed checkpoint '{self.TAG}' in it")

    @property
    def export_needs_checkpoint(self) -> bool:
        """fp16/bf16: the fp32 master weights are read back from a checkpoint."""
        return self.dtype != torch.float32

    def export_state_dict(self, checkpoint_dir: Path | None = None) -> dict:
        """fp32 weights of the bare model: the module's own in fp32 runs, else the fp32 master
        weights consolidated from the checkpoint (DeepSpeed's zero_to_fp32) plus the frozen
        parameters' original fp32 values; buffers from the module."""
        state = self.module.state_dict()
        if self.dtype == torch.float32:
            return state
        if checkpoint_dir is None:
            raise ValueError("a DeepSpeed fp16/bf16 export needs the checkpoint it is read from")
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        master = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=self.TAG)
        out = {}
        for key, value in state.items():
            if key in self.frozen_fp32:
                out[key] = self.frozen_fp32[key]
            elif key in master and master[key].dtype == torch.float32:
                out[key] = master[key]
            else:
                out[key] = value.detach().cpu()
        return out


class InferenceEngine:
    """Evaluation only (`lfvila evaluate`): the model on the device, bf16 autocast on GPUs
    that have it, fp32 on the CPU."""

    def __init__(self, module: nn.Module, world: World):
        self.world, self.module = world, module.to(world.device)
        self.precision = (
            "bf16" if world.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        )

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def prepare(self, batch: dict) -> dict:
        return move(batch, self.world.device)


def build_engine(name: str, module: nn.Module, optimizer, cfg: TrainConfig, world: World):
    if name == "deepspeed":
        return DeepSpeedEngine(module, optimizer, cfg, world)
    return TorchEngine(module, optimizer, cfg, world, ddp=name == "ddp")
