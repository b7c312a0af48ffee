"""Sampling: turning the model's next-token logits into text, one token at a time.

A language model gives, at every position, logits over the vocabulary for the next token.
Generation feeds the prompt, picks a next token from the last position's distribution,
appends it, and repeats. How the token is picked is the *sampling* rule:

| setting                | effect                                                          |
|------------------------|-----------------------------------------------------------------|
| `repetition_penalty=r` | tokens already in the sequence lose likelihood (`r > 1`)        |
| `temperature=0`        | greedy: always the most likely token (deterministic)            |
| `temperature<1`        | sharper distribution, safer text; `>1` flatter, more surprising  |
| `top_k=k`              | only the k most likely tokens can be picked                      |
| `top_p=p`              | only the smallest set of tokens whose probabilities add up to p  |
| `min_p=m`              | only tokens at least m times as likely as the likeliest one      |

The rules apply in the order of the table, the order Hugging Face ``transformers`` chains
its logits processors in: the repetition penalty, then temperature, top-k, top-p, min-p.
Each is a pure function of the (B, V) logits, so a learner can try them one at a time:

>>> logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
>>> sample_next(logits, temperature=0, rng=np.random.default_rng(0))
array([0])
>>> filtered = filter_logits(logits, top_k=2)
>>> np.isinf(filtered).tolist()
[[False, False, True, True]]
>>> np.isinf(filter_logits(logits, top_p=0.7)).tolist()  # 0.5 + 0.3 reaches 0.7
[[False, False, True, True]]
>>> np.isinf(filter_logits(logits, min_p=0.5)).tolist()  # at least 0.5 * 0.5 = 0.25
[[False, False, True, True]]

``stream_generate`` is the generation loop: it yields each new token as it is produced, and
stops a row when it emits a stop token or its text comes to hold a stop string.
``generate`` collects the stream into one array.

The loop recomputes the whole window for every new token: simple and correct, and fast
enough for the small models this library trains on a CPU. Under JAX every new window length
would be a new program to compile, so there the window always has the full context length -
the tokens so far, padded after the end - and one compiled forward reads the logits at the
last real position. Attention is causal: the padding after that position cannot change its
logits.
"""

import contextlib
import math
import numbers

import numpy as np

from ..autograd import Tensor, no_grad, to_numpy


def check_sampling_settings(
    *, temperature=1.0, top_k=None, top_p=None, min_p=None, repetition_penalty=None
):
    """Raise ``ValueError`` naming the first setting outside its range (None turns a rule off).

    >>> check_sampling_settings(temperature=0.7, top_k=50, min_p=0.05)
    >>> check_sampling_settings(top_p=1.5)
    Traceback (most recent call last):
    ...
    ValueError: top_p=1.5: expected a probability in (0, 1], or None
    """
    if not _is_real(temperature) or not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(
            f"temperature={temperature!r}: expected a finite number >= 0 (0 is greedy)"
        )
    if top_k is not None and not (_is_integer(top_k) and top_k >= 1):
        raise ValueError(f"top_k={top_k!r}: expected a positive integer, or None")
    for name, value in (("top_p", top_p), ("min_p", min_p)):
        if value is not None and not (_is_real(value) and 0 < value <= 1):
            raise ValueError(f"{name}={value!r}: expected a probability in (0, 1], or None")
    penalty = repetition_penalty
    if penalty is not None and not (_is_real(penalty) and 0 < penalty < math.inf):
        raise ValueError(
            f"repetition_penalty={penalty!r}: expected a finite number > 0 "
            "(1 changes nothing, above 1 discourages repeats), or None"
        )


