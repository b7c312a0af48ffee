"""The ``tinyllm`` command. Each subcommand is a ``configure`` / ``run`` pair below, listed
with its one-line help in ``COMMANDS`` at the end.

tinyllm info                     version, and which backends work here (and why not)
tinyllm grade [DIR]              grade the exercises (--solutions, --json results.json)
tinyllm tokenizer train|encode   train a byte-level BPE (writes tokenizer.json), encode text
tinyllm pretrain                 train a model on a corpus (flags map onto TrainConfig etc.)
tinyllm sft | reward | dpo       post-training: fine-tune on chats, a reward model, DPO
tinyllm lora                     fine-tune LoRA adapters on a frozen model (PEFT's format)
tinyllm distill                  a smaller student learns from a chat model (distillation)
tinyllm eval                     measure a chat model on held-out tasks, any model on a corpus
tinyllm quantize DIR             a quantized model folder: int8, Q8_0, Q4_0, Q4_1, f16, bf16
tinyllm generate DIR             stream text from a trained model folder (alias: sample)
tinyllm chat DIR                 chat with a model folder in the terminal
tinyllm speedrun                 the main job: tokenizer, pretraining, SFT, DPO and a report
tinyllm serve DIR                an OpenAI-compatible server and chat page (the serve extra)

Ctrl-C (or SIGTERM) during training saves a checkpoint and stops; a second Ctrl-C leaves
at once with exit code 130 and a one-line message.
"""

import argparse
import dataclasses
import math
import platform
import sys
import time
import types

import numpy as np

import tinyllm


# --- tinyllm info -----------------------------------------------------------------------------
def configure_info(parser):
    parser.description = "Print the version and which array backends work on this machine."


def run_info(args):
    print(
        f"tinyllm {tinyllm.__version__} (Python {platform.python_version()}, NumPy {np.__version__})"
    )
    print("backends:")
    for name, (works, detail) in tinyllm.available_backends().items():
        print(f"  {name:6s} {'yes' if works else 'no ':3s}  {detail}")
    print(
        f"current: {tinyllm.get_backend().name} (choose with tinyllm.set_backend(...) "
        "or the TINYLLM_BACKEND environment variable)"
    )
    return 0


# --- tinyllm grade ----------------------------------------------------------------------------
def configure_grade(parser):
    parser.description = "Grade the exercises with pytest and print a score table."
    parser.add_argument(
        "path",
        nargs="?",
        default="exercises",
        help="the exercises folder, or one test file in it (default: exercises)",
    )
    parser.add_argument(
        "--solutions",
        action="store_true",
        help="grade the library's reference implementations instead of the stubs",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="also write a Gradescope autograder results.json to FILE"
    )
    parser.add_argument("-k", metavar="EXPR", help="only tests matching EXPR (as pytest -k)")


def run_grade(args):
    from tinyllm.grading import grade

    report = grade(args.path, solutions=args.solutions, json_path=args.json, keyword=args.k)
    if not report.collected:
        print(f"tinyllm grade: no exercise tests found under {args.path}", file=sys.stderr)
        return 1
    if args.json:
        print(f"wrote {args.json}: {report.score:g} / {report.max_score:g} points")
    return 0


# --- tinyllm tokenizer ------------------------------------------------------------------------
def configure_tokenizer(parser):
    from tinyllm.tokenizer import SPLIT_PATTERNS

    parser.description = "Train a byte-level BPE tokenizer, or encode text with one."
    actions = parser.add_subparsers(dest="action", metavar="ACTION", help="train or encode")
    actions.required = True
    train = actions.add_parser("train", help="train on a corpus and write DIR/tokenizer.json")
    train.add_argument(
        "--corpus",
        default="tinyshakespeare",
        help="a shipped corpus, a text file, or hf:<dataset> (default: tinyshakespeare)",
    )
    train.add_argument(
        "--vocab-size", type=int, required=True, help="tokens in all, special tokens included"
    )
    train.add_argument(
        "--pattern",
        default="gpt2",
        choices=sorted(SPLIT_PATTERNS),
        help="split regex (default: gpt2)",
    )
    train.add_argument("--out", required=True, metavar="DIR", help="folder for tokenizer.json")
    encode = actions.add_parser("encode", help="print the token ids of some text")
    encode.add_argument(
        "--tokenizer", required=True, metavar="PATH", help="a tokenizer.json or its folder"
    )
    encode.add_argument("text", nargs="?", help="the text to encode (default: read standard input)")
    encode.add_argument(
        "--show-tokens", action="store_true", help="print each token's text next to its id"
    )


