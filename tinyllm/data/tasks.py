"""Small instruction tasks whose answers a program can check: data for fine-tuning.

Each task makes prompts and their one right answer, as chat messages, from a seeded
generator: ``add`` (sums of two numbers), ``sort`` (a few numbers in increasing order),
``reverse`` (a few letters backwards), ``convert`` (metric units) and ``quote`` (the n-th
word of a line of the shipped corpus). Supervised fine-tuning learns from the messages;
evaluation compares a model's answer with ``answer`` character for character.

The splits never share a prompt: a prompt's split is fixed by a hash of its text (80% train,
10% validation, 10% test), so any number of examples can be drawn from any split.

>>> example = task_examples("sort", 1, split="test", seed=0)[0]
>>> example.messages[0]["content"], example.answer
('sort: 2 6 8 0 3', '0 2 3 6 8')
>>> example.messages[1] == {"role": "assistant", "content": example.answer}
True

Preference pairs (for a reward model and DPO) put a right answer (``chosen``) beside a
plausible wrong one (``rejected``): an off-by-a-little sum, a list out of order, a word
from the wrong place.

>>> pair = preference_pairs("add", 1, seed=0)[0]
>>> pair["prompt"], pair["chosen"] != pair["rejected"]
([{'role': 'user', 'content': 'add: 85 + 63'}], True)
"""

import hashlib
from dataclasses import dataclass

import numpy as np

from .corpus import load_corpus

SPLITS = {"train": range(0, 8), "val": range(8, 9), "test": range(9, 10)}  # hash % 10


@dataclass(frozen=True)
class TaskExample:
    """A prompt, its right answer, and the chat messages of both."""

    task: str
    prompt: str
    answer: str

    @property
    def messages(self):
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.answer},
        ]


def _add(rng):
    a, b = rng.integers(0, 100, size=2)
    return f"add: {a} + {b}", str(a + b)


def _sort(rng):
    numbers = rng.choice(10, size=int(rng.integers(3, 6)), replace=False)
    return "sort: " + " ".join(map(str, numbers)), " ".join(map(str, sorted(numbers)))


def _reverse(rng):
    letters = rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(3, 6)))
    return "reverse: " + " ".join(letters), " ".join(letters[::-1])


UNITS = {
    ("km", "m"): 1000, ("m", "cm"): 100, ("cm", "mm"): 10, ("kg", "g"): 1000, ("l", "ml"): 1000,
    ("h", "min"): 60, ("min", "s"): 60, ("day", "h"): 24,
}  # fmt: skip


def _convert(rng):
    (big, small), factor = list(UNITS.items())[int(rng.integers(len(UNITS)))]
    amount = int(rng.integers(1, 100))
    return f"convert: {amount} {big} to {small}", str(amount * factor)


ORDINALS = ("first", "second", "third", "fourth")


def _quote(rng, lines):
    line = lines[int(rng.integers(len(lines)))]
    index = int(rng.integers(len(ORDINALS)))
    return f"{ORDINALS[index]} word: {line}", line.split()[index]


GENERATORS = {"add": _add, "sort": _sort, "reverse": _reverse, "convert": _convert, "quote": _quote}
TASKS = tuple(GENERATORS)


def _corpus_lines():
    """Lines of the shipped corpus with 4 to 10 words, punctuation-free, for ``quote``."""
    lines = []
    for line in load_corpus("tinyshakespeare").splitlines():
        words = [w.strip(".,;:!?'\"-") for w in line.split()]
        words = [w for w in words if w.isalpha()]
        if 4 <= len(words) <= 10:
            lines.append(" ".join(words))
    return lines


def split_of(prompt):
    """The split a prompt belongs to, fixed by a hash of its text."""
    bucket = int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 10
    return next(name for name, buckets in SPLITS.items() if bucket in buckets)


def _check_task(task, split):
    tasks = task if isinstance(task, (list, tuple)) else [task]
    for name in tasks:
        if name not in GENERATORS:
            raise ValueError(f"unknown task {name!r}: expected one of {', '.join(TASKS)}")
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")
    return tasks


def task_examples(task, n, *, split="train", seed=0):
    """``n`` distinct examples of ``task`` (a name, or a list of names taken in turn) from
    ``split``, drawn by a generator seeded with ``seed``."""
    tasks = _check_task(task, split)
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n={n!r}: expected an integer >= 0")
    rng = np.random.default_rng(seed)
    lines = _corpus_lines() if "quote" in tasks else None
    examples, seen, tries = [], set(), 0
    while len(examples) < n:
        name = tasks[len(examples) % len(tasks)]
        prompt, answer = GENERATORS[name](rng, lines) if name == "quote" else GENERATORS[name](rng)
        tries += 1
        if tries > 200 * (n + 10):
            wanted = -(-n // len(tasks))  # taken in turn: each task gives its share
            raise ValueError(
                f"task {name!r} has fewer than {wanted} distinct prompts in the {split} split"
            )
        if prompt in seen or split_of(prompt) != split:
            continue
        seen.add(prompt)
        examples.append(TaskExample(name, prompt, answer))
    return examples


def wrong_answer(example, rng):
    """A plausible wrong answer to ``example``: what a preference pair rejects."""
    if example.task in ("add", "convert"):
        value = int(example.answer)
        return str(value + int(rng.choice([-10, -2, -1, 1, 2, 10])))
    if example.task in ("sort", "reverse"):
        items = example.answer.split()
        while items == example.answer.split():
            items = list(rng.permutation(items))
        return " ".join(items)
    words = example.prompt.split(": ", 1)[1].split()
    wrong = [w for w in words if w != example.answer]
    return wrong[int(rng.integers(len(wrong)))] if wrong else example.answer + "s"


def preference_pairs(task, n, *, split="train", seed=0):
    """``n`` pairs in TRL's shape: ``prompt`` (the user message, as a message list),
    ``chosen`` (the right answer) and ``rejected`` (a wrong one)."""
    rng = np.random.default_rng([seed, 1])
    return [
        {"prompt": example.messages[:1], "chosen": example.answer,
         "rejected": wrong_answer(example, rng)}
        for example in task_examples(task, n, split=split, seed=seed)
    ]  # fmt: skip