def penalize_repetition(logits, previous_ids, penalty):
    """``logits`` (B, V) with the tokens in each row of ``previous_ids`` (B, n) penalized.

    The CTRL rule: a token already in the sequence has its logit divided by ``penalty`` when
    positive and multiplied by it when negative, so ``penalty > 1`` always makes it less
    likely (dividing a negative logit would raise it). A token counts once however often it
    appeared.

    >>> logits = np.array([[2.0, -1.0, 0.5]])
    >>> penalize_repetition(logits, np.array([[0, 1, 0]]), 2.0)  # token 2 is new: unchanged
    array([[ 1. , -2. ,  0.5]])
    """
    logits = np.asarray(logits, dtype=np.float64)  # (B, V)
    previous_ids = np.asarray(previous_ids)
    B, V = logits.shape
    if previous_ids.ndim != 2 or len(previous_ids) != B:
        raise ValueError(
            f"previous_ids must be ({B}, n) for logits {logits.shape}, got {previous_ids.shape}"
        )
    if previous_ids.size and not (0 <= previous_ids.min() and previous_ids.max() < V):
        raise ValueError(
            f"previous_ids hold ids outside 0..{V - 1}: {previous_ids.min()}..{previous_ids.max()}"
        )
    seen = np.zeros((B, V), dtype=bool)
    np.put_along_axis(seen, previous_ids.astype(np.int64), True, axis=-1)  # (B, V)
    penalized = np.where(logits < 0, logits * penalty, logits / penalty)  # (B, V)
    return np.where(seen, penalized, logits)


def keep_top_k(logits, top_k):
    """``logits`` (B, V) with all but the ``top_k`` largest of each row set to ``-inf``.

    >>> keep_top_k(np.array([[1.0, 3.0, 2.0]]), 2)
    array([[-inf,   3.,   2.]])
    """
    logits = np.asarray(logits, dtype=np.float64)  # (B, V)
    if top_k >= logits.shape[-1]:
        return logits
    kth = np.partition(logits, -top_k, axis=-1)[:, -top_k, None]  # (B, 1): the k-th largest
    return np.where(logits < kth, -np.inf, logits)


def keep_top_p(logits, top_p):
    """``logits`` (B, V) keeping, in each row, the fewest likeliest tokens whose probabilities
    add up to at least ``top_p`` (nucleus sampling); the others become ``-inf``.

    >>> np.isinf(keep_top_p(np.log(np.array([[0.1, 0.6, 0.3]])), 0.8)).tolist()
    [[True, False, False]]
    """
    logits = np.asarray(logits, dtype=np.float64)  # (B, V)
    order = np.argsort(-logits, axis=-1)  # (B, V) most likely first
    probs = _softmax(np.take_along_axis(logits, order, axis=-1))  # (B, V) in that order
    before = np.cumsum(probs, axis=-1) - probs  # mass of the tokens ahead of each one
    drop = np.zeros(logits.shape, dtype=bool)
    np.put_along_axis(drop, order, before >= top_p, axis=-1)  # keeps at least one token
    return np.where(drop, -np.inf, logits)


def keep_min_p(logits, min_p):
    """``logits`` (B, V) keeping the tokens whose probability is at least ``min_p`` times the
    row's top probability; the others become ``-inf``. The cut follows the model's
    confidence: a sure model keeps few tokens, an unsure one many.

    >>> probs = np.array([[0.5, 0.3, 0.15, 0.05]])
    >>> np.isinf(keep_min_p(np.log(probs), 0.2)).tolist()  # keeps p >= 0.2 * 0.5 = 0.1
    [[False, False, False, True]]
    """
    logits = np.asarray(logits, dtype=np.float64)  # (B, V)
    probs = _softmax(logits)  # (B, V)
    threshold = min_p * probs.max(axis=-1, keepdims=True)  # (B, 1)
    return np.where(probs < threshold, -np.inf, logits)


def filter_logits(logits, *, top_k=None, top_p=None, min_p=None):
    """``logits`` (B, V) after top-k, then top-p, then min-p (each skipped when None)."""
    check_sampling_settings(top_k=top_k, top_p=top_p, min_p=min_p)
    logits = np.array(logits, dtype=np.float64)  # a copy: (B, V)
    if top_k is not None:
        logits = keep_top_k(logits, top_k)
    if top_p is not None:
        logits = keep_top_p(logits, top_p)
    if min_p is not None:
        logits = keep_min_p(logits, min_p)
    return logits


