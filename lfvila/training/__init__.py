"""The engine that trains every task: process groups (`dist`), optimiser groups and schedules
(`optim`), the single/DDP/DeepSpeed engines (`engine`), atomic checkpoints (`checkpoint`),
logging (`metrics`), the one training loop (`loop`) with its task contract (`protocol`),
evaluation (`evaluation`) and step tally (`tally`), regional compilation (`compile`) and the
kernel self-check before the first step (`kernel_check`).

May import `lfvila.config`, `lfvila.model` (FLOPs, exports), `lfvila.data` (its error types),
`lfvila.kernels` and torch; never `tasks`, `jobs`, `retrieval` or `cli`, which build on it.
"""
