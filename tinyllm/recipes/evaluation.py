"""``tinyllm eval``: a chat model folder measured on held-out data, the numbers in a file.

On the checkable tasks (the default): the exact-match accuracy of greedy answers, overall
and per task; the share of right answers among *sampled* ones (temperature 1), the
property preference tuning moves; the share of preference pairs (right vs wrong answer)
whose right answer the model finds more likely; and the perplexity of the right answers. On a JSONL file
or ``hf:<dataset>`` of ``messages``: the perplexity of its assistant turns. On
``corpus:<name>`` (a shipped corpus, a text file or ``hf:<dataset>``): the perplexity of
the corpus's validation split, the text pretraining held out - for any model folder, chat
tokens or not, quantized or not.
"""

import math
from dataclasses import dataclass, field

from ..backend import use_backend
from ..data import load_tokenizer, validation_tokens
from ..data.preferences import load_conversations
from ..data.tasks import SPLITS
from ..infer.evaluate import response_perplexity, task_measures, text_perplexity
from ..train.checkpoint import load_model_folder
from .posttrain import ChatRunConfig, held_out, load_chat_model, write_summary
from .pretrain import VAL_FRACTION

CORPUS = "corpus:"  # --data corpus:<name>


@dataclass(frozen=True)
class EvalConfig(ChatRunConfig):
    model: str = field(default="runs/sft", metadata={"help": "the chat model folder"})
    data: str = field(
        default="tasks",
        metadata={
            "help": "tasks (the checkable tasks), a .jsonl file / hf:<dataset> of messages, "
            "or corpus:<name> (the validation text of a corpus)"
        },
    )
    out: str = field(
        default="", metadata={"help": "the folder for eval.json (default: the model folder)"}
    )
    examples: int = field(default=200, metadata={"help": "held-out prompts (tasks)"})
    split: str = field(
        default="test", metadata={"help": "which held-out split (tasks)", "choices": tuple(SPLITS)}
    )
    samples: int = field(default=1, metadata={"help": "sampled answers per prompt (tasks)"})
    seed: int = field(default=0, metadata={"help": "draws the prompts and the samples"})

    COUNTS = ("examples", "samples")

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"EvalConfig: split={self.split!r}: expected one of {tuple(SPLITS)}")
        super().__post_init__()


def corpus_measures(model, tokenizer, corpus, max_windows=None):
    """``{"val_loss", "val_ppl"}`` of ``model`` on ``corpus``'s validation split, under
    ``tokenizer`` (``max_windows`` context windows at most: all by default)."""
    tokens = validation_tokens(corpus, tokenizer, val_fraction=VAL_FRACTION)
    ppl = text_perplexity(model, tokens, max_windows=max_windows)
    return {"val_loss": math.log(ppl), "val_ppl": ppl}


def evaluate(config):
    """Measure the model as the module docstring says; returns the measures (a dict), also
    written to ``eval.json``."""
    with use_backend(config.backend):
        if config.data.startswith(CORPUS):
            model, tokenizer = load_model_folder(config.model), load_tokenizer(config.model)
            measures = corpus_measures(model, tokenizer, config.data[len(CORPUS) :])
        else:
            measures = _chat_measures(config)
    write_summary(config.replace(out=config.out or config.model), "eval", **measures)
    return measures


def _chat_measures(config):
    model, tokenizer = load_chat_model(config.model)
    if config.data != "tasks":
        conversations = load_conversations(config.data)
        return {"response_ppl": response_perplexity(model, tokenizer, conversations)}
    held = held_out(config, config.split, config.examples, config.seed)
    measures = task_measures(
        model, tokenizer, held.examples, pairs=held.pairs, samples=config.samples,
        seed=config.seed,
    )  # fmt: skip
    conversations = [e.messages for e in held.examples]
    measures["response_ppl"] = response_perplexity(model, tokenizer, conversations)
    return measures