def run_tokenizer(args):
    import time

    from tinyllm.tokenizer import Tokenizer

    if args.action == "train":
        from tinyllm.data import load_corpus

        start = time.perf_counter()
        tokenizer = Tokenizer.train(load_corpus(args.corpus), args.vocab_size, pattern=args.pattern)
        path = tokenizer.save(args.out)
        print(f"trained {tokenizer} in {time.perf_counter() - start:.1f}s; wrote {path}")
        return 0
    tokenizer = Tokenizer.load(args.tokenizer)
    text = sys.stdin.read() if args.text is None else args.text
    ids = tokenizer.encode(text)
    if args.show_tokens:
        for i in ids:
            print(f"{i:>7}  {tokenizer.decode([i])!r}")
    else:
        print(" ".join(map(str, ids)))
    return 0


# --- flags from dataclasses -------------------------------------------------------------------
def add_dataclass_flags(parser, cls, title, defaults=None):
    """One ``--field-name`` flag per field of dataclass ``cls``: typed from its annotation,
    explained by its ``help`` metadata, and held to its ``choices`` metadata where it has one.
    ``defaults`` (a dict by field name) overrides some of the class's own defaults."""
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(cls):
        default = (defaults or {}).get(field.name, field.default)
        flag = "--" + field.name.replace("_", "-")
        if "help" not in field.metadata:
            raise TypeError(f"{cls.__name__}.{field.name} has no help text in its metadata")
        text = field.metadata["help"]
        choices = field.metadata.get("choices")
        if choices:
            text += f"; one of: {', '.join(choices)}"
        text += " (default: %(default)s)"
        if field.type is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=text
            )
            continue
        group.add_argument(
            flag,
            type=_flag_type(field.type, choices),
            default=default,
            metavar=field.name.upper(),
            help=text,
        )


