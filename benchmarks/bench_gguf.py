"""tinyllm's GGUF files in llama.cpp: the same greedy tokens and the same perplexity.

``tinyllm export-gguf`` writes the model folder at each GGUF type; llama.cpp (through
llama-cpp-python) loads each file and

- tokenizes the prompt (the ids must equal tinyllm's) and continues it greedily
  (temperature 0, top_k 1); at f32, f16 and q8_0 its tokens should equal tinyllm's greedy
  tokens on the same weights, and at q4_0 / q4_1 the table reports how many agree;
- scores the corpus's validation text in consecutive context windows (logits of every
  position, log-softmax computed here); its perplexity should agree with tinyllm's on the
  file's weights, dequantized (``stored_model``), within noise: the standard error of the
  perplexity over windows. llama.cpp multiplies in its own way (f16 and q8_0 weights meet
  activations rounded to f16 or Q8_0 blocks), so the logits differ in the last digits.

    python benchmarks/bench_gguf.py --model runs/pretrain      # a model folder with a BPE
                                                               # tokenizer (pretrain --tokenizer bpe)
    python benchmarks/bench_gguf.py --quick                    # an untrained tiny model: seconds

Without llama-cpp-python (pip install 'tinyllm[gguf-check]', a build of minutes) only
tinyllm's side is measured.
"""

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
from common import machine, table_head, table_row

from tinyllm.data import load_corpus, load_tokenizer, validation_tokens
from tinyllm.models import Transformer, get_preset
from tinyllm.quant.gguf_check import llama_cpp_outputs, tinyllm_outputs
from tinyllm.quant.gguf_export import TYPES, stored_model, write_gguf
from tinyllm.tokenizer import Tokenizer
from tinyllm.train.checkpoint import load_model_folder

EXACT = ("f32", "f16", "q8_0")  # greedy tokens must equal tinyllm's at these types


def quick_model(corpus):
    """An untrained tiny Llama-shaped model with a small BPE tokenizer: seconds."""
    tokenizer = Tokenizer.train(load_corpus(corpus)[:20_000], vocab_size=320)
    config = get_preset(
        "tiny-llama", vocab_size=tokenizer.vocab_size, n_layer=2, d_model=64, d_ff=128
    )
    return Transformer(config, seed=0).eval(), tokenizer


def windows_of(tokens, context, count):
    """Up to ``count`` consecutive windows of ``context + 1`` ids (each ends where the next
    begins)."""
    n = min((len(tokens) - 1) // context, count)
    ids = np.asarray(tokens[: n * context + 1], np.int64)
    return [ids[i * context : (i + 1) * context + 1] for i in range(n)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model folder with a BPE tokenizer (unless --quick)")
    parser.add_argument("--corpus", default="tinyshakespeare", help="the corpus it learned")
    parser.add_argument("--prompt", default="ROMEO:\nBut soft, what light", help="greedy's prompt")
    parser.add_argument("--new-tokens", type=int, default=40, help="greedy tokens compared")
    parser.add_argument("--windows", type=int, default=60, help="validation windows scored")
    parser.add_argument("--types", nargs="+", default=list(TYPES), choices=TYPES)
    parser.add_argument("--quick", action="store_true", help="an untrained tiny model, 4 windows")
    args = parser.parse_args()
    if args.quick:
        model, tokenizer = quick_model(args.corpus)
        args.windows, args.new_tokens, name = 4, 8, "untrained tiny-llama"
    elif args.model:
        model, tokenizer, name = (
            load_model_folder(args.model),
            load_tokenizer(args.model),
            args.model,
        )
    else:
        parser.error("give --model DIR, or --quick")
    try:
        import llama_cpp
    except ImportError:
        llama_cpp = None
    print(f"machine: {machine()}")
    version = (
        llama_cpp.__version__ if llama_cpp else "not installed (pip install 'tinyllm[gguf-check]')"
    )
    print(f"llama.cpp: llama-cpp-python {version}")
    context = model.config.context_length
    prompt = tokenizer.encode(args.prompt)
    new_tokens = min(args.new_tokens, context - len(prompt))
    windows = windows_of(validation_tokens(args.corpus, tokenizer), context, args.windows)
    print(
        f"model: {name} ({model.config.n_layer} layers, d_model {model.config.d_model}, "
        f"vocab {model.config.vocab_size}); prompt {args.prompt!r} = {len(prompt)} tokens, "
        f"{new_tokens} greedy tokens; {len(windows)} validation windows of {context} tokens"
    )
    table_head(
        "GGUF in llama.cpp against tinyllm on the same weights",
        ["type", "file bytes", "llama.cpp greedy = tinyllm's", "tinyllm greedy = float's",
         "ppl tinyllm", "ppl llama.cpp", "diff log-ppl", "noise (SE of log-ppl)"],
    )  # fmt: skip
    float_greedy, _ = tinyllm_outputs(model, prompt, new_tokens, [])
    with tempfile.TemporaryDirectory() as tmp:
        for file_type in args.types:
            path = Path(tmp) / f"model-{file_type}.gguf"
            write_gguf(model, tokenizer, path, file_type)
            ours = stored_model(model, file_type)
            greedy, nlls = tinyllm_outputs(ours, prompt, new_tokens, windows)
            nlls = np.array([window.mean() for window in nlls])
            ppl = math.exp(nlls.mean())
            noise = nlls.std(ddof=1) / math.sqrt(len(nlls)) if len(nlls) > 1 else math.nan
            row = [file_type, f"{path.stat().st_size:,}"]
            as_float = f"{_agree(greedy, float_greedy)} / {new_tokens}"
            if llama_cpp is None:
                table_row([*row, "-", as_float, f"{ppl:.4f}", "-", "-", f"{noise:.4f}"])
                continue
            their_prompt, their_greedy, their_nlls = llama_cpp_outputs(
                path, args.prompt, new_tokens, windows, context
            )
            their_nlls = np.array([window.mean() for window in their_nlls])
            if their_prompt != prompt:
                print(f"prompt ids differ: llama.cpp {their_prompt}, tinyllm {prompt}")
            same = _agree(greedy, their_greedy)
            mark = "" if same == new_tokens or file_type not in EXACT else " (MISMATCH)"
            diff = their_nlls.mean() - nlls.mean()
            table_row([
                *row, f"{same} / {new_tokens}{mark}", as_float, f"{ppl:.4f}",
                f"{math.exp(their_nlls.mean()):.4f}", f"{diff:+.5f}", f"{noise:.4f}",
            ])  # fmt: skip


def _agree(a, b):
    """How many tokens two greedy continuations share before they first differ."""
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    return same


if __name__ == "__main__":
    main()
