"""``tinyllm info``, ``grade``, ``tokenizer`` and ``export-gguf``: the tools around the models."""

import platform
import sys

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