def dataclass_from_flags(cls, args, **fixed):
    """An instance of ``cls`` from the parsed flags that name its fields."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    return cls(**{**values, **fixed})


def _flag_type(annotation, choices=None):
    """The argparse ``type`` for a field annotated ``int``, ``float``, ``str`` or ``X | None``
    (where the word "none" gives None), refusing a value outside ``choices``."""
    optional = isinstance(annotation, types.UnionType)
    if optional:
        (annotation,) = [t for t in annotation.__args__ if t is not type(None)]

    def convert(text):
        if optional and text.lower() == "none":
            return None
        value = annotation(text)
        if choices and value not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r}; expected one of {', '.join(choices)}"
            )
        return value

    convert.__name__ = annotation.__name__  # argparse names the type in its error messages
    return convert


# --- tinyllm pretrain -------------------------------------------------------------------------
def configure_pretrain(parser):
    from tinyllm.recipes import PretrainConfig
    from tinyllm.train import TrainConfig

    parser.description = (
        "Train a model on a corpus. Writes the run folder --out: config.json, "
        "model.safetensors and the tokenizer (read by tinyllm generate and "
        "Transformer.from_pretrained), metrics.jsonl, loss.png and checkpoints/."
    )
    add_dataclass_flags(parser, PretrainConfig, "data, model and run folder")
    add_dataclass_flags(parser, TrainConfig, "training")


def run_pretrain(args):
    from tinyllm.recipes import PretrainConfig, pretrain
    from tinyllm.recipes.pretrain import show
    from tinyllm.train import TrainConfig

    run = pretrain(
        dataclass_from_flags(PretrainConfig, args), dataclass_from_flags(TrainConfig, args)
    )
    val = "-" if run.val_step is None else f"{show(run.val_loss, '.4f')} (step {run.val_step})"
    print(
        f"step {run.result.step}: train loss {show(run.result.train_loss, '.4f')}, val loss {val}, "
        f"training throughput {show(run.result.tokens_per_second, ',.0f')} tokens/s; model in {run.out}"
    )
    print(run.outcome)
    return 0


# --- tinyllm sft / lora / reward / dpo / distill / eval ------------------------------------------
POST_TRAINING = {  # command (and its recipe's module and function): config class, description
    "sft": (
        "SFTConfig",
        "Supervised fine-tuning of a pretrained model folder on conversations (the checkable "
        "tasks by default), the loss on the assistant's tokens only. Writes the run folder "
        "--out like pretrain does, plus sft.json with the held-out measures before and after.",
    ),
    "lora": (
        "LoRAConfig",
        "Supervised fine-tuning as sft does, with the pretrained model frozen and low-rank "
        "adapters (LoRA) trained on some of its layers. Writes the adapter into --out in "
        "PEFT's format (adapter_config.json, adapter_model.safetensors), with --merge the "
        "model with the adapter merged in (--out/merged), and lora.json with the held-out "
        "measures before and after and the adapter's size.",
    ),
    "reward": (
        "RewardConfig",
        "Train a reward model - the SFT model's body with a scalar head - on preference pairs "
        "(right vs wrong answers to the checkable tasks by default) with the Bradley-Terry "
        "loss. Writes the run folder --out like pretrain does, plus reward.json with the "
        "share of held-out test pairs ranked right (pair_accuracy) before and after.",
    ),
    "dpo": (
        "DPOConfig",
        "Direct preference optimisation of an SFT model folder on preference pairs (the right "
        "answer to a checkable task against the model's own wrong one, by default), against "
        "the same model frozen as the reference. Writes the run folder --out like pretrain "
        "does, plus dpo.json with the held-out measures before and after.",
    ),
    "distill": (
        "DistillConfig",
        "Knowledge distillation: train a smaller student - a fresh model sharing the teacher's "
        "tokenizer - on conversations (the checkable tasks by default), from the teacher's "
        "next-token distributions (--mode logits: KL at --temperature mixed with the labels' "
        "cross-entropy by --alpha) or from its generated answers (--mode generations). Writes "
        "the run folder --out like pretrain does, plus distill.json with the held-out measures "
        "of teacher and student: validation loss and task measures.",
    ),
}


def post_training_command(command):
    """The ``configure`` and ``run`` functions of a post-training command: flags from its
    config's fields, then TrainConfig's with the recipe's training defaults."""
    from importlib import import_module

    config_name, description = POST_TRAINING[command]

    def configure(parser):
        from tinyllm.train import TrainConfig

        module = import_module(f"tinyllm.recipes.{command}")
        parser.description = description
        add_dataclass_flags(parser, getattr(module, config_name), "model, data and run folder")
        add_dataclass_flags(parser, TrainConfig, "training", defaults=module.TRAIN_DEFAULTS)

    def run(args):
        from tinyllm.train import TrainConfig

        module = import_module(f"tinyllm.recipes.{command}")
        config = dataclass_from_flags(getattr(module, config_name), args)
        return _print_run(getattr(module, command)(config, dataclass_from_flags(TrainConfig, args)))

    return configure, run


def _print_run(run):
    """A post-training run's held-out measures before and after, and where it went."""
    from tinyllm.recipes.pretrain import show

    first, second = getattr(run, "compared", ("before", "after"))
    if run.before:
        print("on held-out test data:")
    for name in run.before:
        after = show(run.after.get(name), ".4g")  # nothing after a stop
        print(f"  {name}: {run.before[name]:.4g} {first}, {after} {second}")
    print(f"step {run.result.step}: train loss {run.result.train_loss:.4f}; model in {run.out}")
    return 0


def configure_eval(parser):
    from tinyllm.recipes.evaluation import EvalConfig

    parser.description = (
        "Measure a chat model folder on held-out data: on the checkable tasks, the exact-match "
        "accuracy of greedy answers (overall and per task), the share of right sampled "
        "answers and the answers' perplexity; on a JSONL file of messages, the perplexity of "
        "its assistant turns; on corpus:<name>, any model folder's (quantized ones too) "
        "perplexity on the corpus's validation text. Prints them and writes eval.json."
    )
    add_dataclass_flags(parser, EvalConfig, "model, data and output")


def run_eval(args):
    from tinyllm.recipes.evaluation import EvalConfig, evaluate

    config = dataclass_from_flags(EvalConfig, args)
    for name, value in evaluate(config).items():
        print(f"{name}: {value:.4g}")
    print(f"wrote {config.out or config.model}/eval.json")
    return 0


