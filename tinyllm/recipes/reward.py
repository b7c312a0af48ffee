"""A reward model as a run: an SFT model folder in, a model that scores conversations out.

1. Load the SFT model; its body becomes the reward model's (``RewardModel.from_language_model``),
   the scalar head starts fresh.
2. Preference pairs: the checkable tasks' right-vs-wrong answers (the default) or a JSONL
   file / ``hf:<dataset>`` in TRL's ``prompt`` / ``chosen`` / ``rejected`` shape.
3. Train with the one ``Trainer`` and the Bradley-Terry ``reward_loss``; at each evaluation,
   the share of held-out validation pairs ranked right.
4. The share of held-out test pairs ranked right, before and after, in ``reward.json``.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..autograd import to_numpy
from ..backend import use_backend
from ..data import RowBatches
from ..data.preferences import load_preferences, preference_rows
from ..data.tasks import preference_pairs
from ..models.reward import RewardModel
from ..nn.module import measuring
from ..train import TrainConfig, Trainer
from ..train.preference import reward_loss
from .posttrain import (
    PostTrainConfig,
    data_field,
    held_out,
    load_chat_model,
    split_off,
    training_threads_for,
    write_summary,
)

# The reward model's training defaults (the other TrainConfig fields keep theirs)
TRAIN_DEFAULTS = dict(steps=200, batch_size=16, lr=3e-4, min_lr=3e-5, eval_interval=100)


@dataclass(frozen=True)
class RewardConfig(PostTrainConfig):
    model: str = field(
        default="runs/sft", metadata={"help": "the SFT model folder (the reward model's body)"}
    )
    data: str = data_field("prompt/chosen/rejected pairs")
    out: str = field(default="runs/reward", metadata={"help": "the run folder"})
    pairs: int = field(default=1500, metadata={"help": "training pairs (tasks)"})
    eval_pairs: int = field(default=200, metadata={"help": "held-out pairs per evaluation"})

    COUNTS = ("pairs", "eval_pairs")


@dataclass
class RewardRun:
    """What ``reward`` returns: the reward model, its tokenizer, the training result, the
    run folder and the held-out test measures before and after."""

    model: object
    tokenizer: object
    result: object
    steps: int  # the steps the run was asked for
    out: Path
    before: dict  # {"pair_accuracy": ...} on held-out test pairs
    after: dict


# a reward model's scores (B,) of ids (B, T) read at lengths (B,), to measure (``measuring``)
_measured_scores = measuring(lambda model, ids, lengths: model(ids, lengths))


def scores(model, rows, batch_size=64):
    """The reward model's scores of the chosen and of the rejected conversations of ``rows``
    (``PreferenceRows``): two arrays (N,)."""

    def scored(ids, lengths):
        parts = [slice(start, start + batch_size) for start in range(0, len(ids), batch_size)]
        return np.concatenate(
            [to_numpy(_measured_scores(model, ids[part], lengths[part])) for part in parts]
        )

    chosen = scored(rows.chosen_ids, rows.chosen_lengths)
    return chosen, scored(rows.rejected_ids, rows.rejected_lengths)


def ranking_accuracy(model, rows):
    """The share of pairs whose chosen conversation scores higher than the rejected one."""
    chosen, rejected = scores(model, rows)
    return float(np.mean(chosen > rejected))


def reward(config, train=None):
    """Run the recipe in the module docstring; returns a ``RewardRun``."""
    train = TrainConfig(**TRAIN_DEFAULTS) if train is None else train
    with use_backend(config.backend):
        return _reward(config, train)


def _reward(config, train):
    language_model, tokenizer = load_chat_model(config.model)
    model = RewardModel.from_language_model(language_model, seed=train.seed)
    context = model.config.context_length
    if config.data == "tasks":
        pairs = preference_pairs(config.task_names, config.pairs, split="train", seed=train.seed)
        val, test = (
            held_out(config, split, config.eval_pairs, train.seed).pairs
            for split in ("val", "test")
        )
    else:
        val, test, pairs = split_off(load_preferences(config.data), config.data, held=2)
    val_rows, test_rows = (preference_rows(tokenizer, p, context) for p in (val, test))
    with training_threads_for(model):
        before = {"pair_accuracy": ranking_accuracy(model, test_rows)}
        trainer = Trainer(
            model, train,
            RowBatches(tuple(preference_rows(tokenizer, pairs, context)), train.micro_batch_size,
                       seed=train.seed),
            loss_fn=reward_loss, eval_fn=lambda m: {"pair_accuracy": ranking_accuracy(m, val_rows)},
            out_dir=config.out, tokenizer=tokenizer, title="reward model",
        )  # fmt: skip
        result = trainer.fit(resume=config.resume)
        if result.stopped_by is None:  # a stop is quick: measured only when done
            after = {"pair_accuracy": ranking_accuracy(model, test_rows)}
        else:
            after = {}
    out = write_summary(config, "reward", before=before, after=after,
                        pairs=len(pairs))  # fmt: skip
    return RewardRun(model, tokenizer, result, train.steps, out, before, after)
