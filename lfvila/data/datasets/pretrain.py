"""The pre-training dataset (SPEC §10.1): windows of consecutive clips of long videos with
their transcripts."""

from __future__ import annotations

from ..annotations import AnnotationError, path_in_root
from ..sampling import clip_frame_indices, clip_window_start
from .base import VideoTextDataset


class PretrainDataset(VideoTextDataset):
    """LF-VILA pre-training: a window of `num_clips` consecutive clips of a long video, 8 frames
    per clip, the clips' transcripts as the paragraph's sentences (SPEC §10.1). Records: lists of
    {clip_id, text}; the file of clip `c` is video_root/<c before the first '.'>/<c>."""

    def plan_video(self, index, rng):
        clips = self.records[index]
        if len(clips) < self.opt.num_clips:  # read_jsonl(min_clips=) refuses these at read time
            raise AnnotationError(
                f"{self._where(index)}: {len(clips)} clips, fewer than the "
                f"{self.opt.num_clips} a sample takes"
            )
        start = clip_window_start(len(clips), self.opt.num_clips, self.train, rng)
        window = clips[start : start + self.opt.num_clips]
        per_clip = self.opt.num_frames // self.opt.num_clips
        for clip in window:  # absolute or '..' ids: an annotation error, before any file is read
            path_in_root(self.root, clip["clip_id"], self._where(index))
        files = []
        for clip in window:
            path = str(self.root / clip["clip_id"].split(".")[0] / clip["clip_id"])
            self._check_excluded(clip["clip_id"], path)
            files.append((path, clip_frame_indices(self.num_frames(path), per_clip)))
        plan = self._augment_plan(rng, files)
        plan.texts = [c["text"] for c in window]  # sentence m is aligned in time with clip m
        return plan

    def text_and_labels(self, index, rng, plan):
        return self.encode(plan.texts, rng_seed=rng.randrange(2**31))
