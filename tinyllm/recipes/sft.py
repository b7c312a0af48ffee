"""Supervised fine-tuning as a run: a pretrained model folder in, a chat model folder out.

1. Load the model and its tokenizer (which must have the chat tokens: a BPE run folder).
2. Conversations: the checkable tasks (``tinyllm.data.tasks``, the default) or a JSONL
   file / ``hf:<dataset>`` of ``messages``; each encoded with the chat template, the loss on
   the assistant's tokens only, packed into rows of the context length.
3. Train with the one ``Trainer`` and ``sft_loss``; at each evaluation, the exact-match
   accuracy of greedy answers to held-out validation prompts (tasks) and the perplexity of
   held-out responses.
4. The test accuracy before and after, in the run's ``sft.json``.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ..backend import use_backend
from ..data import RowBatches
from ..data.preferences import load_conversations
from ..data.sft import pack, sft_tokens
from ..data.tasks import task_examples
from ..infer.evaluate import exact_match, response_perplexity
from ..train import TrainConfig, Trainer
from ..train.sft import sft_loss
from .posttrain import PostTrainConfig, load_chat_model, write_summary

# Fine-tuning's training defaults (the other TrainConfig fields keep theirs): a few hundred
# steps from a pretrained model
TRAIN_DEFAULTS = dict(steps=300, batch_size=16, lr=1e-3, min_lr=1e-4, eval_interval=100)


@dataclass(frozen=True)
class SFTConfig(PostTrainConfig):
    model: str = field(default="runs/speedrun", metadata={"help": "the pretrained model folder"})
    data: str = field(
        default="tasks",
        metadata={
            "help": "tasks (the checkable tasks), or a .jsonl file / hf:<dataset> of messages"
        },
    )
    out: str = field(default="runs/sft", metadata={"help": "the run folder"})
    examples: int = field(default=2000, metadata={"help": "training conversations (tasks)"})
    eval_examples: int = field(
        default=100, metadata={"help": "held-out prompts for the accuracy, per evaluation"}
    )

    COUNTS = ("examples", "eval_examples")


@dataclass
class SFTRun:
    """What ``sft`` returns: the model, its tokenizer, the training result, the run folder
    and the test accuracy before and after (tasks only; None otherwise)."""

    model: object
    tokenizer: object
    result: object
    out: Path
    accuracy_before: float | None
    accuracy_after: float | None


def sft(config, train=None):
    """Run the recipe in the module docstring; returns an ``SFTRun``."""
    train = TrainConfig(**TRAIN_DEFAULTS) if train is None else train
    with use_backend(config.backend):
        return _sft(config, train)


def _sft(config, train):
    model, tokenizer = load_chat_model(config.model)
    context = model.config.context_length
    if config.data == "tasks":
        tasks = config.task_names
        conversations = [
            e.messages
            for e in task_examples(tasks, config.examples, split="train", seed=train.seed)
        ]
        val = task_examples(tasks, config.eval_examples, split="val", seed=train.seed)
        test = task_examples(tasks, config.eval_examples, split="test", seed=train.seed)
        held_out = [e.messages for e in val]
    else:
        conversations = load_conversations(config.data)
        cut = max(1, len(conversations) // 20)  # 5% held out for the perplexity
        conversations, held_out = conversations[cut:], conversations[:cut]
        val = test = None
    examples = [
        sft_tokens(tokenizer, c, context_length=context, index=i)
        for i, c in enumerate(conversations)
    ]
    rows = pack(examples, context)

    def evaluate(model):
        scores = {"response_ppl": response_perplexity(model, tokenizer, held_out)}
        if val is not None:
            scores["accuracy"] = exact_match(model, tokenizer, val)[0]
        return scores

    before = exact_match(model, tokenizer, test)[0] if test is not None else None
    trainer = Trainer(
        model, train, RowBatches(tuple(rows), train.micro_batch_size, seed=train.seed),
        loss_fn=sft_loss, eval_fn=evaluate, out_dir=config.out, tokenizer=tokenizer,
        title="sft",
    )  # fmt: skip
    result = trainer.fit(resume=config.resume)
    after = exact_match(model, tokenizer, test)[0] if test is not None else None
    out = write_summary(config, "sft", accuracy_before=before, accuracy_after=after,
                        conversations=len(conversations), rows=len(rows.ids))  # fmt: skip
    return SFTRun(model, tokenizer, result, out, before, after)
