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

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..backend import use_backend
from ..data import RowBatches
from ..data.preferences import load_preferences, preference_rows
from ..data.tasks import preference_pairs, task_examples
from ..infer.evaluate import answers, is_right
from ..nn.module import inference
from ..tokenizer.chat import format_chat
from ..train import TrainConfig, Trainer
from ..train.preference import dpo_loss, reference_logps, sequence_logps
from .posttrain import PostTrainConfig, load_chat_model, write_summary

# Preference tuning's training defaults (the other TrainConfig fields keep theirs)
TRAIN_DEFAULTS = dict(steps=200, batch_size=16, lr=1e-4, min_lr=1e-5, eval_interval=100)


@dataclass(frozen=True)
class DPOConfig(PostTrainConfig):
    model: str = field(
        default="runs/sft", metadata={"help": "the SFT model folder (policy and reference)"}
    )
    data: str = field(
        default="tasks",
        metadata={"help": "tasks (right vs wrong answers), or a .jsonl file / hf:<dataset> of "
                          "prompt/chosen/rejected"},
    )  # fmt: skip
    out: str = field(default="runs/dpo", metadata={"help": "the run folder"})
    pairs: int = field(default=1000, metadata={"help": "training pairs (tasks)"})
    eval_pairs: int = field(
        default=100, metadata={"help": "held-out pairs and prompts per evaluation"}
    )
    beta: float = field(
        default=0.1, metadata={"help": "how far the policy may move: small goes far"}
    )
    samples: int = field(default=2, metadata={"help": "sampled answers per held-out prompt"})

    COUNTS = ("pairs", "eval_pairs", "samples")

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"DPOConfig: beta={self.beta!r}: expected a number > 0 (0.1 is usual)")
        super().__post_init__()


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
    mean of log pi(answer) - log ref(answer), a Monte-Carlo estimate of KL(policy || ref)
    (over the part of an answer that fits the context)."""
    right, gaps = [], []
    context = policy.config.context_length
    prompts = [e.messages[:1] for e in examples]
    for k in range(samples):
        got = answers(policy, tokenizer, prompts, temperature=1.0, seed=seed + k)
        right += [is_right(e, g) for e, g in zip(examples, got)]
        rows = []
        for prompt, answer in zip(prompts, got):
            ids, mask = format_chat(tokenizer, [*prompt, {"role": "assistant", "content": answer}])
            ids, mask = ids[:context], mask[:context]
            rows.append((ids, [t if m else -100 for t, m in zip(ids[1:], mask[1:])] + [-100]))
        T = max(len(ids) for ids, _ in rows)
        ids = np.array([i + [0] * (T - len(i)) for i, _ in rows])
        targets = np.array([t + [-100] * (T - len(t)) for _, t in rows])
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
        tasks, seed = config.task_names, train.seed
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
    out = write_summary(config, "dpo", before=before, after=after, pairs=len(pairs))
    return DPORun(policy, tokenizer, result, out, before, after)
