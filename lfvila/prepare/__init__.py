"""Data preparation: from HD-VILA-100M-style metadata, transcripts and raw videos to the
LF-VILA-8M-style pre-training data that `lfvila.data` reads (SPEC.md §10.1).

- `longform`: group time-contiguous clips of each video into runs of at least 4 clips, attach
  their transcripts and write the pre-training JSONL (optionally the original LMDB) and a report.
- `videos`: cut each clip by its span out of a local source video and re-encode it at 3 fps and
  a small height with PyAV (H.264 or VP9), resumable and sharded across machines.
- `check`: every clip an annotation file references exists, opens and has enough frames.

`metadata` holds what they share: the record readers and the path-safety rules. Nothing here
downloads anything. The `lfvila prepare ...` commands are defined in `lfvila.cli.prepare`.

May import `lfvila.data` (annotations, decoding, sampling) and PyAV; never model, training,
tasks, jobs, retrieval or the command line.
"""

from .metadata import PrepareError

__all__ = ["PrepareError"]
