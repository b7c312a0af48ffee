"""Speculative decoding: a cheap guesser proposes tokens, the model checks them all at once.

Decoding runs the model once per token, and on a small batch each run costs about the same
whether it scores one position or five: it is the weights that must be read, not the
arithmetic, that takes the time. So let something cheap propose ``k`` tokens, and score them
all in one cached forward of the model (the *target*): each proposal the target would also
have produced is kept, and the first one it would not is replaced. One target forward then
yields between 1 and k + 1 tokens.

The proposals come from a *draft* model (a smaller model over the same vocabulary), or from
*prompt lookup*: the tokens that followed the last occurrence of the newest n-gram earlier in
the text, which costs nothing and often guesses right on repetitive text (code, quotes,
a document being edited).

Sampling stays exact (Leviathan et al. 2023, Chen et al. 2023): with ``q`` the draft's
distribution for a proposed token ``x`` and ``p`` the target's, keep ``x`` with probability
``min(1, p(x) / q(x))``; at the first rejection draw the replacement from the residual
``max(0, p - q)``, normalised. Every token then has exactly distribution ``p``:

    P(out = x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(q(y), p(y))) * residual(x)
               = min(q(x), p(x))      + max(0, p(x) - q(x))              = p(x)

When all ``k`` are kept, the target's distribution after them is already computed: one more
token (the *bonus*) is drawn from it. Greedy decoding is the case where ``p`` and ``q`` put
all their mass on one token: a proposal is kept exactly when it is the target's argmax, so
the output is the target's own greedy text, token for token.

With an acceptance rate ``a`` per token (independent), a round of ``k`` proposals yields
``(1 - a^(k+1)) / (1 - a)`` tokens on average (``expected_tokens_per_round``).

>>> p = np.array([[0.6, 0.3, 0.1]]); q = np.array([[0.2, 0.7, 0.1]])
>>> residual_distribution(p, q).round(3)          # where p exceeds q, renormalised
array([[1., 0., 0.]])
>>> round(expected_tokens_per_round(0.8, 4), 3)   # k = 4 proposals, 80% acceptance
3.362
"""

import numpy as np

from .decoder import CachedDecoder
from .sampling import draw, next_token_probs


def residual_distribution(p, q):
    """``max(0, p - q)`` normalised, per row of (B, V): what a rejected token is redrawn from.

    Where ``p`` and ``q`` are equal there is no residual - and no rejection either (the
    acceptance probability is 1) - so ``p`` itself is returned for such a row.
    """
    residual = np.maximum(np.asarray(p, np.float64) - q, 0.0)  # (B, V)
    total = residual.sum(axis=-1, keepdims=True)  # (B, 1)
    return np.where(total > 0, residual / np.where(total > 0, total, 1.0), p)


def accept_or_resample(proposed, draft_probs, target_probs, rng):
    """The speculative rule for one sequence: how many proposals to keep, and the next token.

    ``proposed`` (k,) are the draft's tokens, ``draft_probs`` (k, V) the distributions they
    were drawn from, ``target_probs`` (k + 1, V) the target's distributions at the same
    positions plus one after the last. Proposal i is kept with probability
    ``min(1, p_i(x_i) / q_i(x_i))``, in order, until one is rejected; the token after the
    kept ones comes from the residual ``max(0, p - q)`` at the rejection, or from
    ``p_k`` (the bonus) when all are kept. Returns ``(n_kept, next_token)``.

    >>> rng = np.random.default_rng(0)
    >>> p = np.array([[0.0, 1.0], [1.0, 0.0]]); q = np.array([[0.0, 1.0]])  # greedy: one-hot
    >>> accept_or_resample(np.array([1]), q, p, rng)   # the target agrees, then the bonus 0
    (1, 0)
    """
    for i, token in enumerate(proposed):
        p, q = target_probs[i], draft_probs[i]
        if rng.random() < min(1.0, p[token] / q[token]):  # q[token] > 0: it was drawn
            continue
        return i, int(draw(residual_distribution(p[None], q[None]), rng)[0])
    return len(proposed), int(draw(target_probs[len(proposed)][None], rng)[0])