# --- tinyllm quantize ---------------------------------------------------------------------------
def configure_quantize(parser):
    from tinyllm.quant import SCHEMES

    parser.description = (
        "Store a model folder's linear layers in fewer bits (llama.cpp's Q8_0, Q4_0, Q4_1, "
        "per-channel int8, or float16 / bfloat16) and write a quantized model folder, with "
        "the tokenizer, that tinyllm eval reads (--data corpus:tinyshakespeare for its "
        "validation perplexity)."
    )
    parser.add_argument("directory", metavar="MODEL_DIR", help="the model folder to quantize")
    parser.add_argument("--scheme", required=True, choices=list(SCHEMES), help="the format")
    parser.add_argument("--out", required=True, metavar="DIR", help="the quantized model folder")
    parser.add_argument(
        "--include-output",
        action="store_true",
        help="quantize the output layer (lm_head) too; by default it stays float32",
    )


def run_quantize(args):
    from tinyllm.quant import quantize_folder

    include = ("lm_head",) if args.include_output else ()
    sizes = quantize_folder(args.directory, args.scheme, args.out, include=include)
    before, after = sizes["before"], sizes["after"]
    print(
        f"{args.scheme}: linear weights {before['linear']:,} -> {after['linear']:,} bytes; "
        f"the whole model {before['total']:,} -> {after['total']:,} bytes; wrote {args.out}"
    )
    return 0


# --- tinyllm export-gguf ------------------------------------------------------------------------
def configure_export_gguf(parser):
    from tinyllm.quant.gguf_export import TYPES

    parser.description = (
        "Write a model folder (Llama- or GPT-2-shaped, with a BPE tokenizer) as one GGUF file "
        "that llama.cpp runs: the weights in --type (norms and biases stay float32; with q4_0 "
        "and q4_1 the output layer is stored in q8_0), the shapes and the tokenizer in its "
        "metadata. Needs the gguf package: pip install 'tinyllm[gguf]'."
    )
    parser.add_argument("directory", metavar="MODEL_DIR", help="the model folder to export")
    parser.add_argument("--type", required=True, choices=TYPES, help="the weights' GGUF type")
    parser.add_argument(
        "--out", metavar="FILE", help="the GGUF file (default: MODEL_DIR/model-TYPE.gguf)"
    )


def run_export_gguf(args):
    import warnings
    from pathlib import Path

    from tinyllm.quant.gguf_export import export_gguf

    out = args.out or Path(args.directory) / f"model-{args.type}.gguf"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fallbacks are printed below
            export = export_gguf(args.directory, out, args.type)
    except ImportError as err:
        print(f"tinyllm export-gguf: error: {err}", file=sys.stderr)
        return 2
    counts = {}
    for fmt in export.formats.values():
        counts[fmt] = counts.get(fmt, 0) + 1
    stored = ", ".join(f"{n} {fmt}" for fmt, n in counts.items())
    print(f"wrote {export.path} ({export.path.stat().st_size:,} bytes; tensors: {stored})")
    for message in export.fallbacks:
        print(f"fallback: {message}")
    return 0


# --- tinyllm generate (alias: sample) ----------------------------------------------------------
def configure_sample(parser):
    parser.description = "Generate text from a model folder (one written by tinyllm pretrain)."
    parser.add_argument("directory", metavar="DIR", help="the model folder")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument(
        "--max-new-tokens",
        "--tokens",
        dest="tokens",
        type=_integer(1),
        default=200,
        help="tokens to generate (default: 200)",
    )
    parser.add_argument(
        "--num-samples", type=_integer(1), default=1, help="texts to generate (default: 1)"
    )
    add_sampling_flags(parser, "temperature", "top_k", "top_p", "min_p", "repetition_penalty")
    parser.add_argument(
        "--seed", type=_integer(0), default=0, help="the first sample's seed (default: 0)"
    )
    speculation = parser.add_mutually_exclusive_group()
    speculation.add_argument(
        "--draft",
        metavar="DRAFT_DIR",
        help="speculative decoding: a smaller model folder with the same tokenizer proposes "
        "tokens, the model checks them in one pass (the same text distribution, faster)",
    )
    speculation.add_argument(
        "--prompt-lookup",
        metavar="N",
        type=_integer(1),
        nargs="?",
        const=3,
        help="speculative decoding without a draft model: propose the tokens that followed the "
        "last earlier match of the newest n-gram, n up to N (default N: 3)",
    )
    parser.add_argument(
        "--draft-tokens",
        metavar="K",
        type=_integer(1),
        default=4,
        help="tokens proposed per round with --draft or --prompt-lookup (default: 4)",
    )