def sample_next(
    logits, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
    repetition_penalty=None, previous_ids=None, rng,
):  # fmt: skip
    """One next-token id per row of ``logits`` (B, V), as an int64 array (B,).

    ``previous_ids`` (B, n), the tokens so far, is what ``repetition_penalty`` looks at.
    The penalty applies before greedy picking too (it changes which token is likeliest);
    top-k, top-p and min-p never drop the likeliest token, so greedy ignores them.
    """
    check_sampling_settings(
        temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty,
    )  # fmt: skip
    logits = np.asarray(logits, dtype=np.float64)  # (B, V)
    if repetition_penalty is not None:
        if previous_ids is None:
            raise ValueError("repetition_penalty needs previous_ids: the (B, n) tokens so far")
        logits = penalize_repetition(logits, previous_ids, repetition_penalty)
    if temperature == 0:
        return logits.argmax(axis=-1).astype(np.int64)
    probs = _softmax(filter_logits(logits / temperature, top_k=top_k, top_p=top_p, min_p=min_p))
    uniform = rng.random((len(probs), 1))  # (B, 1): inverse-CDF sampling, one draw per row
    ids = (np.cumsum(probs, axis=-1) < uniform).sum(axis=-1)
    return np.minimum(ids, probs.shape[-1] - 1).astype(np.int64)


def stream_generate(
    model, ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
    repetition_penalty=None, stop_token_ids=None, stop_strings=None, decode=None, pad_id=-1,
    seed=0,
):  # fmt: skip
    """Yield the new tokens after ``ids`` (B, T) as they are produced, one step at a time.

    Each step yields an int64 array (B,): one new token per row. With ``decode`` (a function
    from a list of token ids to text, such as a tokenizer's ``decode``) it yields
    ``(token_ids, pieces)`` instead, ``pieces`` the list of B texts those tokens add. A piece
    that would end in a partly decoded character (U+FFFD) waits for the next token.

    A row stops once it emits one of ``stop_token_ids``, or once its new text holds one of
    ``stop_strings`` (which needs ``decode``); the token that stops it is still yielded.
    After that the row yields ``pad_id`` and the piece "". The stream ends when every row
    has stopped, or after ``max_new_tokens`` steps. The repetition penalty looks at the
    whole sequence so far, prompt included. The settings are checked here, at the call.
    Eval mode and ``no_grad`` hold only around each forward, so code reading the stream
    between steps sees the model's own mode and records gradients as usual.

    >>> from tinyllm.models import Transformer, get_preset
    >>> model = Transformer(get_preset("tiny", n_layer=1, d_model=16, context_length=8))
    >>> steps = list(stream_generate(model, [[1, 2]], 3, temperature=0))
    >>> len(steps), steps[0].shape
    (3, (1,))
    """
    ids = _as_prompt(ids)
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
    stops = _Stops(len(ids), ids.shape[1], stop_token_ids, stop_strings, decode, pad_id)
    return _stream(model, ids, max_new_tokens, sampling, stops, seed)


def generate(
    model, ids, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None, min_p=None,
    repetition_penalty=None, stop_token_ids=None, stop_strings=None, decode=None, pad_id=-1,
    seed=0,
):  # fmt: skip
    """``ids`` (B, T) followed by the sampled tokens: an int64 array (B, T + n).

    Without stop conditions, n is ``max_new_tokens``. With ``stop_token_ids`` or
    ``stop_strings`` (see ``stream_generate``), n is the number of steps until every row
    stopped, at most ``max_new_tokens``; a row that stopped earlier ends with its stop token
    (or the token that completed its stop string) and then ``pad_id``s (-1 by default, never
    a token id: ``row[row >= 0]`` keeps the tokens).

    The model runs in eval mode (no dropout) and without recording gradients; its mode is
    restored after each step. Prompts longer than the context keep their last tokens.
    """
    steps = stream_generate(
        model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, repetition_penalty=repetition_penalty, stop_token_ids=stop_token_ids,
        stop_strings=stop_strings, decode=decode, pad_id=pad_id, seed=seed,
    )  # fmt: skip
    new_ids = [step[0] if decode is not None else step for step in steps]  # each (B,)
    return np.concatenate([_as_prompt(ids), *(column[:, None] for column in new_ids)], axis=1)


