"""Weight import and export, never downloading anything (SPEC.md §5, §13).

- `inflate_swin_2d`: an official 2D Swin checkpoint (state dict under `model`) -> the video
  encoder, as LF-VILA's `process_swin_weights`: blocks renamed in (stage, block) order,
  downsamples moved to the layers that merge, `local_feat_proj` <- stage-2 downsample,
  `norm_local` <- `norm`, bias tables bicubically resized to the 3x5 spatial window then tiled
  over every temporal offset, the 4x4 patch kernel tiled 2x2 to 8x8 and divided by 4.
- `convert_bert`: a Hugging Face BERT state dict (bert-large-uncased layout, legacy gamma/beta
  names mapped) -> `text_encoder.*` (+ the paragraph position table, `_init_sent_embedding`).
- `from_original` / `to_original`: LF-VILA's released key layout <-> ours (a thin map: the same
  names, minus / plus the recomputed buffers, and the `module.` prefix dropped).
- `load_weights`: load with a report of missing, unexpected and shape-mismatched keys;
  `strict=True` raises on any.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VideoEncoderConfig

# Buffers the model recomputes; checkpoints may carry them or not.
RECOMPUTED = ("relative_position_index", "position_ids", "token_type_ids", "attn_mask")


@dataclasses.dataclass
class LoadReport:
    missing: list[str]
    unexpected: list[str]
    mismatched: list[tuple[str, tuple, tuple]]
    """(key, checkpoint shape, model shape)."""
    loaded: int

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"loaded {self.loaded} tensors"]
        if self.missing:
            lines.append(f"missing ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        for key, got, want in self.mismatched:
            lines.append(f"shape mismatch: {key}: checkpoint {got}, model {want}")
        return "\n".join(lines)


def _recomputed(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in RECOMPUTED


def load_weights(
    model: nn.Module, state_dict: dict, strict: bool = False, prefix: str = ""
) -> LoadReport:
    """Copy every checkpoint tensor whose key and shape match into `model`.

    Args:
        state_dict: keys relative to `model` (after `prefix` is prepended).
        strict: raise ValueError listing every missing, unexpected or mismatched key.
    Buffers the model recomputes (relative_position_index, position_ids) are neither required
    nor reported.
    """
    own = model.state_dict()
    scope = [k for k in own if k.startswith(prefix)]
    missing = [k for k in scope if k[len(prefix) :] not in state_dict and not _recomputed(k)]
    unexpected, mismatched, loadable = [], [], {}
    for key, value in state_dict.items():
        target = prefix + key
        if target not in own:
            if not _recomputed(key):
                unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(own[target].shape):
            mismatched.append((key, tuple(value.shape), tuple(own[target].shape)))
            continue
        loadable[target] = value
    report = LoadReport(sorted(missing), sorted(unexpected), mismatched, len(loadable))
    if strict and not report.ok:
        raise ValueError(f"checkpoint does not match the model:\n{report}")
    with torch.no_grad():
        for key, value in loadable.items():
            own[key].copy_(value.to(own[key].dtype))
    return report


def read_checkpoint(path: str | Path) -> dict:
    """A state dict from .pth/.bin/.pt (torch.load, weights only) or .safetensors; a dict under
    'model', 'state_dict' or 'module' is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    data = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "module"):
        if isinstance(data, dict) and key in data and isinstance(data[key], dict):
            return data[key]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(data).__name__}")
    return data


# --------------------------------------------------------------------------------------------
# Swin 2D -> 3D


def _swin_block_sources(cfg: VideoEncoderConfig) -> list[tuple[int, int, int, int]]:
    """(our layer, our block, Swin stage, Swin block): blocks taken in (stage, block) order."""
    next_block: dict[int, int] = {}
    pairs = []
    for layer, (stage, depth) in enumerate(zip(cfg.stages, cfg.depths)):
        for block in range(depth):
            src = next_block.get(stage, 0)
            pairs.append((layer, block, stage, src))
            next_block[stage] = src + 1
    return pairs


