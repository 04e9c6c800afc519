"""The engine that trains every task: process groups (`dist`), optimiser groups and schedules
(`optim`), the single/DDP/DeepSpeed engines (`engine`), atomic checkpoints (`checkpoint`),
logging (`metrics`) and the one training loop (`loop`)."""
