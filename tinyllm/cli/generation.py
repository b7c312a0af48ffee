"""The commands that run a trained model: ``generate`` (alias ``sample``), ``chat`` and ``serve``."""

import sys
import time

from .flags import add_dtype_flag, add_sampling_flags, integer


# --- tinyllm generate (alias: sample) ----------------------------------------------------------
def configure_sample(parser):
    parser.description = "Generate text from a model folder (one written by tinyllm pretrain)."
    parser.add_argument("directory", metavar="DIR", help="the model folder")
    parser.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    parser.add_argument(
        "--max-new-tokens",
        "--tokens",
        dest="tokens",
        type=integer(1),
        default=200,
        help="tokens to generate (default: 200)",
    )
    parser.add_argument(
        "--num-samples", type=integer(1), default=1, help="texts to generate (default: 1)"
    )
    add_sampling_flags(parser, "temperature", "top_k", "top_p", "min_p", "repetition_penalty")
    parser.add_argument(
        "--seed", type=integer(0), default=0, help="the first sample's seed (default: 0)"
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
        type=integer(1),
        nargs="?",
        const=3,
        help="speculative decoding without a draft model: propose the tokens that followed the "
        "last earlier match of the newest n-gram, n up to N (default N: 3)",
    )
    parser.add_argument(
        "--draft-tokens",
        metavar="K",
        type=integer(1),
        default=4,
        help="tokens proposed per round with --draft or --prompt-lookup (default: 4)",
    )
    add_dtype_flag(parser)


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
            dtype=args.dtype,
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
        type=integer(1),
        default=None,
        help="the longest reply, in tokens (default: 256, or half the context if shorter)",
    )
    add_sampling_flags(parser, "temperature", "top_k", "top_p")
    parser.add_argument(
        "--seed",
        type=integer(0),
        default=None,
        help="the first reply's seed, the next reply's is one more (default: a fresh one)",
    )
    add_dtype_flag(parser)


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
    engine = Engine(model, tokenizer, max_batch=1, dtype=args.dtype)
    session = ChatSession(engine, params, system=args.system)
    print(
        f"chatting with {args.directory} (context {context} tokens, replies up to "
        f"{max_tokens}); /reset clears, /quit or Ctrl-D leaves, Ctrl-C stops a reply",
        file=sys.stderr,
    )
    return chat_loop(session)


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
        "--port", type=integer(0), default=8000, help="the TCP port (default: %(default)s)"
    )
    parser.add_argument(
        "--max-batch",
        type=integer(1),
        default=32,
        help="sequences decoded together at most; more requests wait their turn "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--num-blocks",
        type=integer(1),
        default=None,
        help="KV-cache blocks in the pool (default: room for half the batch at full context)",
    )
    parser.add_argument(
        "--block-size",
        type=integer(1),
        default=16,
        help="token positions per KV-cache block (default: %(default)s)",
    )
    add_dtype_flag(parser)


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
        block_size=args.block_size, dtype=args.dtype,
    )  # fmt: skip
    url = f"http://{args.host}:{args.port}"
    print(f"serving {name} at {url} (chat page: {url}/, OpenAI API: {url}/v1)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
