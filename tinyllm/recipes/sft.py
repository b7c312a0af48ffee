"""Supervised fine-tuning as a run: a pretrained model folder in, a chat model folder out.

1. Load the model and its tokenizer (which must have the chat tokens: a BPE run folder).
2. Conversations: the checkable tasks (``tinyllm.data.tasks``, the default) or a JSONL
   file / ``hf:<dataset>`` of ``messages``; each encoded with the chat template, the loss on
   the assistant's tokens only, packed into rows of the context length.
3. Train with the one ``Trainer`` and ``sft_loss``; at each evaluation, the exact-match
   accuracy of greedy answers to held-out validation prompts (tasks) and the perplexity of
   held-out responses.
4. Before and after, on held-out test prompts (tasks): the accuracy of greedy answers, the
   share of right sampled answers and of preference pairs whose right answer the model
   finds more likely (``task_measures``), in the run's ``sft.json``.

``fine_tune`` is this run with an optional step around the training that changes what
trains and what is written: LoRA (``lora.py``) freezes the model, adds adapters and writes
them in PEFT's format.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ..backend import use_backend
from ..data import RowBatches
from ..data.preferences import load_conversations
from ..data.sft import pack, sft_tokens
from ..data.tasks import task_examples
from ..infer.evaluate import exact_match, response_perplexity, task_measures
from ..train import TrainConfig, Trainer
from ..train.sft import sft_loss
from .posttrain import (
    PostTrainConfig,
    data_field,
    held_out,
    load_chat_model,
    training_threads_for,
    write_summary,
)

# Fine-tuning's training defaults (the other TrainConfig fields keep theirs): a few hundred
# steps from a pretrained model
TRAIN_DEFAULTS = dict(steps=400, batch_size=8, lr=2e-3, min_lr=2e-4, eval_interval=100)


@dataclass(frozen=True)
class SFTConfig(PostTrainConfig):
    model: str = field(default="runs/speedrun", metadata={"help": "the pretrained model folder"})
    data: str = data_field("messages")
    out: str = field(default="runs/sft", metadata={"help": "the run folder"})
    examples: int = field(default=1500, metadata={"help": "training conversations (tasks)"})
    eval_examples: int = field(
        default=100, metadata={"help": "held-out prompts for the accuracy, per evaluation"}
    )

    COUNTS = ("examples", "eval_examples")


@dataclass
class SFTRun:
    """What ``sft`` returns: the model, its tokenizer, the training result, the run folder
    and the held-out measures before and after."""

    model: object
    tokenizer: object
    result: object
    steps: int  # the steps the run was asked for
    out: Path
    before: dict  # task_measures on held-out test prompts (tasks only; else empty)
    after: dict


def sft(config, train=None):
    """Run the recipe in the module docstring; returns an ``SFTRun``."""
    return fine_tune(config, TrainConfig(**TRAIN_DEFAULTS) if train is None else train)


def fine_tune(config, train, name="sft", step=None):
    """The SFT run, written to ``<out>/<name>.json``. ``step`` (optional) works around the
    training: ``step.prepare(model, tokenizer, rows)`` changes the loaded model before it
    (LoRA adds its adapters; ``rows`` are the packed training rows) and
    ``step.finish(model, tokenizer)`` writes what it adds after; each returns a dict of
    facts for the summary."""
    with use_backend(config.backend):
        return _fine_tune(config, train, name, step)


def _fine_tune(config, train, name, step):
    model, tokenizer = load_chat_model(config.model)
    context = model.config.context_length
    if config.data == "tasks":
        train_examples = task_examples(
            config.task_names, config.examples, split="train", seed=train.seed
        )
        conversations = [e.messages for e in train_examples]
        val, test = (held_out(config, s, config.eval_examples, train.seed) for s in ("val", "test"))
        val_conversations = [e.messages for e in val.examples]
    else:
        conversations = load_conversations(config.data)
        cut = max(1, len(conversations) // 20)  # 5% held out for the perplexity
        conversations, val_conversations = conversations[cut:], conversations[:cut]
        val = test = None
    examples = [
        sft_tokens(tokenizer, c, context_length=context, index=i)
        for i, c in enumerate(conversations)
    ]
    rows = pack(examples, context)
    facts = {} if step is None else step.prepare(model, tokenizer, rows)

    def evaluate(model):
        scores = {"response_ppl": response_perplexity(model, tokenizer, val_conversations)}
        if val is not None:
            scores["accuracy"] = exact_match(model, tokenizer, val.examples)[0]
        return scores

    def measures(model):
        if test is None:
            return {}
        return task_measures(model, tokenizer, test.examples, pairs=test.pairs)

    with training_threads_for(model):
        before = measures(model)
        trainer = Trainer(
            model, train, RowBatches(tuple(rows), train.micro_batch_size, seed=train.seed),
            loss_fn=sft_loss, eval_fn=evaluate, out_dir=config.out, tokenizer=tokenizer,
            title=name,
        )  # fmt: skip
        result = trainer.fit(resume=config.resume)
        after = {} if result.stopped_by else measures(model)  # a stop is quick
    if step is not None:
        facts |= step.finish(model, tokenizer)
    out = write_summary(config, name, before=before, after=after,
                        conversations=len(conversations), rows=len(rows.ids), **facts)  # fmt: skip
    return SFTRun(model, tokenizer, result, train.steps, out, before, after)
