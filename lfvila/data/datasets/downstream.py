"""The downstream task datasets (SPEC §9): paragraph-to-video retrieval, How2QA, VIOLIN,
ActivityNet-QA and video classification (COIN / LVU)."""

from __future__ import annotations

import torch

from ..text import how2qa_paragraphs, violin_paragraph
from .base import VideoTextDataset
from .span import HOW2QA_FPS, how2qa_span_labels


class RetrievalDataset(VideoTextDataset):
    """Paragraph-to-video retrieval (SPEC §9.1): `num_frames` frames over the whole video, up to
    M sentences (merged by the shortest-adjacent-pair rule)."""

    def plan_video(self, index, rng):
        return self._whole_video_plan(self.records[index]["clip_id"], rng, self._where(index))

    def text_and_labels(self, index, rng, plan):
        text = self.records[index]["text"]
        return self.encode([text] if isinstance(text, str) else text, rng_seed=rng.randrange(2**31))


class How2QADataset(RetrievalDataset):
    """How2QA (SPEC §9.2): K candidate paragraphs [question, answer_k, 6 subtitles] and
    `span_labels` (T,) from `how2qa_span_labels` (the span in seconds over the file's frame
    count at an assumed 3 fps; NaN: the whole video), T = `num_frames`."""

    FPS = HOW2QA_FPS

    def text_and_labels(self, index, rng, plan):
        r = self.records[index]
        paragraphs = how2qa_paragraphs(
            r["text_q"], r["text_a"], r["text_s"], self.opt.max_sentences - 2
        )
        encoded = [self.encode(p) for p in paragraphs]
        path = plan.files[0][0]
        span = how2qa_span_labels(*r["span"], self.num_frames(path), self.opt.num_frames)
        return {
            "text_ids": torch.stack([e["text_ids"] for e in encoded]),
            "text_mask": torch.stack([e["text_mask"] for e in encoded]),
            "answer": torch.tensor(r["answer_idx"]),
            "span_labels": span,
        }


class ViolinDataset(RetrievalDataset):
    """VIOLIN (SPEC §9.3): [statement, up to 4 subtitles], 30 tokens each; label `answer`."""

    def text_and_labels(self, index, rng, plan):
        r = self.records[index]
        out = self.encode(violin_paragraph(r["text_q"], r["text_s"], self.opt.max_sentences - 1))
        out["labels"] = torch.tensor(r["answer"])
        return out


class ActNetQADataset(VideoTextDataset):
    """ActivityNet-QA (SPEC §9.4): the question alone, 1654-way label `answer`."""

    def plan_video(self, index, rng):
        return self._whole_video_plan(self.records[index]["video_name"], rng, self._where(index))

    def text_and_labels(self, index, rng, plan):
        r = self.records[index]
        out = self.encode([r["question"]], max_sentences=1)
        out["labels"] = torch.tensor(r["answer"])
        return out


class VideoClassificationDataset(VideoTextDataset):
    """COIN / LVU (SPEC §9.5): video only; label `recipe_type`."""

    def plan_video(self, index, rng):
        return self._whole_video_plan(self.records[index]["video_id"], rng, self._where(index))

    def text_and_labels(self, index, rng, plan):
        return {"labels": torch.tensor(self.records[index]["recipe_type"])}