def resize_bias_table(table_2d: torch.Tensor, window: tuple[int, int, int]) -> torch.Tensor:
    """(S*S, heads) 2D table -> ((2Wt-1)(2Wh-1)(2Ww-1), heads): bicubic resize of the spatial
    offsets to (2Wh-1, 2Ww-1), then the same spatial table for every temporal offset."""
    rows, heads = table_2d.shape
    side = int(round(rows**0.5))
    if side * side != rows:
        raise ValueError(f"a 2D bias table must have a square number of rows, got {rows}")
    wt, wh, ww = window
    grid = table_2d.float().t().reshape(1, heads, side, side)
    spatial = F.interpolate(
        grid, size=(2 * wh - 1, 2 * ww - 1), mode="bicubic", align_corners=False
    )
    spatial = spatial.reshape(heads, -1)  # (heads, (2Wh-1)(2Ww-1))
    return spatial.repeat(1, 2 * wt - 1).t().contiguous().to(table_2d.dtype)


def inflate_patch_embed(weight_2d: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """(C, 3, p, p) -> (C, 3, pt, ph, pw): tiled (not upsampled) to the 3D patch, divided by the
    number of copies so that a constant input gives the same response."""
    _, _, kh, kw = weight_2d.shape
    pt, ph, pw = patch
    if ph % kh or pw % kw:
        raise ValueError(f"patch {patch} is not a multiple of the 2D kernel {(kh, kw)}")
    reps = (pt, ph // kh, pw // kw)
    w = weight_2d[:, :, None].repeat(1, 1, *reps)
    return w / (reps[0] * reps[1] * reps[2])


def inflate_swin_2d(swin: dict, cfg: VideoEncoderConfig) -> dict:
    """Official 2D Swin state dict -> video-encoder state dict (keys without `video_encoder.`)."""
    out: dict[str, torch.Tensor] = {}
    for layer, block, stage, src in _swin_block_sources(cfg):
        prefix = f"layers.{stage}.blocks.{src}."
        for key, value in swin.items():
            if not key.startswith(prefix) or _recomputed(key):
                continue
            name = key[len(prefix) :]
            if name == "attn.relative_position_bias_table":
                value = resize_bias_table(value, cfg.window_size[layer])
            out[f"layers.{layer}.blocks.{block}.{name}"] = value
    for layer in cfg.downsample_stages:
        stage = cfg.stages[layer]
        for key, value in swin.items():
            if key.startswith(f"layers.{stage}.downsample."):
                out[f"layers.{layer}.downsample." + key.split("downsample.", 1)[1]] = value
    tap = next((i for i, w in enumerate(cfg.window_size) if w[0] > cfg.local_window), None)
    if tap is not None and tap > 0:
        stage = cfg.stages[tap - 1]
        for key, value in swin.items():
            if key.startswith(f"layers.{stage}.downsample."):
                out["local_feat_proj." + key.split("downsample.", 1)[1]] = value
    for key, value in swin.items():
        if key.startswith("norm."):
            out[key] = value
            out["norm_local." + key[len("norm.") :]] = value
        elif key.startswith("patch_embed.norm."):
            out[key] = value
    if "patch_embed.proj.weight" in swin:
        out["patch_embed.proj.weight"] = inflate_patch_embed(
            swin["patch_embed.proj.weight"], cfg.patch_size
        )
        out["patch_embed.proj.bias"] = swin["patch_embed.proj.bias"]
    return out


# --------------------------------------------------------------------------------------------
# BERT


def _legacy_names(key: str) -> str:
    return re.sub(
        r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    )


def convert_bert(hf: dict, num_layers: int, with_mlm_head: bool = True) -> dict:
    """HF BERT state dict (`bert.*`, `cls.*`) -> ours with the `text_encoder.` prefix, layers
    >= num_layers dropped, legacy gamma/beta mapped, plus `sent_embedding.position_embeddings`
    initialised from BERT's position table. `cls.seq_relationship` (NSP) is not LF-VILA's VTM head
    (SPEC §8.1: `seq_relationship` starts random) and is dropped."""
    out = {}
    for key, value in hf.items():
        key = _legacy_names(key)
        if not key.startswith(("bert.", "cls.")) and key.startswith(
            ("embeddings.", "encoder.", "pooler.")
        ):
            key = "bert." + key  # a bare BertModel state dict
        if _recomputed(key) or key.startswith("cls.seq_relationship"):
            continue
        match = re.match(r"bert\.encoder\.layer\.(\d+)\.", key)
        if match and int(match.group(1)) >= num_layers:
            continue
        if key.startswith("cls.") and not with_mlm_head:
            continue
        out["text_encoder." + key] = value
    if "text_encoder.bert.embeddings.position_embeddings.weight" in out:
        out["sent_embedding.position_embeddings.weight"] = out[
            "text_encoder.bert.embeddings.position_embeddings.weight"
        ].clone()
    return out


def export_bert(ours: dict) -> dict:
    """Our `text_encoder.*` keys -> a Hugging Face BERT state dict (`bert.*`, `cls.*`)."""
    return {
        k[len("text_encoder.") :]: v
        for k, v in ours.items()
        if k.startswith("text_encoder.") and not _recomputed(k)
    }


# --------------------------------------------------------------------------------------------
# The original LF-VILA layout (SPEC §13)


def from_original(state_dict: dict) -> dict:
    """LF-VILA checkpoint (`LFVILA_Pretrain` or a task model, fp16) -> our key layout: the same
    names (SPEC §13), minus the recomputed buffers and any `module.` prefix."""
    out = {}
    for key, value in state_dict.items():
        key = key[len("module.") :] if key.startswith("module.") else key
        if _recomputed(key):
            continue
        out[key] = value
    return out


def to_original(state_dict: dict, dtype: torch.dtype | None = torch.float16) -> dict:
    """Our state dict -> the original layout, as `save_fp16_model` wrote it: floating tensors in
    `dtype`, plus BERT's `embeddings.position_ids` buffer, which the original saved (ours,
    `relative_position_index` and `sent_embedding.position_ids`, are already in the state dict)."""
    out = {}
    for key, value in state_dict.items():
        out[key] = value.to(dtype) if dtype is not None and value.is_floating_point() else value
        if key.endswith("bert.embeddings.position_embeddings.weight"):
            positions = torch.arange(value.shape[0])[None]
            out[key.replace("position_embeddings.weight", "position_ids")] = positions
    return out


# What moves from pre-training weights into a task model (SPEC §9, §13.3), per `model.task`:
# (keys of pre-training heads the task model leaves behind, the task's new heads). Prefixes.
_PRETRAINING_HEADS = ("text_encoder.cls.", "text_encoder.seq_relationship.")
_CLIP_PROJECTIONS = ("video_local_proj.", "text_local_proj.")
TRANSFER: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "retrieval": (_PRETRAINING_HEADS + _CLIP_PROJECTIONS, ()),
    "multichoice_qa": (
        _PRETRAINING_HEADS + _CLIP_PROJECTIONS + ("video_global_proj.", "text_global_proj."),
        ("text_encoder.classifier.", "text_encoder.span_classifier."),
    ),
    "qa_classification": (
        _PRETRAINING_HEADS + _CLIP_PROJECTIONS + ("video_global_proj.", "text_global_proj."),
        ("text_encoder.classifier.",),
    ),
    "video_classification": (
        ("text_encoder.", "sent_embedding.", "text_global_proj.") + _CLIP_PROJECTIONS,
        ("classifier.", "video_frame_proj."),
    ),
}


@dataclasses.dataclass
class TransferReport:
    """`load_weights`' report with the expected differences of a pre-training -> task transfer
    taken out: `dropped` (pre-training heads the task has no use for) and `new` (task heads
    that start from their initialisation)."""

    report: LoadReport
    dropped: list[str]
    new: list[str]

    @property
    def ok(self) -> bool:
        return self.report.ok

    def __str__(self) -> str:
        lines = [str(self.report)]
        if self.dropped:
            lines.append(
                f"left out, pre-training only ({len(self.dropped)}): " + _brief(self.dropped)
            )
        if self.new:
            lines.append(f"new, initialised here ({len(self.new)}): " + ", ".join(self.new))
        return "\n".join(lines)


def _brief(keys: list[str], shown: int = 8) -> str:
    heads = sorted({k.split(".")[0] + ("." + k.split(".")[1] if "." in k else "") for k in keys})
    return ", ".join(h + ".*" for h in heads[:shown]) + (" ..." if len(heads) > shown else "")


def load_task_weights(
    model: nn.Module, state_dict: dict, strict: bool = True, allow_new_heads: bool = True
) -> TransferReport:
    """Load LF-VILA weights (our layout: pre-training or a task model) into `model`, a model of
    `model.cfg.task`. The pre-training heads that task does not have are left out and its new
    heads keep their initialisation (`TRANSFER`); anything else missing, unexpected or of
    another shape raises under `strict` (e.g. stage-1 weights into a QA model, which needs the
    cross-modal layers of stage 2). `allow_new_heads=False` (evaluation) also requires the
    task's heads."""
    task = getattr(getattr(model, "cfg", None), "task", "pretrain")
    dropped_prefixes, new_prefixes = TRANSFER.get(task, ((), ()))
    if not allow_new_heads:
        new_prefixes = ()
    report = load_weights(model, state_dict, strict=False)
    dropped = [k for k in report.unexpected if k.startswith(dropped_prefixes)]
    new = [k for k in report.missing if k.startswith(new_prefixes)]
    rest = LoadReport(
        [k for k in report.missing if k not in new],
        [k for k in report.unexpected if k not in dropped],
        report.mismatched,
        report.loaded,
    )
    out = TransferReport(rest, dropped, new)
    if strict and not rest.ok:
        hint = ""
        if not allow_new_heads and any(
            k.startswith(TRANSFER.get(task, ((), ()))[1]) for k in rest.missing
        ):
            hint = "\n(the weights lack this task's heads: fine-tune them first, `lfvila finetune`)"
        cross = _missing_cross_modal_layers(model, rest.missing)
        if cross:
            hint += (
                f"\n(the {task} model's cross-modal text layers {cross} are missing: these are "
                "stage-1 weights, which have none. Fine-tune QA from a stage-2 pre-training run "
                "(`lfvila pretrain` with model.stage=2 and init.weights=<the stage-1 run>), or "
                "pass such weights with --weights)"
            )
        raise ValueError(f"weights do not match the {task} model:\n{rest}{hint}")
    return out


def _missing_cross_modal_layers(model: nn.Module, missing: list[str]) -> str:
    """'12-23' when `missing` holds text layers past the stage-1 ones (weights of a stage-1
    model loaded into a cross-modal one), else ''."""
    cfg = getattr(model, "cfg", None)
    text = getattr(cfg, "text", None)
    if text is None:
        return ""
    prefix = "text_encoder.bert.encoder.layer."
    layers = sorted({int(k[len(prefix) :].split(".")[0]) for k in missing if k.startswith(prefix)})
    layers = [i for i in layers if i >= text.stage1_layers]
    if not layers:
        return ""
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])


