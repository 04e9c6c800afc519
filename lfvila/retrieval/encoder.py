"""Using a trained model: `Encoder` turns videos and paragraphs into the global stage-1 features
that paragraph-to-video retrieval compares (SPEC.md §9.1), with exactly the evaluation's data
path, so that its features equal those of `lfvila evaluate` and the zero-shot evaluation.

- Videos: `num_frames` frames spread over the whole file (`video_frame_indices`, evaluation
  mode), decoded with PyAV, the eval transform (`augment_eval`), then `video_features`: the same
  `VideoTextDataset.decode` the retrieval datasets use.
- Paragraphs: a string is one sentence and a list of strings one sentence each (merged to
  `max_sentences` by the shortest-adjacent-pair rule), as the retrieval annotations are read;
  `split_sentences` cuts free text into sentences first (the command line does).
- Output: (N, P) float32, L2-normalised. On the CPU these are the model's fp32 features bit for
  bit (at the evaluation's batch size); on a GPU the model runs under bf16 autocast, as
  evaluation does, and the features are normalised again in fp32.

Works with any run directory (or model.safetensors with its config.yaml) of a model that has
the stage-1 global features: pre-training stages 1 and 2, and retrieval fine-tuning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import Config
from ..data.containers import VideoDecodeError
from ..data.datasets import DataOptions, VideoTextDataset
from ..data.sampling import video_frame_indices
from ..data.text import encode_sentences, get_tokenizer

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class VideoFailure:
    """A video that could not be encoded: its position in the input, path, kind and reason."""

    position: int
    path: str
    kind: str
    """A `VideoDecodeError.KINDS` entry (or "other")."""
    reason: str


@dataclasses.dataclass
class VideoBatch:
    """Features of the readable videos of one batch and the failures among its inputs."""

    positions: list[int]
    """Input positions of the rows of `features`."""
    features: torch.Tensor
    """(len(positions), P) float32, L2-normalised, on the CPU."""
    failures: list[VideoFailure]


def split_sentences(text: str) -> list[str]:
    """Free text -> sentences: cut after '.', '!', '?' or ';' followed by a space (or at the end)
    and at new lines; the delimiters are dropped (the demo's sentences have none)."""
    parts = re.split(r"[.!?;]+(?=\s|$)|\n", text)
    sentences = [p.strip() for p in parts if p.strip()]
    if not sentences:
        raise ValueError(f"no sentence in {text!r}")
    return sentences


def weights_fingerprint(path: str | os.PathLike) -> str:
    """The first 16 hex digits of the weights file's SHA-256: an index remembers which model
    wrote it, and chunks of another model are never mixed in."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


class _VideoFiles(VideoTextDataset):
    """Whole video files, planned as the retrieval evaluation plans them; an unreadable video
    becomes an item with an `error` instead of raising (the encoder reports and skips it)."""

    def plan_video(self, index, rng):
        path = str(self.records[index])
        indices = video_frame_indices(self.num_frames(path), self.opt.num_frames, False, rng)
        return self._augment_plan(rng, [(path, indices)])

    def text_and_labels(self, index, rng, plan):
        return {}

    def __getitem__(self, index: int) -> dict:
        try:
            return self.item(index)
        except VideoDecodeError as exc:
            return {"index": index, "error": (exc.path, exc.kind, exc.reason)}
        except (OSError, ValueError) as exc:  # e.g. a folder given as a video
            return {"index": index, "error": (str(self.records[index]), "other", str(exc))}


def _collate(items: list[dict]) -> dict:
    ok = [x for x in items if "error" not in x]
    return {
        "positions": [int(x["index"]) for x in ok],
        "video": torch.stack([x["video"] for x in ok]) if ok else None,
        "failures": [VideoFailure(int(x["index"]), *x["error"]) for x in items if "error" in x],
    }


def _data_options(cfg: Config) -> DataOptions:
    """The evaluation's DataOptions from a run's config (`tasks.common.data_options` without
    data.exclude: a saved run's data folder need not exist where the model is used)."""
    v, t = cfg.model.video, cfg.model.text
    vocab = None
    if cfg.data.vocab is not None:
        from ..tasks.common import resolve

        vocab = str(resolve(cfg, "data.vocab", cfg.data.vocab, "file"))
    return DataOptions(
        num_frames=v.num_frames,
        num_clips=v.num_clips,
        size=tuple(v.input_size),
        max_sentences=t.max_sentences,
        max_tokens=t.max_tokens,
        vocab=vocab,
        decoder="pyav",
        strict=True,
        exact_frame_counts=cfg.data.exact_frame_counts,
    )


class Encoder:
    """Global video and paragraph features of a trained LF-VILA model (see the module docstring).

    Build it with `Encoder.from_pretrained(run_dir_or_file)`. `batch_size` defaults to the run's
    eval.batch_size and `workers` (PyAV decoding processes) to its data.workers.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: Config,
        device: str | torch.device | None = None,
        batch_size: int | None = None,
        workers: int | None = None,
        progress: bool | None = None,
        weights: str | None = None,
        fingerprint: str | None = None,
    ):
        if not all(hasattr(model, f) for f in ("video_features", "text_features")):
            raise ValueError(
                f"model.task {cfg.model.task!r}: this model has no global video/paragraph "
                "features (use a pre-training or retrieval run)"
            )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.cfg = cfg
        self.options = _data_options(cfg)
        self.batch_size = batch_size or cfg.eval.batch_size or cfg.train.batch_size
        self.workers = cfg.data.workers if workers is None else workers
        self.progress = progress
        self.weights, self.fingerprint = weights, fingerprint
        self.precision = (
            "bf16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        config: Config | str | os.PathLike | None = None,
        **kwargs,
    ) -> Encoder:
        """The model of a run directory (its model.safetensors and config.yaml; a fine-tuning
        run's best model is DIR/best) or of a .safetensors file with its config.yaml beside it
        (or `config`). device: default CUDA when available, else the CPU."""
        from ..model.pretrained import _locate, from_pretrained, load_pretrained_config

        weights, _ = _locate(path)
        cfg = load_pretrained_config(path, config)
        model = from_pretrained(path, cfg)
        return cls(
            model,
            cfg,
            device,
            weights=str(Path(weights).resolve()),
            fingerprint=weights_fingerprint(weights),
            **kwargs,
        )

    @property
    def dim(self) -> int:
        """P, the width of the features."""
        return self.model.video_global_proj.out_features

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def _finish(self, feats: torch.Tensor) -> torch.Tensor:
        feats = feats.float()
        if self.precision != "fp32":  # bf16 features: normalised again in fp32
            feats = F.normalize(feats, dim=-1)
        return feats.cpu()

    def _bar(self, total: int, desc: str, progress: bool | None):
        from tqdm.auto import tqdm

        show = self.progress if progress is None else progress
        if show is None:
            show = sys.stderr.isatty()
        return tqdm(total=total, desc=desc, unit="item", disable=not show)

    def iter_videos(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int | None = None,
        workers: int | None = None,
        progress: bool | None = None,
    ) -> Iterator[VideoBatch]:
        """Batches of features of `paths` in order, unreadable videos reported in each batch's
        `failures` (not raised)."""
        dataset = _VideoFiles([str(p) for p in paths], ".", False, self.options)
        workers = self.workers if workers is None else workers
        loader = DataLoader(
            dataset,
            batch_size=batch_size or self.batch_size,
            num_workers=workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
        )
        with self._bar(len(dataset), "videos", progress) as bar:
            for batch in loader:
                feats = torch.zeros(0, self.dim)
                if batch["video"] is not None:
                    video = batch["video"].to(self.device, non_blocking=True)
                    with torch.inference_mode(), self._autocast():
                        feats = self._finish(self.model.video_features(video))
                for failure in batch["failures"]:
                    logger.warning("unreadable video %s (%s)", failure.path, failure.reason)
                bar.update(len(batch["positions"]) + len(batch["failures"]))
                yield VideoBatch(batch["positions"], feats, batch["failures"])

    def encode_videos(
        self,
        paths: Sequence[str | os.PathLike],
        batch_size: int | None = None,
        workers: int | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """paths (N video files) -> (N, P) float32 L2-normalised features, row i of paths[i].
        An unreadable video raises VideoDecodeError naming it (`iter_videos` skips instead)."""
        rows = []
        for batch in self.iter_videos(paths, batch_size, workers, progress):
            if batch.failures:
                f = batch.failures[0]
                raise VideoDecodeError(f.path, f.reason)
            rows.append(batch.features)
        return torch.cat(rows) if rows else torch.zeros(0, self.dim)

    def tokenize(self, texts: Sequence[str | Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """texts -> (ids, mask), each (M, max_sentences, max_tokens) int64, as the retrieval
        datasets encode them (a string is one sentence)."""
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of paragraphs, got one string")
        tokenizer = get_tokenizer(self.options.vocab)
        ids, masks = [], []
        for i, text in enumerate(texts):
            sentences = [text] if isinstance(text, str) else list(text)
            if not sentences or not all(isinstance(s, str) for s in sentences):
                raise ValueError(f"texts[{i}]: expected a string or a list of strings")
            enc = encode_sentences(
                tokenizer, sentences, self.options.max_sentences, self.options.max_tokens
            )
            ids.append(enc.ids)
            masks.append(enc.mask)
        m, length = self.options.max_sentences, self.options.max_tokens
        if not ids:
            empty = torch.zeros(0, m, length, dtype=torch.long)
            return empty, empty.clone()
        return torch.stack(ids), torch.stack(masks)

    def encode_paragraphs(
        self,
        texts: Sequence[str | Sequence[str]],
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> torch.Tensor:
        """texts (M paragraphs: a string = one sentence, a list = its sentences) -> (M, P)
        float32 L2-normalised paragraph features."""
        ids, mask = self.tokenize(texts)
        step = batch_size or self.batch_size
        rows = []
        with self._bar(len(ids), "paragraphs", progress) as bar:
            for start in range(0, len(ids), step):
                i = ids[start : start + step].to(self.device)
                m = mask[start : start + step].to(self.device)
                with torch.inference_mode(), self._autocast():
                    rows.append(self._finish(self.model.text_features(i, m)))
                bar.update(len(i))
        return torch.cat(rows) if rows else torch.zeros(0, self.dim)
