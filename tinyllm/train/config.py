"""``TrainConfig``: how long and how a model trains - every knob of the training loop.

The defaults are nanoGPT's Shakespeare-character recipe (AdamW, lr 1e-3 with a cosine
decay to 1e-4, betas (0.9, 0.99), clipping at 1.0). The model's shape lives elsewhere, in
``ModelConfig``; data and tokenizer in the recipe that builds the run. Each field's
``help`` (its metadata) says what it means; ``tinyllm pretrain --help`` prints it.

The warmup follows the run's length unless it is given: a tenth of the steps, at most 100.

>>> TrainConfig(steps=100).replace(lr=3e-4).lr
0.0003
>>> TrainConfig().warmup_steps, TrainConfig(steps=30).warmup_steps
(100, 3)
>>> TrainConfig().replace(steps=50).warmup_steps  # a default warmup follows the new length
5
>>> TrainConfig(steps=0)
Traceback (most recent call last):
...
ValueError: TrainConfig: steps=0 must be an integer >= 1
"""

import dataclasses
from dataclasses import field

from ..backend.precision import COMPUTE_DTYPES, DTYPE_HELP
from ..config import Config
from ..optim import SCHEDULES
from .sharding import SHARD_MODES, process_settings_problem

MAX_DEFAULT_WARMUP = 100  # a default warmup is a tenth of the run, at most this many steps


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    steps: int = field(default=2000, metadata={"help": "optimizer steps in the whole run"})
    batch_size: int = field(
        default=12,
        metadata={"help": "sequences per optimizer step (split over --grad-accum micro-batches)"},
    )
    grad_accum: int = field(
        default=1, metadata={"help": "micro-batches per step: the same gradient, less memory"}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute each block's activations in the backward pass rather than keep "
            "them: the same gradients, less memory, about a third more compute"
        },
    )
    lr: float = field(default=1e-3, metadata={"help": "the peak learning rate, after warmup"})
    min_lr: float = field(default=1e-4, metadata={"help": "the learning rate the schedule ends at"})
    schedule: str = field(
        default="cosine",
        metadata={"help": "how the learning rate falls after warmup", "choices": tuple(SCHEDULES)},
    )
    warmup_steps: int | None = field(
        default=None,
        metadata={
            "help": "steps of linear warmup up to --lr; none: a tenth of --steps, at most "
            f"{MAX_DEFAULT_WARMUP}"
        },
    )
    weight_decay: float = field(
        default=0.1, metadata={"help": "AdamW's decay, on matrices only (not norms or biases)"}
    )
    beta1: float = field(default=0.9, metadata={"help": "AdamW's gradient-average decay"})
    beta2: float = field(default=0.99, metadata={"help": "AdamW's squared-gradient decay"})
    eps: float = field(default=1e-8, metadata={"help": "AdamW's denominator guard"})
    grad_clip: float = field(
        default=1.0, metadata={"help": "clip the global gradient norm to this; 0 turns it off"}
    )
    dtype: str = field(
        default="float32",
        metadata={
            "help": DTYPE_HELP,
            "choices": COMPUTE_DTYPES,
        },
    )
    eval_interval: int = field(
        default=250,
        metadata={
            "help": "evaluate (val loss, samples, plot) every this many steps; 0: at the end"
        },
    )
    eval_batches: int = field(
        default=20, metadata={"help": "batches averaged for one validation loss"}
    )
    log_interval: int = field(
        default=10, metadata={"help": "write a metrics.jsonl line every this many steps"}
    )
    checkpoint_interval: int = field(
        default=500,
        metadata={"help": "save a checkpoint every this many steps; 0: at the end (and on Ctrl-C)"},
    )
    keep_checkpoints: int = field(default=2, metadata={"help": "keep only the newest this many"})
    seed: int = field(default=1337, metadata={"help": "seed for the data order and dropout masks"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    devices: int | None = field(
        default=None,
        metadata={
            "help": "JAX devices each batch is split over; none: one, or every device with --shard"
        },
    )
    shard: str | None = field(
        default=None,
        metadata={
            "help": "the layout over several JAX devices: dp (data parallel), zero1 (AdamW's "
            "moments sharded), fsdp (the parameters too); none: dp when --devices > 1",
            "choices": SHARD_MODES,
        },
    )
    coordinator: str | None = field(
        default=None,
        metadata={
            "help": "several hosts: HOST:PORT of process 0, which every process reaches (JAX "
            "only; with --num-processes and --process-id); none: this process alone"
        },
    )
    num_processes: int | None = field(
        default=None, metadata={"help": "several hosts: how many processes train together"}
    )
    process_id: int | None = field(
        default=None,
        metadata={"help": "several hosts: this process's number, 0 .. --num-processes - 1"},
    )

    def __post_init__(self):
        def fail(message):
            raise ValueError(f"TrainConfig: {message}")

        if self.warmup_steps is None and isinstance(self.steps, int):
            object.__setattr__(self, "warmup_steps", min(MAX_DEFAULT_WARMUP, self.steps // 10))
            object.__setattr__(self, "_default_warmup", True)  # replace(steps=...) redoes it

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
        if self.dtype not in COMPUTE_DTYPES:
            fail(f"unknown dtype {self.dtype!r}; expected one of {', '.join(COMPUTE_DTYPES)}")
        if self.schedule not in SCHEDULES:
            fail(f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if self.warmup_steps > self.steps:
            fail(f"warmup_steps={self.warmup_steps} is more than steps={self.steps}")
        if self.devices is not None and (
            isinstance(self.devices, bool) or not isinstance(self.devices, int) or self.devices < 1
        ):
            fail(f"devices={self.devices!r} must be an integer >= 1 or None")
        if self.shard is not None and self.shard not in SHARD_MODES:
            fail(f"unknown shard {self.shard!r}; expected one of {', '.join(SHARD_MODES)}")
        problem = process_settings_problem(self.coordinator, self.num_processes, self.process_id)
        if problem:
            fail(problem)
        if self.batch_size % self.grad_accum:
            fail(
                f"batch_size={self.batch_size} is not divisible by grad_accum={self.grad_accum}; "
                "each micro-batch holds batch_size / grad_accum sequences"
            )
        if self.devices and self.micro_batch_size % self.devices:
            fail(
                f"the micro-batch of {self.micro_batch_size} sequences (batch_size="
                f"{self.batch_size} / grad_accum={self.grad_accum}) does not split over "
                f"devices={self.devices}; make it a multiple of {self.devices}"
            )

    def replace(self, **changes):
        """A copy with some fields changed; a warmup left to the default follows new ``steps``."""
        if getattr(self, "_default_warmup", False):
            changes = {"warmup_steps": None, **changes}
        return super().replace(**changes)

    @property
    def micro_batch_size(self):
        return self.batch_size // self.grad_accum
