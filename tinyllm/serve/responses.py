"""The OpenAI wire format, answers: the JSON of a whole response or of one streamed chunk,
the choices in it and their log-probabilities, and the server-sent events that carry a stream.
The request that asked (a ``protocol.Job``) decides each shape: a completion's or a chat's,
whole or streamed.

>>> sse({"text": "hi"})
'data: {"text": "hi"}\\n\\n'
"""

import json

import numpy as np

DONE = "data: [DONE]\n\n"  # the last event of every stream


def sse(data):
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data)}\n\n"


def usage(prompt_tokens, completion_tokens):
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def choice(job, index, text, finish_reason, *, stream, logprobs=None):
    """One entry of ``choices``: the whole reply, or (``stream``) a piece of it; ``logprobs``
    as ``logprobs_of`` gives them, or None."""
    if job.kind == "completion":
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}
    if not stream:
        message = {"role": "assistant", "content": text}
        return {
            "index": index,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish_reason,
        }
    delta = {"content": text} if text else {}
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def logprobs_of(job, tokenizer, scored, offset=0):
    """The ``logprobs`` of a choice, or None when the request asked for none: for the
    ``scored`` tokens ((token, logprob, ((token, logprob), ...)), ...), a stream's chunk or
    the whole reply, OpenAI's two forms. A completion lists the tokens' texts, their
    log-probabilities, the likeliest at each step (the sampled token among them) and where
    each token's text begins in the reply's text (from ``offset``, for a chunk after others); a
    chat reply lists each token with its bytes (a token may hold part of a character)."""
    if job.params.logprobs is None:
        return None
    ids = {token for token, _, _ in scored} | {t for _, _, top in scored for t, _ in top or ()}
    text = {t: tokenizer.decode([t]) for t in ids}
    if job.kind == "completion":
        lengths = [characters_begun(job, tokenizer, token) for token, _, _ in scored]
        return {
            "tokens": [text[token] for token, _, _ in scored],
            "token_logprobs": [logprob for _, logprob, _ in scored],
            "top_logprobs": [
                None if top is None else {text[t]: lp for t, lp in (*top, (token, logprob))}
                for token, logprob, top in scored
            ],  # (None for an echoed prompt's first token, which nothing scores)
            "text_offset": np.cumsum([offset, *lengths])[:-1].tolist(),
        }

    raw = getattr(tokenizer, "decode_bytes", lambda ids: text[ids[0]].encode())

    def entry(token, logprob):
        return {"token": text[token], "logprob": logprob, "bytes": list(raw([token]))}

    content = [
        {**entry(token, logprob), "top_logprobs": [entry(t, lp) for t, lp in top]}
        for token, logprob, top in scored
    ]
    return {"content": content, "refusal": None}


def characters_begun(job, tokenizer, token):
    """How many of ``job``'s reply's characters begin in ``token``, which a completion's
    ``text_offset`` advances by: none for a special token the text leaves out (the request's
    ``skip_special_tokens``), and for a token holding part
    of a UTF-8 character only the characters its bytes start (those that are not
    continuation bytes, 0b10xxxxxx) - not the length of its own text, where a lone part of a
    character shows as U+FFFD."""
    text = tokenizer.decode([token], skip_special_tokens=job.params.skip_special_tokens)
    if not text or not hasattr(tokenizer, "decode_bytes"):
        return len(text)
    return sum(byte & 0xC0 != 0x80 for byte in tokenizer.decode_bytes([token]))


def envelope(job, choices, *, stream, usage=None):
    """The object around ``choices``: a whole response or (``stream``) one chunk."""
    kinds = {
        ("completion", False): "text_completion", ("completion", True): "text_completion",
        ("chat", False): "chat.completion", ("chat", True): "chat.completion.chunk",
    }  # fmt: skip
    data = dict(id=job.id, object=kinds[job.kind, stream], created=job.created, model=job.model)
    data["system_fingerprint"] = None
    data["choices"] = choices
    if not stream or job.include_usage:  # in a stream: null until the last chunk
        data["usage"] = usage
    return data
