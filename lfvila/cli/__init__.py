"""The command line only (`lfvila ...`, `python -m lfvila`): one module per command family.

- `parser`: `build_parser` and `main` (the top-level parser, and the exit status and one-line
  message of each kind of error);
- `train`: pretrain, finetune, evaluate; `demo`: demo, attention-check; `prepare`: prepare
  longform|videos|check; `retrieval`: encode videos|text, search; `common`: what they share.

Each module parses and checks its arguments and calls a job (`lfvila.jobs`), a retrieval
function (`lfvila.retrieval`) or a data preparation step (`lfvila.prepare`); none holds a job's
logic. The top of the house: may import any room, and nothing imports it (but `__main__`).
"""

from .parser import build_parser, main

__all__ = ["build_parser", "main"]
