"""Knowledge distillation as a run: a chat model folder (the teacher) in, a smaller chat
model (the student) out, sharing the teacher's tokenizer.

1. Load the teacher and its tokenizer; make the student: a fresh model of a preset (by
   default ``tiny`` cut to width 64 and 2 layers) over the teacher's vocabulary and
   context, or a model folder with the very same tokenizer.
2. Conversations, as SFT reads them (``recipes.sft.chat_data``): the checkable tasks by
   default, or a JSONL file / ``hf:<dataset>`` of ``messages``. The tasks are the data the
   teacher was fine-tuned on and have checkable answers, so distillation and plain
   fine-tuning of the same student can be compared on the same conversations, the same
   steps and the same tokens; distilling on the pretraining corpus is the same loss on
   other rows, a pretraining run's job.
3. Train the student with the one ``Trainer``, as ``--mode`` says:

   - ``logits`` (white box): ``distill_loss``, the KL divergence to the teacher's softened
     next-token distribution on the assistant's tokens mixed with the cross-entropy on the
     labels (``alpha``, ``temperature``). With ``top_k`` (20 by default) the teacher's k
     largest logits per position are computed once and travel with the rows
     (``teacher_topk``); without, the teacher runs on every batch and the KL covers its
     whole vocabulary.
   - ``generations`` (black box): the teacher answers the training prompts through the
     generation API (greedy, or sampled at ``generation_temperature``) and the student is
     fine-tuned on those answers with the SFT loss (``teacher_generations``): all that is
     needed of a teacher behind an API.

4. At each evaluation, what SFT logs (the held-out responses' perplexity, the validation
   accuracy). At the end, for teacher and student alike, on held-out data: ``val_loss``,
   the labels' cross-entropy per assistant token on the validation conversations (the
   student's hard-label loss, comparable across ``alpha``), and on the tasks
   ``task_measures`` on the test prompts; all in the run's ``distill.json``.
"""

import math
from dataclasses import dataclass, field
from pathlib import Path

from ..backend import use_backend
from ..data import RowBatches
from ..infer.evaluate import answers, response_perplexity
from ..models import PRESETS, Transformer, get_preset
from ..train import TrainConfig, Trainer
from ..train.distill import check_same_vocabulary, check_settings, distill_loss, teacher_topk
from ..train.sft import sft_loss
from .posttrain import fits_context, load_chat_model, training_threads_for, write_summary
from .sft import SFTConfig, chat_data, held_out_measures, packed_rows, validation_scores

# Distillation's training defaults (the other TrainConfig fields keep theirs): a fresh
# student needs more steps than fine-tuning; at 400 it had not learned the labels yet and the
# teacher's soft targets slowed it further (benchmarks/README.md, Distillation)
TRAIN_DEFAULTS = dict(steps=1600, batch_size=8, lr=3e-3, min_lr=3e-4, eval_interval=400)
MODES = ("logits", "generations")


@dataclass(frozen=True)
class DistillConfig(SFTConfig):
    teacher: str = field(
        default="runs/sft", metadata={"help": "the teacher: a chat model folder (an SFT run's)"}
    )
    model: str = field(
        default="",
        metadata={
            "help": "a model folder to start the student from (with the teacher's very "
            "tokenizer); empty: a fresh model of --student-preset"
        },
    )
    out: str = field(default="runs/distill", metadata={"help": "the run folder"})
    student_preset: str = field(
        default="tiny",
        metadata={"help": "the fresh student's shape (tinyllm.models.PRESETS)", "choices": tuple(PRESETS)},
    )  # fmt: skip
    student_d_model: int | None = field(
        default=64, metadata={"help": "the fresh student's width; none: the preset's"}
    )
    student_n_layer: int | None = field(
        default=2, metadata={"help": "the fresh student's layers; none: the preset's"}
    )
    mode: str = field(
        default="logits",
        metadata={
            "help": "logits: learn the teacher's next-token distributions (white box); "
            "generations: fine-tune on the teacher's answers (black box)",
            "choices": MODES,
        },
    )
    temperature: float = field(
        default=2.0, metadata={"help": "with --mode logits: the softening temperature T"}
    )
    alpha: float = field(
        default=0.2,
        metadata={"help": "with --mode logits: the KL term's weight (0: the labels alone)"},
    )
    top_k: int | None = field(
        default=20,
        metadata={
            "help": "with --mode logits: keep the teacher's k largest logits per position, "
            "computed once; none: its whole distribution, the teacher run at every step"
        },
    )
    generation_temperature: float = field(
        default=0.0,
        metadata={"help": "with --mode generations: the teacher's sampling temperature (0: greedy)"},
    )  # fmt: skip
    max_new_tokens: int = field(
        default=64, metadata={"help": "with --mode generations: the teacher's longest answer"}
    )

    COUNTS = ("examples", "eval_examples", "max_new_tokens")

    def __post_init__(self):
        kind = type(self).__name__
        if self.mode not in MODES:
            raise ValueError(f"{kind}: mode={self.mode!r}: expected 'logits' or 'generations'")
        if self.student_preset not in PRESETS:
            raise ValueError(
                f"{kind}: student_preset={self.student_preset!r}: expected one of "
                f"{', '.join(PRESETS)}"
            )
        if not self.generation_temperature >= 0:
            raise ValueError(
                f"{kind}: generation_temperature={self.generation_temperature!r}: expected a "
                "number >= 0"
            )
        check_settings(self.temperature, self.alpha, self.top_k)
        super().__post_init__()