def lookup_proposals(ids, k, max_ngram=3):
    """Up to ``k`` tokens that followed the newest n-gram of ``ids`` (1-D) where it last
    occurred before: prompt-lookup decoding's guess. The longest n-gram that occurs (from
    ``max_ngram`` down to 1) wins; no occurrence gives an empty array.

    >>> lookup_proposals(np.array([5, 6, 7, 8, 1, 5, 6]), k=2)   # "5 6" was followed by 7 8
    array([7, 8])
    """
    ids = np.asarray(ids)
    for n in range(min(max_ngram, len(ids) - 1), 0, -1):
        tail = ids[-n:]
        starts = np.flatnonzero(
            np.all(np.lib.stride_tricks.sliding_window_view(ids[:-1], n) == tail, axis=-1)
        )  # where the n-gram occurs, its own last occurrence excluded
        if len(starts):
            follow = starts[-1] + n
            return ids[follow : follow + k]
    return ids[:0]


def expected_tokens_per_round(acceptance_rate, k):
    """Tokens one target forward yields on average: ``(1 - a^(k+1)) / (1 - a)``."""
    a = acceptance_rate
    return k + 1.0 if a == 1 else (1 - a ** (k + 1)) / (1 - a)


def speculative_stream(target, prompt, max_new_tokens, sampling, stops, rng, stats, *, draft, k):
    """The generation loop with speculation, for one sequence: yields what ``stops`` makes
    of each new token, as ``stream_generate`` does.

    ``prompt`` (1, T); ``sampling`` the sampling settings; ``draft`` a model over the same
    vocabulary, or a positive int: prompt lookup with n-grams up to that long; ``k`` the
    proposals per round. Each model keeps a KV cache (a ``CachedDecoder``: compiled under
    JAX); after a round each cache is cut back (``truncate``) to the tokens that were kept, so what it holds never includes a
    rejected token. ``stats`` (a ``GenerationStats``) counts proposals and acceptances.
    """
    vocab_size = target.config.vocab_size
    target_cache = CachedDecoder(target, 1)
    draft_cache = None if isinstance(draft, int) else CachedDecoder(draft, 1)
    seq = np.asarray(prompt[0], dtype=np.int64)  # (n,) the tokens so far
    produced = 0
    while produced < max_new_tokens:
        budget = min(k, max_new_tokens - produced - 1)  # a round yields up to budget + 1
        if draft_cache is None:
            proposed = lookup_proposals(seq, budget, max_ngram=draft)
            draft_probs = np.eye(vocab_size)[proposed]  # (n, V): a lookup is certain
        else:
            proposed, draft_probs = _draft(draft_cache, seq, budget, sampling, rng)
        target_probs = _verify(target_cache, seq, proposed, sampling)  # (n + 1, V)
        kept, token = accept_or_resample(proposed, draft_probs, target_probs, rng)
        stats.target_forwards += 1
        stats.drafted += len(proposed)
        stats.accepted += kept
        target_cache.truncate(len(seq) + kept)  # forget the keys of rejected proposals
        if draft_cache is not None:
            draft_cache.truncate(min(draft_cache.length, len(seq) + kept))
        for new in [*proposed[:kept], token]:
            seq = np.append(seq, new)
            produced += 1
            stats.new_tokens += 1
            yield stops.step(seq[None])
            if stops.stopped.all():
                return


def _forward(decoder, ids):
    """The logits (T, V) of the tokens of ``ids`` (1-D) the ``decoder`` does not hold yet."""
    return decoder(ids[decoder.length :][None])[0]


def _draft(decoder, seq, budget, sampling, rng):
    """``budget`` tokens drawn one at a time from the draft model after ``seq``: (proposed
    (n,), their distributions (n, V))."""
    proposed, probs = [], []
    for _ in range(budget):
        so_far = np.concatenate([seq, proposed]).astype(np.int64)
        logits = _forward(decoder, so_far)[-1:]  # (1, V)
        probs.append(next_token_probs(logits, **sampling, previous_ids=so_far[None])[0])
        proposed.append(int(draw(probs[-1][None], rng)[0]))
    probs = np.asarray(probs).reshape(budget, decoder.model.config.vocab_size)  # (n, V)
    return np.asarray(proposed, dtype=np.int64), probs


def _verify(decoder, seq, proposed, sampling):
    """The target's distributions (n + 1, V) after ``seq`` and after each of the ``n``
    proposals, from one forward over them (and any tokens its cache lacks)."""
    logits = _forward(decoder, np.concatenate([seq, proposed]))[-len(proposed) - 1 :]
    return np.concatenate([
        next_token_probs(
            logits[i : i + 1], **sampling,
            previous_ids=np.concatenate([seq, proposed[:i]])[None],
        )
        for i in range(len(proposed) + 1)
    ])  # fmt: skip