def initialise(
    model: nn.Module,
    swin: str | Path | None = None,
    bert: str | Path | None = None,
    lfvila: str | Path | None = None,
    strict: bool = False,
) -> dict[str, LoadReport]:
    """Initialise a model from local checkpoint files, in SPEC §8.1's order: the Swin checkpoint
    (inflated) into `video_encoder`, BERT into `text_encoder` (and the paragraph positions), then
    an LF-VILA checkpoint over everything it holds. Returns one report per file given.

    `strict` raises unless each file's keys cover its part exactly (the LF-VILA file: the whole
    model; for a task model less the pre-training heads it leaves behind and plus its new heads,
    `load_task_weights`). Nothing is downloaded.
    """
    reports = {}
    if swin is not None:
        video_encoder = model.video_encoder
        inflated = inflate_swin_2d(read_checkpoint(swin), video_encoder.cfg)
        reports["swin"] = load_weights(video_encoder, inflated, strict=strict)
    if bert is not None:
        text_encoder = getattr(model, "text_encoder", None)
        if text_encoder is None:
            raise ValueError(f"init.bert: the {type(model).__name__} model has no text encoder")
        converted = convert_bert(
            read_checkpoint(bert),
            len(text_encoder.bert.encoder.layer),
            with_mlm_head=hasattr(text_encoder, "cls"),
        )
        report = load_weights(model, converted)
        bert_missing = [k for k in report.missing if k.startswith("text_encoder.bert.")]
        if strict and (bert_missing or report.unexpected or report.mismatched):
            raise ValueError(f"{bert}: BERT checkpoint does not match text_encoder:\n{report}")
        reports["bert"] = report
    if lfvila is not None:
        state = from_original(read_checkpoint(lfvila))
        if getattr(getattr(model, "cfg", None), "task", "pretrain") == "pretrain":
            reports["lfvila"] = load_weights(model, state, strict=strict)
        else:
            reports["lfvila"] = load_task_weights(model, state, strict=strict)
    return reports