@dataclass
class DistillRun:
    """What ``distill`` returns: the student, its tokenizer, the training result, the run
    folder, and the held-out measures of the teacher (``before``) and of the student
    (``after``), as ``distill.json`` holds them."""

    model: object
    tokenizer: object
    result: object
    steps: int  # the steps the run was asked for
    out: Path
    before: dict  # the teacher's
    after: dict  # the student's
    compared = ("teacher", "student")  # what before and after are measures of


def student_model(config, teacher, tokenizer, seed=0):
    """The student: ``config.model`` loaded (refused unless its tokenizer is the teacher's),
    or a fresh model of ``config.student_preset`` with the teacher's vocabulary, context
    and special token ids, and the width and depth ``config`` asks for."""
    if config.model:
        student, student_tokenizer = load_chat_model(config.model)
        check_same_vocabulary(teacher, student, tokenizer, student_tokenizer)
        return student
    shape = {"d_model": config.student_d_model, "n_layer": config.student_n_layer}
    same = ("vocab_size", "context_length", "bos_token_id", "eos_token_id")
    changes = {name: getattr(teacher.config, name) for name in same}
    changes |= {name: value for name, value in shape.items() if value is not None}
    return Transformer(get_preset(config.student_preset, **changes), seed=seed)


def teacher_generations(teacher, tokenizer, prompts, *, temperature=0.0, seed=0,
                        max_new_tokens=64):  # fmt: skip
    """Conversations whose assistant turn the teacher wrote: its answer to each of
    ``prompts`` (message lists), greedy or sampled at ``temperature``; answers that do not
    fit the context with their prompt are left out."""
    got = answers(
        teacher, tokenizer, prompts, temperature=temperature, seed=seed,
        max_new_tokens=max_new_tokens,
    )  # fmt: skip
    return [
        [*prompt, {"role": "assistant", "content": answer}]
        for prompt, answer in zip(prompts, got)
        if fits_context(teacher, tokenizer, prompt, answer)
    ]


def prompt_of(messages):
    """The messages before the first assistant turn: what the teacher is asked."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:first]


def distill(config, train=None):
    """Run the recipe in the module docstring; returns a ``DistillRun``."""
    train = TrainConfig(**TRAIN_DEFAULTS) if train is None else train
    with use_backend(config.backend):
        return _distill(config, train)


def _distill(config, train):
    teacher, tokenizer = load_chat_model(config.teacher)
    teacher.eval()  # never trained: no dropout
    student = student_model(config, teacher, tokenizer, seed=train.seed)
    context = min(teacher.config.context_length, student.config.context_length)
    data = chat_data(config, train.seed)

    def measures(model):
        loss = math.log(response_perplexity(model, tokenizer, data.val_conversations))
        return {"val_loss": loss, **held_out_measures(model, tokenizer, data)}

    with training_threads_for(teacher):
        batches, loss_fn, conversations = _training_data(
            config, teacher, tokenizer, data, context, seed=train.seed
        )
        before = measures(teacher)
        trainer = Trainer(
            student, train, RowBatches(batches, train.micro_batch_size, seed=train.seed),
            loss_fn=loss_fn, eval_fn=lambda model: validation_scores(model, tokenizer, data),
            out_dir=config.out, tokenizer=tokenizer, title="distill",
        )  # fmt: skip
        result = trainer.fit(resume=config.resume)
        after = {} if result.stopped_by else measures(student)  # a stop is quick
    out = write_summary(config, "distill", teacher=before, student=after,
                        conversations=conversations, rows=len(batches[0]))  # fmt: skip
    return DistillRun(student, tokenizer, result, train.steps, out, before, after)


def _training_data(config, teacher, tokenizer, data, context, seed):
    """``(rows, loss_fn, conversations)`` of ``config.mode``: the arrays the batches are cut
    from, the loss that reads them, and how many conversations they hold."""
    if config.mode == "generations":
        prompts = [prompt_of(messages) for messages in data.train]
        conversations = teacher_generations(
            teacher, tokenizer, prompts, temperature=config.generation_temperature, seed=seed,
            max_new_tokens=config.max_new_tokens,
        )  # fmt: skip
        if not conversations:
            raise ValueError(
                f"none of the teacher's {len(prompts)} answers fits the context of "
                f"{context} tokens with its prompt: lower --max-new-tokens"
            )
        return tuple(packed_rows(tokenizer, conversations, context)), sft_loss, len(conversations)
    rows = packed_rows(tokenizer, data.train, context)
    if config.top_k is None:
        loss_fn = distill_loss(teacher, config.temperature, config.alpha)
        return tuple(rows), loss_fn, len(data.train)
    cache = teacher_topk(teacher, rows, config.top_k)
    return (*rows, *cache), distill_loss(None, config.temperature, config.alpha), len(data.train)
