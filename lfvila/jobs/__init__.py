"""The jobs: what a command does, callable from Python too. Each builds from one config, runs
and writes its run folder; the command line (`lfvila.cli`) only parses arguments and calls them.

- `pretrain.pretrain`: `lfvila pretrain` (the process group, data, model, optimiser, engine, the
  one loop of `lfvila.training.loop`, the export); `finetune.finetune`: `lfvila finetune` on
  the same job; `evaluate.evaluate_weights`: `lfvila evaluate`.
- `demo.run_demo`: `lfvila demo` (generated videos, a small pre-training, retrieval before and
  after); `attention_demo`: `lfvila attention-check`.
- `runs` (the run folder: default place, fresh or resumed, the resume command) and `weights`
  (initialised models, weights of any layout, exports) are their shared pieces.

May import `lfvila.config`, `model`, `data`, `training` and `tasks` (and `lfvila.kernels`);
never `lfvila.cli` or `lfvila.retrieval`, which sit beside or above it.
"""
