"""Generation: the loop that turns a prompt into text, one sampled token at a time.

``stream_generate`` is the generation loop: it yields each new token as it is produced, and
stops a row when it emits a stop token or its text comes to hold a stop string.
``generate`` collects the stream into one array.

The loop keeps a KV cache (``tinyllm.nn.kv_cache``): the prompt runs through the model once
(prefill), then each step runs only the newest token over the cached keys and values
(decode). Once the sequence is longer than the context, the window slides: every position
moves, the cached keys no longer fit, and each further step recomputes the last
``context_length`` tokens without the cache - the same tokens as without a cache, at the
old price. ``use_cache=False`` recomputes every step that way, for comparison.

Under JAX every new shape would be a new program to compile, so there the cache has fixed
shapes (``StaticKVCache``: all ``context_length`` slots, a mask hiding the empty ones) and
goes in and out of one compiled step as a value: one program for the prefill, one for
every decoding step. Past the context, one compiled forward over the window padded to the
context length reads the logits at the last real position (attention is causal: the
padding after that position cannot change them).

Prompts of different lengths run as one batch padded on the left, so that every row's
newest token sits in the last column. A boolean key mask hides each row's padding from
every query, in the prefill and at every decode step; learned position embeddings (GPT-2)
get each row's real positions, counted from its first real token; RoPE needs none (its
scores depend only on how far apart two tokens are, which the padding does not change).
Each row then gets the tokens it gets alone. Such a batch does not slide: its longest
prompt and the new tokens must fit in the context.

``dtype="bfloat16"`` (JAX) or ``"float16"`` (JAX, CuPy) runs every forward's matmuls and
attention in that dtype (``backend/precision.py``); the weights stay float32.
"""

import numbers

import numpy as np

from ..autograd import to_numpy
from ..backend.precision import check_compute_dtype, precision
from ..nn.module import compiled, inference
from .decoder import CachedDecoder, padding_keywords
from .sampling import _is_integer, check_sampling_settings, sample_next
from .speculative import speculative_stream
from .stream import GenerationStats, Stops


def stream_generate(
    model, ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
    repetition_penalty=None, stop_token_ids=None, stop_strings=None, decode=None, pad_id=-1,
    seed=0, use_cache=True, draft=None, draft_tokens=4, prompt_lookup=None, stats=None,
    dtype="float32",
):  # fmt: skip
    """Yield the new tokens after ``ids`` (B, T) as they are produced, one step at a time.

    ``ids`` may also be a list of B prompts of different lengths (lists of token ids): they
    run together, padded on the left, and each row gets the tokens it would get alone
    (greedy; sampling draws one number per row per step from the shared ``seed``, so a
    sampled row depends on its place in the batch, as in any batch).

    Each step yields an int64 array (B,): one new token per row. With ``decode`` (a function
    from a list of token ids to text, such as a tokenizer's ``decode``) it yields
    ``(token_ids, pieces)`` instead, ``pieces`` the list of B texts those tokens add. A piece
    that would end in a partly decoded character (U+FFFD) waits for the next token.

    A row stops once it emits one of ``stop_token_ids``, or once its new text holds one of
    ``stop_strings`` (which needs ``decode``); the token that stops it is still yielded.
    After that the row yields ``pad_id`` and the piece "". The stream ends when every row
    has stopped, or after ``max_new_tokens`` steps. The repetition penalty looks at the
    whole sequence so far, prompt included. The settings are checked here, at the call.
    ``use_cache=False`` reruns the whole window at every step instead of keeping a KV
    cache: the same tokens, at the quadratic price (lessons and benchmarks compare the two).

    Speculative decoding (``tinyllm.infer.speculative``), for one prompt: ``draft`` (a
    smaller model over the same vocabulary) or ``prompt_lookup`` (the longest n-gram to
    look up in the text so far, e.g. 3) proposes ``draft_tokens`` tokens at a time, and one
    forward of ``model`` checks them all. The tokens have exactly the distribution they
    have without it (greedy: the same tokens). ``stats`` (a ``GenerationStats``) is filled
    in as the stream runs: new tokens, forward passes, proposals and acceptances.
    ``dtype`` is the compute dtype of the forwards: "float32", "bfloat16" or "float16".
    Eval mode and ``no_grad`` hold only around each forward, so code reading the stream
    between steps sees the model's own mode and records gradients as usual.

    >>> from tinyllm.models import Transformer, get_preset
    >>> model = Transformer(get_preset("tiny", n_layer=1, d_model=16, context_length=8))
    >>> steps = list(stream_generate(model, [[1, 2]], 3, temperature=0))
    >>> len(steps), steps[0].shape
    (3, (1,))
    """
    return _start(
        model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, repetition_penalty=repetition_penalty, stop_token_ids=stop_token_ids,
        stop_strings=stop_strings, decode=decode, pad_id=pad_id, seed=seed, use_cache=use_cache,
        draft=draft, draft_tokens=draft_tokens, prompt_lookup=prompt_lookup, stats=stats,
        dtype=dtype,
    )[0]  # fmt: skip


