"""``TrainConfig``: how long and how a model trains - every knob of the training loop.

The defaults are nanoGPT's Shakespeare-character recipe (AdamW, lr 1e-3 with a cosine
decay to 1e-4, betas (0.9, 0.99), clipping at 1.0). The model's shape lives elsewhere, in
``ModelConfig``; data and tokenizer in the recipe that builds the run.

>>> TrainConfig(steps=100).replace(lr=3e-4).lr
0.0003
>>> TrainConfig(steps=0)
Traceback (most recent call last):
...
ValueError: TrainConfig: steps=0 must be an integer >= 1
"""

import dataclasses

from ..config import Config
from ..optim import SCHEDULES


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    steps: int = 2000  # optimizer steps
    batch_size: int = 12  # sequences per optimizer step (split over grad_accum micro-batches)
    grad_accum: int = 1  # micro-batches per step: the same gradient, less memory
    lr: float = 1e-3  # the peak learning rate, reached after warmup
    min_lr: float = 1e-4  # where the schedule ends
    schedule: str = "cosine"  # "cosine", "linear" or "constant" (see tinyllm.optim.schedules)
    warmup_steps: int = 100
    weight_decay: float = 0.1  # AdamW's, for matrices only (norms and biases are not decayed)
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0  # global-norm clipping; 0 turns it off
    eval_interval: int = 250  # evaluate (val loss, samples, plots) every this many steps
    eval_batches: int = 20  # batches averaged for one val-loss estimate
    log_interval: int = 10  # write a metrics line every this many steps
    checkpoint_interval: int = 500  # 0: a checkpoint only at the end (and on Ctrl-C)
    keep_checkpoints: int = 2  # the newest this many are kept
    seed: int = 1337  # data order and dropout masks
    progress: bool = True  # a tqdm bar on the terminal

    def __post_init__(self):
        def fail(message):
            raise ValueError(f"TrainConfig: {message}")

        positive = ("steps", "batch_size", "grad_accum", "eval_batches", "log_interval")
        non_negative = ("warmup_steps", "eval_interval", "checkpoint_interval")
        for name in positive + non_negative + ("keep_checkpoints", "seed"):
            value, least = getattr(self, name), 1 if name in positive + ("keep_checkpoints",) else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                fail(f"{name}={value!r} must be an integer >= {least}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                fail(f"{name}={value!r} must be a number >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                fail(f"{name}={getattr(self, name)!r} must be in [0, 1)")
        if self.schedule not in SCHEDULES:
            fail(f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if self.warmup_steps > self.steps:
            fail(f"warmup_steps={self.warmup_steps} is more than steps={self.steps}")
        if self.batch_size % self.grad_accum:
            fail(
                f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}; "
                "each micro-batch holds batch_size / grad_accum sequences"
            )

    @property
    def micro_batch_size(self):
        return self.batch_size // self.grad_accum
