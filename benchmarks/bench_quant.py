"""Weight bytes and validation perplexity of one model in every format, and AWQ and GPTQ.

Each format quantizes the linear layers of the blocks (``tinyllm.quant.quantize``; the
token embedding, which is also the output layer of a tied model, stays float32) and the
model is scored on the validation text of the corpus it was trained on (the last 10%, read
in consecutive context windows). The peer is the fp32 model: the literature's target is
int8 and Q8_0 within 1% of its perplexity. AWQ and GPTQ store Q4_0 too (the same bytes), fitted
on calibration windows from the corpus's training split; "recovered" is the share of Q4_0's
perplexity loss they win back (target: at least half). "KL" is the mean KL divergence from the
fp32 model's next-token distribution to the quantized one's over the first 64 validation
windows (llama.cpp's KLD): a closeness measure that does not rest on a perplexity difference
of a fraction of a percent.

    python benchmarks/bench_quant.py --model runs/speedrun    # a model folder, e.g. the
                                                              # speedrun's pretrained model
    python benchmarks/bench_quant.py --quick                  # an untrained tiny model: seconds
"""

import argparse

import numpy as np
from common import machine, table_head, table_row, timed

from tinyllm.autograd import no_grad
from tinyllm.data import CharVocab, load_corpus, load_tokenizer, validation_tokens
from tinyllm.models import Transformer, get_preset
from tinyllm.quant import corpus_calibration, quantize, weight_bytes
from tinyllm.quant.calibration import N_SEQUENCES
from tinyllm.recipes.evaluation import corpus_measures
from tinyllm.train.checkpoint import load_model_folder

FORMATS = ("fp32", "f16", "bf16", "int8", "q8_0", "q4_1", "q4_0", "awq", "gptq")
CALIBRATED = ("awq", "gptq")
TARGET = 0.01  # int8 and Q8_0: perplexity within 1% of fp32
RECOVERY = 0.5  # AWQ and GPTQ: at least half of Q4_0's perplexity loss won back
KL_WINDOWS = 64  # validation windows the KL divergence to fp32 is taken over


def quick_model(corpus):
    """An untrained tiny model over the corpus's characters (no training: seconds)."""
    tokenizer = CharVocab.from_text(load_corpus(corpus))
    config = get_preset("tiny", vocab_size=tokenizer.vocab_size, n_layer=2, d_model=64, n_head=2)
    return (lambda: Transformer(config.replace(context_length=64), seed=0).eval()), tokenizer


def quantized(fresh, name, calibration):
    """A fresh model in format ``name`` (fp32: as trained); AWQ and GPTQ read ``calibration``."""
    model = fresh()
    if name == "fp32":
        return model
    return quantize(model, name, calibration=calibration if name in CALIBRATED else None)


def log_probs(model, tokens, windows):
    """Next-token log-probabilities (windows, context, vocab), float32, of consecutive
    windows of ``tokens``."""
    context = model.config.context_length
    windows = min(windows, len(tokens) // context)
    ids = np.asarray(tokens[: windows * context], np.int64).reshape(windows, context)
    out = []
    with no_grad():
        for start in range(0, windows, 8):
            logits = model(ids[start : start + 8])[0].numpy()  # (b, context, vocab)
            logits = logits - logits.max(axis=-1, keepdims=True)
            out.append(logits - np.log(np.exp(logits).sum(axis=-1, keepdims=True)))
    return np.concatenate(out)


def kl_divergence(reference, log_p):
    """Mean over tokens of KL(reference || p), both log-probabilities."""
    reference, log_p = reference.astype(np.float64), log_p.astype(np.float64)
    return float((np.exp(reference) * (reference - log_p)).sum(axis=-1).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder (required unless --quick)")
    parser.add_argument("--corpus", default="tinyshakespeare", help="the corpus it learned")
    parser.add_argument("--windows", type=int, default=None, help="context windows scored")
    parser.add_argument("--quick", action="store_true", help="an untrained tiny model, 8 windows")
    parser.add_argument(
        "--calibration-sequences", type=int, default=N_SEQUENCES, help="AWQ/GPTQ windows"
    )
    args = parser.parse_args()
    if args.quick:
        fresh, tokenizer = quick_model(args.corpus)
        windows, sequences = 8, 8
    elif args.model:
        fresh, tokenizer = (lambda: load_model_folder(args.model)), load_tokenizer(args.model)
        windows, sequences = args.windows, args.calibration_sequences
    else:
        parser.error("give --model DIR, or --quick")
    length = fresh().config.context_length
    calibration = corpus_calibration(args.corpus, tokenizer, sequences, length)
    print(f"machine: {machine()}")
    print(f"model: {args.model or 'untrained tiny (--quick)'}; corpus: {args.corpus}")
    print(f"AWQ/GPTQ calibration: {sequences} windows of {length} tokens of the training split")
    table_head(
        "Weight bytes and validation perplexity by format (peer: fp32)",
        ["format", "linear bytes", "model bytes", "val loss", "val ppl", "vs fp32",
         "recovered", "KL", "load+quantize s", "eval s"],
    )  # fmt: skip
    ppl = {}
    val = validation_tokens(args.corpus, tokenizer)
    reference = log_probs(fresh(), val, KL_WINDOWS)
    for name in FORMATS:
        model, quantize_seconds = timed(quantized, fresh, name, calibration)
        sizes = weight_bytes(model)
        measures, seconds = timed(corpus_measures, model, tokenizer, args.corpus, windows)
        ppl[name] = measures["val_ppl"]
        kl = kl_divergence(reference, log_probs(model, val, KL_WINDOWS))
        change = ppl[name] / ppl["fp32"] - 1
        flag = " (over 1%)" if name in ("int8", "q8_0") and abs(change) > TARGET else ""
        recovered = "-"
        if name in CALIBRATED and ppl["q4_0"] != ppl["fp32"]:
            share = (ppl["q4_0"] - ppl[name]) / (ppl["q4_0"] - ppl["fp32"])
            recovered = f"{share:.0%}" + (" (under half)" if share < RECOVERY else "")
        table_row([
            name, f"{sizes['linear']:,}", f"{sizes['total']:,}", f"{measures['val_loss']:.4f}",
            f"{ppl[name]:.3f}", f"{change:+.2%}{flag}", recovered, f"{kl:.2e}",
            f"{quantize_seconds:.1f}",
            f"{seconds:.1f}",
        ])  # fmt: skip


if __name__ == "__main__":
    main()