def _start(
    model, ids, max_new_tokens, *, temperature, top_k, top_p, min_p, repetition_penalty,
    stop_token_ids, stop_strings, decode, pad_id, seed, use_cache, draft, draft_tokens,
    prompt_lookup, stats, dtype,
):  # fmt: skip
    """The checked settings of ``stream_generate`` -> ``(stream, stops, prompts, pads)``:
    ``prompts`` (B, T) padded on the left if ragged, ``pads`` (B,) how many padding columns
    each row starts with, or None for a rectangular batch."""
    ids, pads = _as_prompts(ids)
    counts = isinstance(max_new_tokens, numbers.Integral) and not isinstance(max_new_tokens, bool)
    if not counts or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens={max_new_tokens!r}: expected an integer >= 0")
    sampling = dict(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty,
    )  # fmt: skip
    check_sampling_settings(**sampling)
    stop_token_ids = _as_stop_token_ids(stop_token_ids, model.config.vocab_size)
    stop_strings = _as_stop_strings(stop_strings)
    if decode is not None and not callable(decode):
        raise ValueError(f"decode={decode!r}: expected a function from token ids to text")
    if stop_strings and decode is None:
        raise ValueError(f"stop_strings={stop_strings!r} need decode=, e.g. tokenizer.decode")
    if not _is_integer(pad_id):
        raise ValueError(f"pad_id={pad_id!r}: expected an integer")
    context = model.config.context_length
    if pads is not None and ids.shape[1] + max_new_tokens - 1 > context:
        raise ValueError(
            f"generate: prompts of different lengths, the longest {ids.shape[1]} tokens, with "
            f"max_new_tokens={max_new_tokens} run past the context_length of {context}; such "
            "a batch does not slide its window: generate fewer tokens, or each prompt alone"
        )
    stops = Stops(len(ids), ids.shape[1], stop_token_ids, stop_strings, decode, pad_id)
    if not isinstance(use_cache, bool):
        raise ValueError(f"use_cache={use_cache!r}: expected True or False")
    if stats is None:
        stats = GenerationStats()
    elif not isinstance(stats, GenerationStats):
        raise ValueError(f"stats={stats!r}: expected a GenerationStats to fill in, or None")
    check_compute_dtype(model.token_embedding.weight.backend, dtype)
    rng = np.random.default_rng(seed)
    proposer = _proposer(model, ids, max_new_tokens, draft, draft_tokens, prompt_lookup, use_cache)
    if proposer is None:
        stream = _stream(model, ids, pads, max_new_tokens, sampling, stops, rng, stats, use_cache)
    else:
        stream = speculative_stream(
            model, ids, max_new_tokens, sampling, stops, rng, stats, draft=proposer, k=draft_tokens
        )
    return _in_precision(dtype, stream), stops, ids, pads


def _in_precision(dtype, stream):
    """``stream``, each of its steps run under the compute dtype ``dtype``: the forwards
    run (and compile) inside ``next``, whenever the caller asks for the next token."""
    while True:
        with precision(dtype):
            step = next(stream, None)
        if step is None:
            return
        yield step


def _proposer(model, ids, max_new_tokens, draft, draft_tokens, prompt_lookup, use_cache):
    """What proposes tokens for speculative decoding - a draft model, or the longest n-gram
    prompt lookup matches (an int) - checked against the target; None without speculation."""
    if draft is None and prompt_lookup is None:
        return None
    if draft is not None and prompt_lookup is not None:
        raise ValueError("speculative decoding takes a draft model or prompt_lookup, not both")
    if not (_is_integer(draft_tokens) and draft_tokens >= 1):
        raise ValueError(f"draft_tokens={draft_tokens!r}: expected a positive integer")
    if prompt_lookup is not None and not (_is_integer(prompt_lookup) and prompt_lookup >= 1):
        raise ValueError(
            f"prompt_lookup={prompt_lookup!r}: expected the longest n-gram to look up, an "
            "integer >= 1 (e.g. 3), or None"
        )
    if draft is not None:
        vocab = getattr(getattr(draft, "config", None), "vocab_size", None)
        if vocab is None:
            raise ValueError(f"draft={draft!r}: expected a Transformer over the same vocabulary")
        if vocab != model.config.vocab_size:
            raise ValueError(
                f"draft model's vocabulary has {vocab} tokens, the target's "
                f"{model.config.vocab_size}: a draft must share the target's tokenizer"
            )
    if len(ids) != 1:
        raise ValueError(
            f"speculative decoding runs one prompt at a time; got a batch of {len(ids)}"
        )
    if not use_cache:
        raise ValueError("speculative decoding needs the KV cache: leave use_cache=True")
    context = min(
        model.config.context_length, getattr(draft, "config", model.config).context_length
    )
    if ids.shape[1] + max_new_tokens - 1 > context:
        raise ValueError(
            f"speculative decoding: a prompt of {ids.shape[1]} tokens with "
            f"max_new_tokens={max_new_tokens} runs past the context_length of {context}; it "
            "does not slide its window: generate fewer tokens, or without speculation"
        )
    return prompt_lookup if draft is None else draft


