"""Processes and devices: the rank and world size from the launcher's environment, the process
group, and the few collectives the loop needs outside the model (STYLE.md §8).

`World.from_env()` reads `RANK`, `LOCAL_RANK` and `WORLD_SIZE` (torchrun and the deepspeed
launcher set them; defaults 0/0/1) and picks `cuda:LOCAL_RANK` with nccl, or the CPU with gloo.
At world size 1 no process group is created. Control messages (the stop flag, gathered
evaluation rows, agreement on skipping a step) go through a gloo group, so that they never
synchronise a CUDA stream.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class World:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    control_group: object = None
    """gloo group for host-side messages (None at world size 1)."""

    @classmethod
    def from_env(cls, device: str = "auto") -> World:
        """The launcher's RANK / LOCAL_RANK / WORLD_SIZE; `device` 'auto', 'cuda' or 'cpu'."""
        env = {}
        for name, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
            raw = os.environ.get(name, str(default))
            try:
                env[name] = int(raw)
            except ValueError:
                raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("train.device is 'cuda' but no CUDA device is available")
        use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if use_cuda:
            if env["LOCAL_RANK"] >= torch.cuda.device_count():
                raise ValueError(
                    f"LOCAL_RANK {env['LOCAL_RANK']} but only {torch.cuda.device_count()} GPUs"
                )
            torch.cuda.set_device(env["LOCAL_RANK"])
            dev = torch.device("cuda", env["LOCAL_RANK"])
        else:
            dev = torch.device("cpu")
        return cls(env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"], dev)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    @property
    def group(self):
        """The process group of the model's collectives (None in one process)."""
        return dist.group.WORLD if self.distributed else None

    # ----------------------------------------------------------------------------------------
    def init(self, via_deepspeed: bool = False) -> None:
        """Create the process group: at world size 1 only for DeepSpeed, which needs one."""
        if dist.is_initialized() or not (self.distributed or via_deepspeed):
            if self.distributed and self.control_group is None:
                self._make_control_group()
            return
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ValueError(
                    f"WORLD_SIZE={self.world_size} but {name} is not set: launch with torchrun "
                    "or the deepspeed launcher"
                )
        timeout = datetime.timedelta(minutes=30)
        if via_deepspeed:
            import deepspeed

            deepspeed.init_distributed(dist_backend=self.backend, timeout=timeout)
        else:
            dist.init_process_group(self.backend, timeout=timeout)
        self._make_control_group()

    def _make_control_group(self) -> None:
        if not self.distributed:
            return
        self.control_group = (
            dist.new_group(backend="gloo") if self.backend != "gloo" else dist.group.WORLD
        )

    def barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier(group=self.control_group)

    def shutdown(self) -> None:
        """Barrier, then destroy the process group (every exit path calls it)."""
        if dist.is_initialized():
            try:
                if self.distributed:
                    dist.barrier(group=self.control_group)
            finally:
                dist.destroy_process_group()
                self.control_group = None

    # ----------------------------------------------------------------------------------------
    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any rank."""
        if not self.distributed:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control_group)
        return bool(t.item())

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks of a float64 CPU tensor."""
        values = values.detach().to("cpu", torch.float64)
        if self.distributed:
            dist.all_reduce(values, group=self.control_group)
        return values

    def gather_rows(self, rows: torch.Tensor, index: torch.Tensor, length: int) -> torch.Tensor:
        """Rows of a dataset computed by every rank -> (length, ...) in dataset order.

        Args:
            rows: (n_r, ...) this rank's rows (any n_r, also 0; ranks may differ).
            index: (n_r,) their dataset indices.
            length: the dataset's size; every index in [0, length) must arrive exactly once.
        Raises RuntimeError naming the missing or repeated indices otherwise (SPEC Decision 4c).
        """
        rows, index = rows.detach().cpu(), index.detach().cpu().long()
        if self.distributed:
            parts = [None] * self.world_size
            dist.all_gather_object(parts, (rows, index), group=self.control_group)
            rows = torch.cat([p[0] for p in parts])
            index = torch.cat([p[1] for p in parts])
        counts = torch.bincount(index, minlength=length)
        if index.numel() and (index.min() < 0 or index.max() >= length):
            raise RuntimeError(f"evaluation index out of range [0, {length})")
        if counts.numel() != length or (counts != 1).any():
            missing = (counts == 0).nonzero().flatten()[:5].tolist()
            repeated = (counts > 1).nonzero().flatten()[:5].tolist()
            raise RuntimeError(
                f"evaluation must see each of {length} items once: missing {missing}..., "
                f"repeated {repeated}..."
            )
        out = torch.empty((length, *rows.shape[1:]), dtype=rows.dtype)
        out[index] = rows
        return out
