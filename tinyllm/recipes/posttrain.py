"""What the post-training runs (``sft``, ``reward``, ``dpo``, ``eval``) share: where the
model comes from, where the data comes from, where the run goes, and the model's check.

Each run's config is a ``ChatRunConfig`` (``PostTrainConfig`` for those that train, which
may resume) with fields of its own. ``--data tasks`` (the default) means the checkable tasks
of ``tinyllm.data.tasks`` named by ``--tasks``; anything else is a JSONL file or
``hf:<dataset>`` in the shape the run reads.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from ..backend import NAMES as BACKENDS
from ..backend import get_backend
from ..backend.threads import blas_threads, training_threads
from ..config import Config
from ..data import load_tokenizer
from ..data.tasks import TASKS, preference_pairs, task_examples
from ..files import atomic_open
from ..tokenizer.chat import CHAT_SPECIAL_TOKENS, format_chat
from ..train.checkpoint import load_model_folder
from ..train.sharding import is_main_process


def data_field(records):
    """The ``data`` field of a run reading ``records`` (what its files hold)."""
    text = f"tasks (the checkable tasks), or a .jsonl file / hf:<dataset> of {records}"
    return field(default="tasks", metadata={"help": text})


@dataclass(frozen=True)
class ChatRunConfig(Config):
    """The fields every run on a chat model has; ``COUNTS`` names a subclass's fields that
    must be integers >= 1."""

    model: str = field(default="runs/speedrun", metadata={"help": "the model folder to start from"})
    data: str = data_field("records")
    tasks: str = field(
        default="add,sort,convert",
        metadata={"help": f"with --data tasks: which, comma-separated ({', '.join(TASKS)})"},
    )
    out: str = field(default="runs/run", metadata={"help": "the run folder"})
    backend: str | None = field(
        default=None,
        metadata={"help": "the array library; none: the current one", "choices": BACKENDS},
    )

    COUNTS = ()

    def __post_init__(self):
        kind = type(self).__name__
        for name in self.COUNTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{kind}: {name}={value!r}: expected an integer >= 1")
        if self.data == "tasks":
            for task in self.task_names:
                if task not in TASKS:
                    raise ValueError(
                        f"{kind}: unknown task {task!r}: expected some of {', '.join(TASKS)}"
                    )

    @property
    def task_names(self):
        """The task names of the comma-separated ``tasks``."""
        return [t.strip() for t in self.tasks.split(",") if t.strip()]


@dataclass(frozen=True)
class PostTrainConfig(ChatRunConfig):
    """A run that trains: it may continue from its latest checkpoint."""

    resume: bool = field(
        default=False, metadata={"help": "continue the run in --out from its latest checkpoint"}
    )


def load_chat_model(directory):
    """A model folder's model (either form, quantized too) and tokenizer, checked for the
    chat tokens."""
    tokenizer = load_tokenizer(directory)
    missing = [t for t in CHAT_SPECIAL_TOKENS if t not in getattr(tokenizer, "special_tokens", {})]
    if missing:
        raise ValueError(
            f"{directory}: its tokenizer lacks the chat tokens {missing}; fine-tune a model "
            "pretrained with a BPE tokenizer (tinyllm pretrain --tokenizer bpe, or speedrun)"
        )
    return load_model_folder(directory), tokenizer


def fits_context(model, tokenizer, prompt, answer):
    """Whether the conversation of ``prompt`` (messages) and ``answer`` fits the model's
    context (a generated answer, decoded and encoded again, may take more tokens than it
    was drawn in, and a cut one gains its ``<|end|>``)."""
    messages = [*prompt, {"role": "assistant", "content": answer}]
    return len(format_chat(tokenizer, messages).ids) <= model.config.context_length


class HeldOut(NamedTuple):
    """Held-out data: task examples (None for data without checkable answers) and
    preference pairs (None where none)."""

    examples: list | None
    pairs: list | None


def held_out(config, split, n, seed):
    """``n`` examples of ``config``'s tasks from ``split`` and their preference pairs (the
    same prompts, a right and a wrong answer)."""
    tasks = config.task_names
    return HeldOut(
        task_examples(tasks, n, split=split, seed=seed),
        preference_pairs(tasks, n, split=split, seed=seed),
    )


def split_off(items, source, held=1):
    """``held`` slices of 5% each (one item at least) from the front of a file's ``items``
    (conversations or preference pairs), then the rest, for training: ``(*held_out, rest)``."""
    cut = max(1, len(items) // 20)
    if len(items) <= held * cut:
        raise ValueError(f"{source}: {len(items)} items are too few: expected at least "
                         f"{held * cut + 1} ({held * cut} held out, the rest for training)")  # fmt: skip
    return (*(items[i * cut : (i + 1) * cut] for i in range(held)), items[held * cut :])


def training_threads_for(model):
    """The BLAS thread limit pretraining uses for a model this wide (one thread for a
    narrow model on NumPy: steady on a busy machine), as a ``with`` block."""
    return blas_threads(training_threads(model.config.d_model, get_backend().name))


def write_summary(config, name, **facts):
    """``<out>/<name>.json``: the run's config and ``facts`` (what was measured), written
    whole or not at all (by process 0 alone, over several); returns the run folder."""
    out = Path(config.out)
    if not is_main_process():
        return out
    with atomic_open(out / f"{name}.json", "w") as file:
        json.dump({"config": config.to_dict(), **facts}, file, indent=2)
    return out