def _integer(least):
    """An argparse type: an integer >= ``least``."""

    def integer(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {least}")
        return value

    return integer


def _number(least):
    """An argparse type: a finite number >= ``least``."""

    def number(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= least):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number >= {least}")
        return value

    return number


def _probability(text):
    """An argparse type: a probability in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in (0, 1]")
    return value


SAMPLING_FLAGS = {  # name: (type, default, help): the sampling rules' flags
    "temperature": (
        _number(0), 0.8,
        "below 1 safer, above 1 more surprising; 0 always picks the likeliest token "
        "(default: 0.8)",
    ),
    "top_k": (
        _integer(1), None,
        "sample among the k likeliest tokens only (default: all)",
    ),
    "top_p": (
        _probability, None,
        "sample among the likeliest tokens that together hold probability p, in (0, 1] "
        "(default: all)",
    ),
    "min_p": (
        _probability, None,
        "drop tokens less likely than min-p times the likeliest one, in (0, 1] "
        "(default: none dropped)",
    ),
    "repetition_penalty": (
        _number(0), None,
        "above 1, tokens already in the text become less likely (default: none)",
    ),
}  # fmt: skip


def add_sampling_flags(parser, *names):
    """The flags of the sampling rules ``names`` (keys of ``SAMPLING_FLAGS``), one each."""
    for name in names:
        kind, default, text = SAMPLING_FLAGS[name]
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=text)


def run_sample(args):
    from tinyllm.data import load_tokenizer
    from tinyllm.infer import GenerationStats, stream_generate
    from tinyllm.models import Transformer

    tokenizer = load_tokenizer(args.directory)
    model = Transformer.from_pretrained(args.directory)
    draft = None if args.draft is None else Transformer.from_pretrained(args.draft)
    text = args.prompt.replace("\\n", "\n")  # "\\n" typed in a shell
    prompt = tokenizer.encode(text)
    if not prompt:
        raise ValueError(f"--prompt {args.prompt!r} has no tokens: give some text to continue")
    stats, started = GenerationStats(), time.perf_counter()
    for index in range(args.num_samples):
        pieces = stream_generate(  # checks every setting before the prompt is printed
            model, [prompt], args.tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, min_p=args.min_p, repetition_penalty=args.repetition_penalty,
            decode=tokenizer.decode, seed=args.seed + index, draft=draft,
            prompt_lookup=args.prompt_lookup, draft_tokens=args.draft_tokens, stats=stats,
        )  # fmt: skip
        print(text, end="", flush=True)
        for _, piece in pieces:  # printed as each token is decoded
            print(piece[0], end="", flush=True)
        print()
        if index + 1 < args.num_samples:
            print("-" * 40)
    seconds = time.perf_counter() - started
    report = (
        f"{stats.new_tokens} tokens in {seconds:.1f} s ({stats.new_tokens / seconds:,.1f} tokens/s)"
    )
    if stats.drafted:
        report += (
            f"; {stats.acceptance_rate:.0%} of {stats.drafted} proposed tokens accepted, "
            f"{stats.tokens_per_forward:.2f} tokens per forward pass of the model"
        )
    print(report, file=sys.stderr)
    return 0


# --- tinyllm chat -----------------------------------------------------------------------------
def configure_chat(parser):
    parser.description = (
        "Chat with a model folder in the terminal: replies stream as they are generated, and "
        "the conversation is kept within the model's context (the oldest turns dropped first). "
        "Type /reset to clear the conversation, /quit or Ctrl-D to leave; Ctrl-C stops a "
        "reply. The folder's tokenizer must have the chat tokens (a BPE tokenizer)."
    )
    parser.add_argument("directory", metavar="DIR", help="the model folder")
    parser.add_argument(
        "--system", metavar="TEXT", default=None, help="the system message (default: none)"
    )
    parser.add_argument(
        "--max-new-tokens",
        type=_integer(1),
        default=None,
        help="the longest reply, in tokens (default: 256, or half the context if shorter)",
    )
    add_sampling_flags(parser, "temperature", "top_k", "top_p")
    parser.add_argument(
        "--seed",
        type=_integer(0),
        default=None,
        help="the first reply's seed, the next reply's is one more (default: a fresh one)",
    )


def run_chat(args):
    from tinyllm.data import load_tokenizer
    from tinyllm.infer.chat import ChatSession, chat_loop
    from tinyllm.infer.engine import Engine, SamplingParams
    from tinyllm.models import Transformer

    tokenizer = load_tokenizer(args.directory)
    model = Transformer.from_pretrained(args.directory)
    context = model.config.context_length
    max_tokens = min(256, context // 2) if args.max_new_tokens is None else args.max_new_tokens
    params = SamplingParams(
        max_tokens=max_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, seed=args.seed,
    )  # fmt: skip
    session = ChatSession(Engine(model, tokenizer, max_batch=1), params, system=args.system)
    print(
        f"chatting with {args.directory} (context {context} tokens, replies up to "
        f"{max_tokens}); /reset clears, /quit or Ctrl-D leaves, Ctrl-C stops a reply",
        file=sys.stderr,
    )
    return chat_loop(session)


# --- tinyllm speedrun -------------------------------------------------------------------------
def configure_speedrun(parser):
    from tinyllm.backend import NAMES
    from tinyllm.recipes.speedrun import PRESETS

    parser.description = (
        "The whole pipeline: train a BPE tokenizer on the shipped corpus, pretrain a model, "
        "sample from it, fine-tune it on checkable tasks (SFT, into OUT/sft), tune it on "
        "right-vs-wrong answer pairs (DPO, into OUT/dpo), and write OUT/report.md with the "
        "losses, throughput, samples, held-out measures before and after each stage, and "
        "plots. Ctrl-C stops at the next step, saves, and still writes the report."
    )
    parser.add_argument(
        "--out", default="runs/speedrun", help="the run folder (default: %(default)s)"
    )
    parser.add_argument(
        "--backend",
        choices=NAMES,
        default=None,
        help="the array library (default: the current one, numpy unless TINYLLM_BACKEND says)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="the model and training length (default: gpu when the backend computes on a GPU, "
        "else cpu)",
    )
    parser.add_argument(
        "--steps", type=_integer(1), help="pretraining's optimizer steps, instead of the preset's"
    )
    parser.add_argument(
        "--sft-steps",
        type=_integer(0),
        help="fine-tuning's steps, instead of the preset's (0: skip)",
    )
    parser.add_argument(
        "--dpo-steps", type=_integer(0), help="DPO's steps, instead of the preset's (0: skip)"
    )
    parser.add_argument(
        "--eval-examples", type=_integer(1),
        help="held-out prompts for each post-training measure, instead of the preset's",
    )  # fmt: skip
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (on a finished run: only rewrite the report)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_speedrun(args):
    from tinyllm.recipes.speedrun import speedrun

    report = speedrun(
        args.out, backend=args.backend, preset=args.preset, resume=args.resume,
        steps=args.steps, sft_steps=args.sft_steps, dpo_steps=args.dpo_steps,
        eval_examples=args.eval_examples, progress=not args.no_progress,
    )  # fmt: skip
    print(f"wrote {report}")
    return 0


# --- tinyllm serve ----------------------------------------------------------------------------
def configure_serve(parser):
    parser.description = (
        "Serve a model folder over HTTP: an OpenAI-compatible API (/v1/completions, "
        "/v1/chat/completions, /v1/models; streaming) and a chat page at /. Requests are "
        "batched continuously over a paged KV cache. Needs the serve extra: "
        "pip install 'tinyllm[serve]'."
    )
    parser.add_argument("directory", metavar="MODEL_DIR", help="the model folder")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="the address to listen on; 0.0.0.0 opens the server to other machines "
        "(default: %(default)s, this machine only)",
    )
    parser.add_argument(
        "--port", type=_integer(0), default=8000, help="the TCP port (default: %(default)s)"
    )
    parser.add_argument(
        "--max-batch",
        type=_integer(1),
        default=32,
        help="sequences decoded together at most; more requests wait their turn "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--num-blocks",
        type=_integer(1),
        default=None,
        help="KV-cache blocks in the pool (default: room for half the batch at full context)",
    )
    parser.add_argument(
        "--block-size",
        type=_integer(1),
        default=16,
        help="token positions per KV-cache block (default: %(default)s)",
    )


def run_serve(args):
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        print(
            f"tinyllm serve: error: {err.name} is not installed; serving needs FastAPI and "
            "uvicorn: pip install 'tinyllm[serve]'",
            file=sys.stderr,
        )
        return 2
    from pathlib import Path

    from tinyllm.data import load_tokenizer
    from tinyllm.models import Transformer
    from tinyllm.serve.app import create_app

    tokenizer = load_tokenizer(args.directory)
    model = Transformer.from_pretrained(args.directory)
    name = Path(args.directory).resolve().name
    app = create_app(
        model, tokenizer, name=name, max_batch=args.max_batch, num_blocks=args.num_blocks,
        block_size=args.block_size,
    )  # fmt: skip
    url = f"http://{args.host}:{args.port}"
    print(f"serving {name} at {url} (chat page: {url}/, OpenAI API: {url}/v1)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0


COMMANDS = {  # name: (one-line help, configure, run)
    "info": ("show the version and which backends (NumPy, CuPy, JAX) work here", configure_info, run_info),
    "grade": ("grade the exercises and print a score table", configure_grade, run_grade),
    "tokenizer": ("train a byte-level BPE tokenizer, or encode text with one", configure_tokenizer, run_tokenizer),
    "pretrain": ("train a language model on a corpus", configure_pretrain, run_pretrain),
    "sft": ("fine-tune a pretrained model to answer in chats (SFT)", *post_training_command("sft")),
    "lora": ("fine-tune low-rank adapters on a frozen model (LoRA)", *post_training_command("lora")),
    "reward": ("train a reward model on preference pairs", *post_training_command("reward")),
    "dpo": ("tune a chat model on preference pairs (DPO)", *post_training_command("dpo")),
    "distill": ("train a smaller student on a chat model's outputs", *post_training_command("distill")),
    "eval": ("measure a chat model on held-out tasks, or any model on a corpus", configure_eval, run_eval),
    "quantize": ("store a model folder's weights in 8 or 4 bits (llama.cpp's formats)", configure_quantize, run_quantize),
    "export-gguf": ("write a model folder as a GGUF file for llama.cpp", configure_export_gguf, run_export_gguf),
    "generate": ("stream text from a trained model folder (alias: sample)", configure_sample, run_sample),
    "chat": ("chat with a model folder in the terminal, replies streamed", configure_chat, run_chat),
    "speedrun": ("the whole pipeline in one go: tokenizer, training, samples, report", configure_speedrun, run_speedrun),
    "serve": ("serve a model folder: an OpenAI-compatible API and a chat page", configure_serve, run_serve),
}  # fmt: skip

ALIASES = {"generate": ["sample"]}  # the name the first version of the command had

DESCRIPTION = (
    "tinyllm builds a small language model from scratch - tokenizer, training, sampling - "
    "in code made to be read. Train one on Shakespeare in minutes on a laptop CPU "
    "(tinyllm speedrun), or a bigger one on a GPU; the models load in Hugging Face "
    "transformers."
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tinyllm",
        description=DESCRIPTION,
        epilog="Run 'tinyllm COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tinyllm {tinyllm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for name, (summary, configure, run) in COMMANDS.items():
        aliases = ALIASES.get(name, [])
        configure(sub.add_parser(name, aliases=aliases, help=summary, description=summary))
        sub.choices[name].set_defaults(run=run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, tinyllm.BackendUnavailable) as err:
        print(f"tinyllm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C (the first stops training and saves)
        fresh_line = "\n" if sys.stderr.isatty() else ""  # past a progress bar or "^C"
        message = f"tinyllm {args.command}: interrupted{_last_checkpoint(args)}"
        print(fresh_line + message, file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


def _last_checkpoint(args):
    """ "; the last checkpoint is ..." for a command with a run folder, else nothing."""
    if getattr(args, "out", None) is None:
        return ""
    from tinyllm.train import latest_checkpoint

    latest = latest_checkpoint(args.out)
    if latest is None:
        return f"; no checkpoint was saved in {args.out}"
    return f"; the last checkpoint is {latest} (continue with --resume)"


if __name__ == "__main__":
    sys.exit(main())
