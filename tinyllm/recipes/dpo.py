"""Direct preference optimisation as a run: an SFT model folder in, a preference-tuned one out.

1. Load the SFT model twice: the policy (trained) and the reference (frozen).
2. Preference pairs: the checkable tasks' right-vs-wrong answers (``tinyllm.data.tasks``,
   the default) or a JSONL file / ``hf:<dataset>`` in TRL's ``prompt`` / ``chosen`` /
   ``rejected`` shape; the reference's log-probabilities of every response computed once.
3. Train the policy with the one ``Trainer`` and ``dpo_loss(beta)``: the implicit rewards of
   chosen and rejected responses, their margin and the pairs ranked right are logged at each
   step; at each evaluation, on held-out validation pairs, the preference accuracy, and the
   rate of right answers among the policy's *sampled* answers, and its KL to the reference
   on those samples.
4. Before and after on held-out test prompts, in the run's ``dpo.json``.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend import NAMES as BACKENDS
from ..backend import use_backend
from ..config import Config
from ..data import RowBatches
from ..data.preferences import load_preferences, preference_rows
from ..data.tasks import TASKS, preference_pairs, task_examples
from ..files import atomic_open
from ..infer.evaluate import answer_text, answer_tokens
from ..nn.module import inference
from ..train import TrainConfig, Trainer
from ..train.preference import dpo_loss, reference_logps, sequence_logps
from .sft import check_counts_and_tasks, load_chat_model, task_names

# Preference tuning's training defaults (the other TrainConfig fields keep theirs)
TRAIN_DEFAULTS = dict(steps=200, batch_size=16, lr=1e-4, min_lr=1e-5, eval_interval=100)


@dataclass(frozen=True)
class DPOConfig(Config):
    model: str = field(
        default="runs/sft", metadata={"help": "the SFT model folder (policy and reference)"}
    )
    data: str = field(
        default="tasks",
        metadata={"help": "tasks (right vs wrong answers), or a .jsonl file / hf:<dataset> of "
                          "prompt/chosen/rejected"},
    )  # fmt: skip
    tasks: str = field(
        default="add,sort,convert",
        metadata={"help": f"with --data tasks: which, comma-separated ({', '.join(TASKS)})"},
    )
    pairs: int = field(default=1000, metadata={"help": "training pairs (tasks)"})
    eval_pairs: int = field(
        default=100, metadata={"help": "held-out pairs and prompts per evaluation"}
    )
    beta: float = field(
        default=0.1, metadata={"help": "how far the policy may move: small goes far"}
    )
    samples: int = field(default=2, metadata={"help": "sampled answers per held-out prompt"})
    out: str = field(default="runs/dpo", metadata={"help": "the run folder"})
    backend: str | None = field(
        default=None,
        metadata={"help": "the array library; none: the current one", "choices": BACKENDS},
    )
    resume: bool = field(
        default=False, metadata={"help": "continue the run in --out from its latest checkpoint"}
    )

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"DPOConfig: beta={self.beta!r}: expected a number > 0 (0.1 is usual)")
        check_counts_and_tasks(self, ("pairs", "eval_pairs", "samples"))


@dataclass
class DPORun:
    """What ``dpo`` returns: the policy, its tokenizer, the training result, the run folder,
    and the held-out measures before and after (``dpo.json``)."""

    model: object
    tokenizer: object
    result: object
    out: Path
    before: dict
    after: dict


def _with_reference(reference, rows):
    return (*rows, *reference_logps(reference, rows))


def preference_accuracy(policy, batch, beta):
    """The share of pairs whose chosen response gets the larger implicit reward."""
    _, metrics = _no_grad_loss(policy, batch, beta)
    return float(metrics["accuracy"])


def _no_grad_loss(policy, batch, beta):
    with inference(policy):
        return dpo_loss(beta)(policy, batch)


def sampled_measures(policy, reference, tokenizer, examples, samples, seed=0):
    """On answers sampled from ``policy`` (temperature 1): the share that are right, and the
    mean of log pi(answer) - log ref(answer) over the sampled tokens themselves, a
    Monte-Carlo estimate of KL(policy || ref)."""
    right, gaps = [], []
    prompts = [e.messages[:1] for e in examples]
    for k in range(samples):
        sampled = answer_tokens(policy, tokenizer, prompts, temperature=1.0, seed=seed + k)
        right += [answer_text(tokenizer, new).strip() == e.answer
                  for (_, new), e in zip(sampled, examples)]  # fmt: skip
        T = max(len(prompt) + len(new) for prompt, new in sampled)
        ids = np.zeros((len(sampled), T), np.int64)  # (N, T), padded on the right
        targets = np.full((len(sampled), T), -100, np.int64)  # only the sampled tokens score
        for row, (prompt, new) in enumerate(sampled):
            ids[row, : len(prompt) + len(new)] = prompt + new
            targets[row, len(prompt) - 1 : len(prompt) - 1 + len(new)] = new
        with inference(policy), inference(reference):
            gap = sequence_logps(policy, ids, targets) - sequence_logps(reference, ids, targets)
        gaps.append(gap.numpy())
    return float(np.mean(right)), float(np.mean(np.concatenate(gaps)))


def dpo(config, train=None):
    """Run the recipe in the module docstring; returns a ``DPORun``."""
    train = TrainConfig(**TRAIN_DEFAULTS) if train is None else train
    with use_backend(config.backend):
        return _dpo(config, train)


def _dpo(config, train):
    policy, tokenizer = load_chat_model(config.model)
    reference, _ = load_chat_model(config.model)  # frozen: never given to an optimizer
    reference.eval()
    context = policy.config.context_length
    if config.data == "tasks":
        tasks, seed = task_names(config.tasks), train.seed
        pairs = preference_pairs(tasks, config.pairs, split="train", seed=seed)
        val_pairs = preference_pairs(tasks, config.eval_pairs, split="val", seed=seed)
        val_prompts = task_examples(tasks, config.eval_pairs, split="val", seed=seed)
        test_prompts = task_examples(tasks, config.eval_pairs, split="test", seed=seed)
    else:
        pairs = load_preferences(config.data)
        cut = max(1, len(pairs) // 20)
        pairs, val_pairs = pairs[cut:], pairs[:cut]
        val_prompts = test_prompts = None
    train_rows = _with_reference(reference, preference_rows(tokenizer, pairs, context))
    val_rows = _with_reference(reference, preference_rows(tokenizer, val_pairs, context))

    def measures(model, prompts):
        scores = {"preference_accuracy": preference_accuracy(model, val_rows, config.beta)}
        if prompts is not None:
            right, kl = sampled_measures(model, reference, tokenizer, prompts, config.samples)
            scores |= {"sampled_right": right, "kl": kl}
        return scores

    before = measures(policy, test_prompts)
    trainer = Trainer(
        policy, train, RowBatches(train_rows, train.micro_batch_size, seed=train.seed),
        loss_fn=dpo_loss(config.beta), eval_fn=lambda model: measures(model, val_prompts),
        out_dir=config.out, tokenizer=tokenizer, title="dpo",
    )  # fmt: skip
    result = trainer.fit(resume=config.resume)
    after = measures(policy, test_prompts)
    out = Path(config.out)
    with atomic_open(out / "dpo.json", "w") as file:
        json.dump({"config": config.to_dict(), "before": before, "after": after, "pairs": len(pairs)},
                  file, indent=2)  # fmt: skip
    return DPORun(policy, tokenizer, result, out, before, after)