def generate(
    model, ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
    repetition_penalty=None, stop_token_ids=None, stop_strings=None, decode=None, pad_id=-1,
    seed=0, use_cache=True, draft=None, draft_tokens=4, prompt_lookup=None, stats=None,
    dtype="float32",
):  # fmt: skip
    """``ids`` (B, T) followed by the sampled tokens: an int64 array (B, T + n).

    For a list of prompts of different lengths (see ``stream_generate``) it is a list of B
    int64 arrays instead, each a prompt followed by its own new tokens - up to and including
    the one that stopped it - without padding, so the rows differ in length:

    >>> from tinyllm.models import Transformer, get_preset
    >>> model = Transformer(get_preset("tiny", n_layer=1, d_model=16, context_length=8))
    >>> [row.shape for row in generate(model, [[1, 2, 3], [4]], 2, temperature=0)]
    [(5,), (3,)]

    Without stop conditions, n is ``max_new_tokens``. With ``stop_token_ids`` or
    ``stop_strings`` (see ``stream_generate``), n is the number of steps until every row
    stopped, at most ``max_new_tokens``; a row that stopped earlier ends with its stop token
    (or the token that completed its stop string) and then ``pad_id``s (-1 by default, never
    a token id: ``row[row >= 0]`` keeps the tokens).

    The model runs in eval mode (no dropout) and without recording gradients; its mode is
    restored after each step. Prompts longer than the context keep their last tokens.
    """
    steps, stops, prompts, pads = _start(
        model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, repetition_penalty=repetition_penalty, stop_token_ids=stop_token_ids,
        stop_strings=stop_strings, decode=decode, pad_id=pad_id, seed=seed, use_cache=use_cache,
        draft=draft, draft_tokens=draft_tokens, prompt_lookup=prompt_lookup, stats=stats,
        dtype=dtype,
    )  # fmt: skip
    new_ids = [step[0] if decode is not None else step for step in steps]  # each (B,)
    B = len(prompts)
    new_ids = np.stack(new_ids, axis=1) if new_ids else np.zeros((B, 0), dtype=np.int64)
    if pads is None:
        return np.concatenate([prompts, new_ids], axis=1)  # (B, T + n)
    return [
        np.concatenate([prompts[row, pads[row] :], new_ids[row, : stops.produced[row]]])
        for row in range(B)
    ]


def _stream(model, ids, pads, max_new_tokens, sampling, stops, rng, stats, use_cache):
    """The generation loop behind ``stream_generate``: a generator over the steps."""
    context = model.config.context_length
    if use_cache:
        next_logits = _cached_next_logits(model, len(ids), pads)
    else:
        next_logits = _recomputed_next_logits(model, pads)
    for _ in range(max_new_tokens):
        window = ids[:, -context:]  # (B, T <= context)
        with inference(model):
            last = next_logits(window, ids.shape[1] > context)  # (B, V): next-token scores
        next_ids = sample_next(last, **sampling, previous_ids=ids, rng=rng)  # (B,)
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        stats.target_forwards += 1
        stats.new_tokens += 1
        yield stops.step(ids)
        if stops.stopped.all():
            return


def _recomputed_next_logits(model, pads=None):
    """``next_logits(window, slid)``: the (B, V) logits after ``window`` (B, T), the tokens
    so far, from a forward over all of them - no cache, every position recomputed."""
    if model.token_embedding.weight.backend.name == "jax":
        return _padded_next_logits(model, pads)  # one compiled program for every length

    def next_logits(window, slid):
        padding = padding_keywords(model, None if slid else pads, 0, window.shape[1])
        logits, _ = model(window, **padding)
        return to_numpy(logits.data[:, -1, :])  # (B, V)

    return next_logits


