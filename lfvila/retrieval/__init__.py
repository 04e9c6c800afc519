"""Using a trained model: turn videos and paragraphs into features, keep them in index files,
search them.

- `encoder`: `Encoder` (`lfvila.Encoder`), the evaluation's data path and features for any run
  directory; `split_sentences` for free text.
- `index`: the index file format (`write_index`, `Index`).
- `collection`: a whole collection into an index, resumably (`encode_collection`), and
  paragraph files (`encode_text_file`).
- `search`: exact top-k over an index streamed from disk (`search`), and its retrieval
  metrics against annotations (`evaluate_index`).

Beside the jobs: may import `lfvila.config`, `lfvila.model`, `lfvila.data` and `lfvila.tasks`
(the evaluation's metrics and config resolution); never `lfvila.jobs` or `lfvila.cli`, which
call it. Heavy dependencies (torch, safetensors, FAISS) load with the modules that use them.
"""

from .encoder import Encoder
from .index import Index

__all__ = ["Encoder", "Index"]
