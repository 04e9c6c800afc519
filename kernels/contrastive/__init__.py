"""Contrastive losses: LF-VILA's global video-paragraph InfoNCE and the MTC loss."""

from . import check  # noqa: F401  (registers the losses' self-checks)
from .dispatch import (
    ContrastiveLoss,
    MTCLoss,
    can_run_triton_contrastive,
    can_run_triton_mtc,
    contrastive_loss,
    mtc_loss,
)
from .distributed import gather_batch
from .reference import contrastive_loss_ref, mtc_labels, mtc_loss_ref, sample_mtc_indices

__all__ = [
    "ContrastiveLoss",
    "MTCLoss",
    "can_run_triton_contrastive",
    "can_run_triton_mtc",
    "contrastive_loss",
    "contrastive_loss_ref",
    "gather_batch",
    "mtc_labels",
    "mtc_loss",
    "mtc_loss_ref",
    "sample_mtc_indices",
]