def _cached_next_logits(model, batch_size, pads=None):
    """``next_logits(window, slid)``: the (B, V) logits after ``window`` (B, T), the tokens
    so far. The first call runs them all into a KV cache (prefill); later calls run only the
    tokens added since (decode). Once the window has ``slid`` (the sequence outgrew the
    context), positions no longer match the cache, and the whole window is recomputed.
    ``pads`` (B,): each row starts with that many padding columns (see ``padding_keywords``)."""
    decoder = CachedDecoder(model, batch_size, pads)
    recompute = _recomputed_next_logits(model)

    def next_logits(window, slid):
        if slid:
            return recompute(window, slid)
        return decoder(window[:, decoder.length :])[:, -1, :]  # (B, V)

    return next_logits


def _padded_next_logits(model, pads=None):
    """``next_logits(window, slid)``: the (B, V) logits after ``window`` (B, T), from one
    compiled forward over a window padded to the context length - one shape, one trace.
    With ``pads`` (B,) the rows also start with padding columns; the mask and positions
    that hide them are the same at every step (a ragged batch never slides)."""
    context = model.config.context_length
    params = {name: p.data for name, p in model.named_parameters()}
    padding = padding_keywords(model, pads, 0, context)
    logits_at = compiled(model, _window_logits)

    def next_logits(window, slid):
        B, T = window.shape
        padded = np.zeros((B, context), dtype=window.dtype)  # (B, context)
        padded[:, :T] = window  # the tokens, then padding the causal mask hides from them
        mask, positions = padding.get("mask"), padding.get("positions")
        return to_numpy(logits_at(params, padded, T - 1, mask, positions))

    return next_logits


def _window_logits(model, padded, position, mask, positions):
    """The logits (B, V) at column ``position`` (traced: no retrace) of ``padded`` (B, T)."""
    logits, _ = model(padded, mask=mask, positions=positions)  # (B, T, V)
    return logits.data[:, position, :]


def _as_prompts(ids):
    """``ids`` as an int64 array (B, T) and the padding (B,) of each row, or None.

    A rectangular ``ids`` (an array, or lists of one length) comes back as it is, with None.
    A list of prompts of different lengths comes back padded on the left with each row's own
    first token - a token the row already holds, so the repetition penalty sees no new one,
    and the mask hides it from the model - with how many columns each row's padding takes.
    """
    ragged = isinstance(ids, (list, tuple)) and len({_length_of(row) for row in ids}) > 1
    if not ragged:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] == 0:
            raise ValueError(
                f"generate: ids must be (batch, time) with time >= 1, or a list of prompts "
                f"(lists of token ids), got {ids.shape}"
            )
        return ids, None
    rows = []
    for i, row in enumerate(ids):
        row = np.asarray(row)
        if row.ndim != 1 or row.size == 0 or not np.issubdtype(row.dtype, np.integer):
            raise ValueError(
                f"generate: prompt {i} is {ids[i]!r}: expected a non-empty list of token ids"
            )
        rows.append(row.astype(np.int64))
    T = max(len(row) for row in rows)
    pads = np.array([T - len(row) for row in rows], dtype=np.int64)  # (B,)
    padded = np.stack([np.concatenate([np.full(T - len(row), row[0]), row]) for row in rows])
    return padded, pads


def _length_of(row):
    """The length of one prompt of a list, or None where it has none (checked later)."""
    try:
        return len(row)
    except TypeError:
        return None


def _as_stop_token_ids(stop_token_ids, vocab_size):
    """``stop_token_ids`` (None or a sequence of ids) as an int64 array (S,)."""
    if stop_token_ids is None:
        return np.zeros(0, dtype=np.int64)
    listed = isinstance(stop_token_ids, (list, tuple, np.ndarray))
    if not listed or not all(_is_integer(i) and 0 <= i < vocab_size for i in stop_token_ids):
        raise ValueError(
            f"stop_token_ids={stop_token_ids!r}: expected a list of token ids in "
            f"0..{vocab_size - 1}, or None"
        )
    return np.asarray(stop_token_ids, dtype=np.int64).reshape(-1)


def _as_stop_strings(stop_strings):
    """``stop_strings`` (None or a list of non-empty strings) as a tuple."""
    if stop_strings is None:
        return ()
    listed = isinstance(stop_strings, (list, tuple))
    if not listed or not all(isinstance(s, str) and s for s in stop_strings):
        raise ValueError(
            f"stop_strings={stop_strings!r}: expected a list of non-empty strings, e.g. ['\\n'], "
            "or None"
        )
    return tuple(stop_strings)