def _stream(model, ids, max_new_tokens, sampling, stops, seed):
    """The generation loop behind ``stream_generate``: a generator over the steps."""
    context = model.config.context_length
    rng = np.random.default_rng(seed)
    backend = model.token_embedding.weight.backend
    next_logits = _padded_next_logits(model, backend) if backend.name == "jax" else None
    for _ in range(max_new_tokens):
        window = ids[:, -context:]  # (B, T <= context)
        with _inference(model):
            if next_logits is None:
                logits, _ = model(window)  # (B, T, V)
                last = to_numpy(logits.data[:, -1, :])  # (B, V): the next-token scores
            else:
                last = next_logits(window, context)  # (B, V)
        next_ids = sample_next(last, **sampling, previous_ids=ids, rng=rng)  # (B,)
        ids = np.concatenate([ids, next_ids[:, None]], axis=1)
        yield stops.step(ids)
        if stops.stopped.all():
            return


class _Stops:
    """Which rows have stopped, and the text each has produced so far (with ``decode``)."""

    def __init__(self, batch, prompt_length, stop_token_ids, stop_strings, decode, pad_id):
        self.stopped = np.zeros(batch, dtype=bool)  # (B,)
        self.prompt_length = prompt_length
        self.stop_token_ids, self.stop_strings = stop_token_ids, stop_strings
        self.decode, self.pad_id = decode, pad_id
        self.shown = [""] * batch  # the text already yielded, per row

    def step(self, ids):
        """What the stream yields after the newest column of ``ids`` (B, T + steps)."""
        was_stopped = self.stopped.copy()  # (B,)
        new_ids = np.where(was_stopped, self.pad_id, ids[:, -1]).astype(np.int64)  # (B,)
        self.stopped |= np.isin(ids[:, -1], self.stop_token_ids)
        if self.decode is None:
            return new_ids
        pieces = []
        for row in range(len(ids)):
            if was_stopped[row]:
                pieces.append("")
                continue
            text = self.decode(ids[row, self.prompt_length :].tolist())
            if any(stop in text for stop in self.stop_strings):
                self.stopped[row] = True
            if text.endswith("\ufffd"):
                pieces.append("")  # a character split across tokens: wait for the rest
            else:
                pieces.append(text[len(self.shown[row]) :])
                self.shown[row] = text
        return new_ids, pieces


@contextlib.contextmanager
def _inference(model):
    """Eval mode (no dropout) and no gradient recording for one forward; both restored."""
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            yield
    finally:
        model.train(was_training)


def _padded_next_logits(model, backend):
    """``next_logits(window, context)``: the (B, V) logits after ``window`` (B, T), from one
    compiled forward over a window padded to ``context`` tokens - one shape, one trace."""
    params = {name: p.data for name, p in model.named_parameters()}

    def logits_at(params, padded, position):
        with model.bind({name: Tensor(array) for name, array in params.items()}):
            logits, _ = model(padded)  # (B, context, V)
        return logits.data[:, position, :]  # (B, V); ``position`` is traced: no retrace

    compiled = backend.jit(logits_at)

    def next_logits(window, context):
        B, T = window.shape
        padded = np.zeros((B, context), dtype=window.dtype)  # (B, context)
        padded[:, :T] = window  # the tokens, then padding the causal mask hides from them
        return to_numpy(compiled(params, padded, T - 1))

    return next_logits


def _as_prompt(ids):
    ids = np.asarray(ids, dtype=np.int64)
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"generate: ids must be (batch, time) with time >= 1, got {ids.shape}")
    return ids


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


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)
