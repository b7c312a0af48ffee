"""Direct preference optimisation as a run: an SFT model folder in, a preference-tuned one out.

1. Load the SFT model twice: the policy (trained) and the reference (frozen; another folder
   with the same architecture and tokenizer may be named instead).
2. Preference pairs: on the checkable tasks (``tinyllm.data.tasks``, the default), the right
   answer against one of the SFT model's own wrong samples (``sampled_pairs``) or a made-up
   wrong one; or a JSONL file / ``hf:<dataset>`` in TRL's ``prompt`` / ``chosen`` /
   ``rejected`` shape. The reference's log-probabilities of every response computed once.
3. Train the policy with the one ``Trainer`` and ``dpo_loss(beta, sft_weight)``: the
   implicit rewards of chosen and rejected responses, their margin and the pairs ranked
   right are logged at each step; at each evaluation, on held-out validation prompts,
   ``task_measures``: greedy accuracy, the rate of right answers among the policy's
   *sampled* answers, the made-up pairs it ranks right, and its KL to the reference on its
   samples.
4. Before and after on held-out test prompts, in the run's ``dpo.json``.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ..backend import use_backend
from ..data import RowBatches
from ..data.preferences import load_preferences, preference_rows
from ..data.tasks import preference_pairs, task_examples
from ..infer.evaluate import answers, is_right, preference_accuracy, task_measures
from ..train import TrainConfig, Trainer
from ..train.preference import dpo_loss, reference_logps
from .posttrain import (
    HeldOut,
    PostTrainConfig,
    data_field,
    fits_context,
    held_out,
    load_chat_model,
    split_off,
    training_threads_for,
    write_summary,
)

# Preference tuning's training defaults (the other TrainConfig fields keep theirs)
TRAIN_DEFAULTS = dict(steps=200, batch_size=16, lr=1e-4, min_lr=1e-5, eval_interval=100)


@dataclass(frozen=True)
class DPOConfig(PostTrainConfig):
    model: str = field(
        default="runs/sft", metadata={"help": "the SFT model folder (policy and reference)"}
    )
    data: str = data_field("prompt/chosen/rejected pairs")
    reference: str = field(
        default="",
        metadata={"help": "the frozen reference model folder (default: --model itself)"},
    )
    out: str = field(default="runs/dpo", metadata={"help": "the run folder"})
    pairs: int = field(
        default=1000,
        metadata={"help": "training pairs (tasks; a run of fewer steps x batch makes only those)"},
    )
    eval_pairs: int = field(
        default=100, metadata={"help": "held-out pairs and prompts per evaluation"}
    )
    beta: float = field(
        default=0.1, metadata={"help": "how far the policy may move: small goes far"}
    )
    sft_weight: float = field(
        default=1.0,
        metadata={
            "help": "weight of an SFT loss on the chosen responses beside DPO's (RPO; 0: DPO "
            "alone, which on the tasks pushes the right answers down too)"
        },
    )
    rejected: str = field(
        default="sampled",
        metadata={
            "help": "with --data tasks, the rejected answers: the SFT model's own wrong samples, "
            "or made-up wrong answers",
            "choices": ("sampled", "made-up"),
        },
    )
    samples: int = field(default=2, metadata={"help": "sampled answers per held-out prompt"})

    COUNTS = ("pairs", "eval_pairs", "samples")

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"DPOConfig: beta={self.beta!r}: expected a number > 0 (0.1 is usual)")
        if self.rejected not in ("sampled", "made-up"):
            raise ValueError(
                f"DPOConfig: rejected={self.rejected!r}: expected 'sampled' or 'made-up'"
            )
        if not self.sft_weight >= 0:
            raise ValueError(f"DPOConfig: sft_weight={self.sft_weight!r}: expected a number >= 0")
        super().__post_init__()


@dataclass
class DPORun:
    """What ``dpo`` returns: the policy, its tokenizer, the training result, the run folder,
    and the held-out measures before and after (``dpo.json``)."""

    model: object
    tokenizer: object
    result: object
    steps: int  # the steps the run was asked for
    out: Path
    before: dict
    after: dict


def sampled_pairs(model, tokenizer, examples, *, samples=2, seed=0):
    """On-policy preference pairs: for each of ``examples`` (``TaskExample``s) whose answers
    sampled from ``model`` (``samples`` at temperature 1) include a wrong one, the right
    answer (chosen) against the first wrong sample that fits the context (rejected). DPO
    then pushes down the mistakes the model makes, not made-up ones."""
    prompts = [e.messages[:1] for e in examples]
    wrong = [None] * len(examples)
    for k in range(samples):
        got = answers(model, tokenizer, prompts, temperature=1.0, seed=seed + k)
        for i, answer in enumerate(got):
            if wrong[i] is None and not is_right(examples[i], answer):
                wrong[i] = answer if fits_context(model, tokenizer, prompts[i], answer) else None
    return [
        {"prompt": e.messages[:1], "chosen": e.answer, "rejected": w}
        for e, w in zip(examples, wrong) if w is not None
    ]  # fmt: skip


def load_reference(directory, policy, tokenizer):
    """The frozen reference model of ``directory`` (never given to an optimizer), refused
    unless it has the policy's architecture and vocabulary: DPO compares the two models'
    log-probabilities of the same tokens."""
    reference, reference_tokenizer = load_chat_model(directory)
    ours, theirs = policy.config.to_dict(), reference.config.to_dict()
    differ = {k: (ours[k], theirs.get(k)) for k in ours if ours[k] != theirs.get(k)}
    if differ:
        raise ValueError(
            f"reference {directory}: its architecture differs from the policy's in "
            + ", ".join(f"{k} ({a!r} vs {b!r})" for k, (a, b) in differ.items())
        )
    if reference_tokenizer.to_json() != tokenizer.to_json():
        raise ValueError(
            f"reference {directory}: its tokenizer differs from the policy's: the same ids "
            "would be different text"
        )
    return reference.eval()


def _with_reference(reference, rows):
    return (*rows, *reference_logps(reference, rows))


def dpo(config, train=None):
    """Run the recipe in the module docstring; returns a ``DPORun``."""
    train = TrainConfig(**TRAIN_DEFAULTS) if train is None else train
    with use_backend(config.backend):
        return _dpo(config, train)


def _dpo(config, train):
    policy, tokenizer = load_chat_model(config.model)
    reference = load_reference(config.reference or config.model, policy, tokenizer)
    context = policy.config.context_length
    if config.data == "tasks":
        # Sampling and the reference's log-probabilities are the slow part: a run too short
        # to see every pair makes only as many as its steps can use
        wanted = min(config.pairs, train.steps * train.batch_size)
        if config.rejected == "sampled":
            examples = task_examples(config.task_names, wanted, split="train", seed=train.seed)
            with training_threads_for(policy):
                pairs = sampled_pairs(policy, tokenizer, examples, seed=train.seed)
            if not pairs:
                raise ValueError(
                    f"{config.model} answered all {len(examples)} prompts right in every "
                    "sample: no wrong answers to reject; use --rejected made-up"
                )
        else:
            pairs = preference_pairs(config.task_names, wanted, split="train", seed=train.seed)
        val, test = (
            held_out(config, split, config.eval_pairs, train.seed) for split in ("val", "test")
        )
    else:
        held, pairs = split_off(load_preferences(config.data), config.data)
        val = test = HeldOut(None, held)
    train_rows = _with_reference(reference, preference_rows(tokenizer, pairs, context))

    def measures(model, held):
        if held.examples is None:
            return {"preference_accuracy": preference_accuracy(model, tokenizer, held.pairs)}
        return task_measures(
            model, tokenizer, held.examples, pairs=held.pairs, samples=config.samples,
            reference=reference,
        )  # fmt: skip

    with training_threads_for(policy):
        before = measures(policy, test)
        trainer = Trainer(
            policy, train, RowBatches(train_rows, train.micro_batch_size, seed=train.seed),
            loss_fn=dpo_loss(config.beta, config.sft_weight), eval_fn=lambda model: measures(model, val),
            out_dir=config.out, tokenizer=tokenizer, title="dpo",
        )  # fmt: skip
        result = trainer.fit(resume=config.resume)
        after = {} if result.stopped_by else measures(policy, test)  # a stop is quick
    out = write_summary(config, "dpo", before=before, after=after, pairs=len(pairs))
    return DPORun(policy, tokenizer, result, train.steps, out, before, after)
