"""lfvila: LF-VILA long-form video-language pre-training."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # lazy: `import lfvila` stays light (torch, PyAV and the model load on first use)
    if name == "Encoder":
        from .encode import Encoder

        return Encoder
    raise AttributeError(f"module 'lfvila' has no attribute {name!r}")
