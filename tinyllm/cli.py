"""The ``tinyllm`` command. Each subcommand is a ``configure`` / ``run`` pair below.

tinyllm info                     version, and which backends work here (and why not)
tinyllm grade [DIR]              grade the exercises (--solutions, --json results.json)
tinyllm tokenizer train|encode   train a byte-level BPE (writes tokenizer.json), encode text
tinyllm pretrain                 train a model on a corpus (flags map onto TrainConfig etc.)
tinyllm sample DIR               generate text from a trained model folder
tinyllm speedrun                 the main job: tokenizer, pretraining, samples and a report
"""

import argparse
import dataclasses
import platform
import sys
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
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
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
def add_dataclass_flags(parser, cls, skip=()):
    """One ``--field-name`` flag per field of dataclass ``cls``, typed from its annotation."""
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        flag = "--" + field.name.replace("_", "-")
        if field.type is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
            continue
        group.add_argument(
            flag,
            type=_flag_type(field.type),
            default=field.default,
            metavar=field.name.upper(),
            help=f"(default: {field.default})",
        )


def dataclass_from_flags(cls, args, **fixed):
    """An instance of ``cls`` from the parsed flags that name its fields."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    return cls(**{**values, **fixed})


def _flag_type(annotation):
    """The argparse ``type`` for a field annotated ``int``, ``float``, ``str`` or ``X | None``."""
    if isinstance(annotation, types.UnionType):  # X | None: the word "none" gives None
        (base,) = [t for t in annotation.__args__ if t is not type(None)]

        def optional(text):
            return None if text.lower() == "none" else base(text)

        optional.__name__ = base.__name__  # argparse names the type in its error messages
        return optional
    return annotation


# --- tinyllm pretrain -------------------------------------------------------------------------
def configure_pretrain(parser):
    from tinyllm.recipes import PretrainConfig
    from tinyllm.train import TrainConfig

    parser.description = (
        "Train a model on a corpus. Writes the run folder --out: config.json, "
        "model.safetensors and the tokenizer (read by tinyllm sample and "
        "Transformer.from_pretrained), metrics.jsonl, loss.png and checkpoints/."
    )
    add_dataclass_flags(parser, PretrainConfig)
    add_dataclass_flags(parser, TrainConfig)


def run_pretrain(args):
    from tinyllm.recipes import PretrainConfig, pretrain
    from tinyllm.train import TrainConfig

    run = pretrain(
        dataclass_from_flags(PretrainConfig, args), dataclass_from_flags(TrainConfig, args)
    )
    result = run.result
    val_loss = "-" if result.val_loss is None else f"{result.val_loss:.4f}"
    print(
        f"step {result.step}: train loss {result.train_loss:.4f}, val loss {val_loss}, "
        f"{result.tokens_per_second:,.0f} tokens/s; model in {run.out}"
    )
    if result.stopped_by:
        print(f"stopped by {result.stopped_by}; continue with the same command and --resume")
    return 0


# --- tinyllm sample ---------------------------------------------------------------------------
def configure_sample(parser):
    parser.description = "Generate text from a model folder (one written by tinyllm pretrain)."
    parser.add_argument("directory", metavar="DIR", help="the model folder")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument("--tokens", type=int, default=200, help="tokens to generate")
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)


def run_sample(args):
    from tinyllm.data import load_tokenizer
    from tinyllm.infer import generate
    from tinyllm.models import Transformer

    tokenizer = load_tokenizer(args.directory)
    model = Transformer.from_pretrained(args.directory)
    prompt = tokenizer.encode(args.prompt.replace("\\n", "\n"))  # "\\n" typed in a shell
    for index in range(args.num_samples):
        ids = generate(
            model, [prompt], args.tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, seed=args.seed + index,
        )  # fmt: skip
        print(tokenizer.decode(ids[0].tolist()))
        if index + 1 < args.num_samples:
            print("-" * 40)
    return 0


# --- tinyllm speedrun -------------------------------------------------------------------------
def configure_speedrun(parser):
    from tinyllm.recipes.speedrun import PRESETS

    parser.description = (
        "The main job: train a BPE tokenizer on the shipped corpus, pretrain a model, sample "
        "from it, and write OUT/report.md with the losses, throughput, samples and plots."
    )
    parser.add_argument("--out", default="runs/speedrun", help="the run folder")
    parser.add_argument("--backend", default=None, help="numpy, cupy or jax (default: current)")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="default: cpu on NumPy, gpu on CuPy/JAX"
    )
    parser.add_argument("--steps", type=int, help="override the preset's optimizer steps")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_speedrun(args):
    from tinyllm.recipes.speedrun import speedrun

    changes = {"progress": not args.no_progress}
    if args.steps is not None:
        changes["steps"] = args.steps
    report = speedrun(
        args.out, backend=args.backend, preset=args.preset, resume=args.resume, **changes
    )
    print(f"wrote {report}")
    return 0


COMMANDS = {
    "info": (configure_info, run_info),
    "grade": (configure_grade, run_grade),
    "tokenizer": (configure_tokenizer, run_tokenizer),
    "pretrain": (configure_pretrain, run_pretrain),
    "sample": (configure_sample, run_sample),
    "speedrun": (configure_speedrun, run_speedrun),
}


def build_parser():
    parser = argparse.ArgumentParser(prog="tinyllm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"tinyllm {tinyllm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (configure, run) in COMMANDS.items():
        configure(sub.add_parser(name))
        sub.choices[name].set_defaults(run=run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, tinyllm.BackendUnavailable) as err:
        print(f"tinyllm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
