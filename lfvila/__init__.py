"""lfvila: LF-VILA long-form video-language pre-training.

The package's face: `lfvila.Encoder` (a trained model's features, `lfvila.retrieval`) and the
version. The rooms below it: `cli` (the command line) calls `jobs` (pre-train, fine-tune,
evaluate, demo) and `retrieval` (encode, index, search), which build on `tasks`, `training`,
`data` and `model`; `prepare` builds pre-training data; `config` is the typed config everything
reads; `lfvila.kernels` (the folder `kernels/`) holds the fused kernels.
"""

from ._version import __version__

__all__ = ["Encoder", "__version__"]


def __getattr__(name: str):
    # lazy: `import lfvila` stays light (torch, PyAV and the model load on first use)
    if name == "Encoder":
        from .retrieval.encoder import Encoder

        return Encoder
    raise AttributeError(f"module 'lfvila' has no attribute {name!r}")
