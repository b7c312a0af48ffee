"""Tokenizer benchmark: BPE training time and encode throughput, tinyllm against HF
``tokenizers`` (Rust) and against the naive recount-every-merge algorithm, same run, same text.

    python benchmarks/bench_tokenizer.py            # tinyshakespeare, vocab 4096 and 16384
    python benchmarks/bench_tokenizer.py --quick    # a 60 kB slice, vocab 320: seconds

All three trainers see the same text, the GPT-2 split pattern and the same special tokens.
tinyllm and HF are timed end to end from raw text (pre-tokenization included), median of
--repeat runs after one warm-up; the naive trainer runs once (it is slow), on the same text.
"""

import argparse
import platform
import statistics
import time

from tinyllm.data import load_corpus
from tinyllm.tokenizer import DEFAULT_SPECIAL_TOKENS, Tokenizer


def cpu_model():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def timed(fn, repeat):
    """Median seconds of ``repeat`` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def hf_trainer(text, vocab_size):
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    def train():
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2 regex + bytes
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=list(DEFAULT_SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator([text], trainer)
        return tok

    return train


def measure(text, vocab_size, args, tokenizers):
    """One table row: training and encoding times at ``vocab_size``."""
    ours, tok = timed(lambda: Tokenizer.train(text, vocab_size), args.repeat)
    row = {"vocab": vocab_size, "tinyllm_s": ours}
    if tokenizers:
        row["hf_s"], hf_tok = timed(hf_trainer(text, vocab_size), args.repeat)
    if vocab_size == args.naive_vocab_size:
        start = time.perf_counter()
        naive = Tokenizer.train(text, vocab_size, algorithm="naive")
        row["naive_s"] = time.perf_counter() - start
        assert naive.merges == tok.merges, "the naive and incremental trainers disagree"

    def fresh():  # an empty piece cache
        return Tokenizer(tok.vocab, tok.merges, special_tokens=tok.special_tokens)

    row["encode_cold_s"], ids = timed(lambda: fresh().encode(text), args.repeat)
    row["encode_warm_s"], _ = timed(lambda: tok.encode(text), args.repeat)
    row["tokens"] = len(ids)
    if tokenizers:
        row["hf_encode_s"], _ = timed(lambda: hf_tok.encode(text), args.repeat)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", default="tinyshakespeare", help="corpus name or text file")
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[4096, 16384])
    parser.add_argument(
        "--naive-vocab-size",
        type=int,
        default=4096,
        help="vocab size for the naive trainer (0 to skip it)",
    )
    parser.add_argument(
        "--max-bytes", type=int, default=0, help="use only the first N characters (0: all)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="60 kB slice, vocab 320, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.vocab_sizes, args.naive_vocab_size, args.max_bytes, args.repeat = (
            [320],
            320,
            60_000,
            1,
        )

    text = load_corpus(args.corpus)
    if args.max_bytes:
        text = text[: args.max_bytes]
    n_bytes = len(text.encode("utf-8"))
    print(
        f"corpus {args.corpus}: {n_bytes / 1e6:.2f} MB; CPU: {cpu_model()} ({platform.machine()}); "
        f"Python {platform.python_version()}"
    )
    try:
        import tokenizers

        print(f"HF tokenizers {tokenizers.__version__} (Rust, uses all cores for training)")
    except ImportError:
        tokenizers = None
        print("HF tokenizers not installed: its columns are skipped")

    rows = [measure(text, vocab_size, args, tokenizers) for vocab_size in args.vocab_sizes]

    print(f"\ntraining (seconds, median of {args.repeat}):")
    print(
        f"{'vocab':>7} {'tinyllm':>9} {'HF':>8} {'naive':>9} {'tinyllm/HF':>11} {'naive/tinyllm':>14}"
    )
    for row in rows:
        hf_s, naive_s = row.get("hf_s"), row.get("naive_s")
        print(
            f"{row['vocab']:>7} {row['tinyllm_s']:>9.2f} {hf_s if hf_s else float('nan'):>8.2f} "
            f"{naive_s if naive_s else float('nan'):>9.1f} "
            f"{(row['tinyllm_s'] / hf_s) if hf_s else float('nan'):>10.1f}x "
            f"{(naive_s / row['tinyllm_s']) if naive_s else float('nan'):>13.0f}x"
        )
    print("\nencoding the whole corpus (MB/s of UTF-8 input; cold = empty piece cache):")
    print(
        f"{'vocab':>7} {'tokens':>9} {'chars/token':>12} {'tinyllm cold':>13} {'tinyllm warm':>13} {'HF':>8}"
    )
    for row in rows:
        hf_rate = n_bytes / row["hf_encode_s"] / 1e6 if "hf_encode_s" in row else float("nan")
        print(
            f"{row['vocab']:>7} {row['tokens']:>9} {len(text) / row['tokens']:>12.2f} "
            f"{n_bytes / row['encode_cold_s'] / 1e6:>13.2f} {n_bytes / row['encode_warm_s'] / 1e6:>13.2f} "
            f"{hf_rate:>8.2f}"
        )


if __name__ == "__main__":
    main()
