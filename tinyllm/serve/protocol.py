"""The OpenAI wire format, requests: bodies checked into engine work (``responses`` builds
the JSON that goes back).

A request body is a JSON object. ``parse_completion`` and ``parse_chat`` check every field
the way the OpenAI API does - an unknown field, a wrong type or a value out of range is a
400 naming the field (``param``) - and turn the body into a ``Job``: the prompts as token
ids, one ``SamplingParams`` for them all, and how to answer (streamed or not). Nothing here
needs a web framework, so it is tested without a server.

>>> from tinyllm.data import CharVocab
>>> model = ModelCard("char", CharVocab("abcdefgh "), context_length=16)
>>> job = parse_completion({"model": "char", "prompt": "abc", "max_tokens": 5, "stop": "h"}, model)
>>> job.prompts, job.params.max_tokens, job.params.stop_strings
([[1, 2, 3]], 5, ['h'])
>>> parse_completion({"model": "char", "prompt": "abc", "max_tokens": 14}, model)
Traceback (most recent call last):
...
tinyllm.serve.protocol.APIError: This model's maximum context length is 16 tokens; the prompt (3 tokens) and max_tokens=14 ask for 17
"""

import json
import math
import time
import uuid
from dataclasses import dataclass, field

from ..infer.request import MAX_LOGPROBS, SamplingParams
from ..tokenizer.chat import CHAT_SPECIAL_TOKENS, END_OF_TURN, format_chat

MAX_STOPS = 4  # stop strings per request, as OpenAI allows
MAX_N = 128  # choices per request, as OpenAI allows
MAX_COMPLETION_LOGPROBS = 5  # a completion's logprobs, at most, as OpenAI allows
SAMPLING = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")
# skip_special_tokens is vLLM's: a reply's text leaves out special tokens unless it is false.
COMMON = ("model", "max_tokens", "n", "stream", "stream_options", "stop", "user",
          "skip_special_tokens", *SAMPLING)  # fmt: skip
# Fields OpenAI knows that tinyllm does not act on: accepted at the values that change nothing.
NEUTRAL = {
    "presence_penalty": (0,), "frequency_penalty": (0,),
    "logit_bias": (None, {}), "best_of": (None, 1),
    "suffix": (None, ""),
}  # fmt: skip
COMPLETION_FIELDS = {*COMMON, "prompt", "echo", "best_of", "suffix", "logprobs"} | {
    "presence_penalty", "frequency_penalty", "logit_bias",
}  # fmt: skip
CHAT_FIELDS = {*COMMON, "messages", "max_completion_tokens", "logprobs", "top_logprobs"} | {
    "presence_penalty", "frequency_penalty", "logit_bias",
}  # fmt: skip


class APIError(Exception):
    """An error answered with ``status`` and OpenAI's body ``{"error": {message, type,
    param, code}}``."""

    def __init__(self, message, *, status=400, param=None, code=None):
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code
        self.type = "invalid_request_error" if status < 500 else "server_error"

    def body(self):
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class ModelCard:
    """What the server knows of the model it serves: its ``name`` (the ``model`` field
    clients send), its ``tokenizer``, its context, the most choices one step runs
    (``max_batch``), and the token ids that end a text (the model's end of text)."""

    name: str
    tokenizer: object
    context_length: int
    max_batch: int = 32
    end_ids: tuple = ()
    created: int = field(default_factory=lambda: int(time.time()))

    def chat_end_ids(self):
        """``end_ids`` and the token that closes a chat turn."""
        special = getattr(self.tokenizer, "special_tokens", {})
        closing = (special[END_OF_TURN],) if END_OF_TURN in special else ()
        return tuple(dict.fromkeys((*self.end_ids, *closing)))

    def describe(self):
        """The entry of ``GET /v1/models``."""
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "tinyllm"}


@dataclass
class Job:
    """A checked request: ``prompts`` (token ids; a completion may send several), the
    sampling of each, and how to answer. Choice ``i * n + j`` is sample j of prompt i."""

    kind: str  # "completion" or "chat"
    id: str
    model: str
    prompts: list
    params: SamplingParams
    stream: bool = False
    include_usage: bool = False
    echo: bool = False  # a completion's text (and logprobs) begin with its prompt's
    created: int = field(default_factory=lambda: int(time.time()))


# --- reading a body --------------------------------------------------------------------------
def read_body(raw):
    """The JSON object in the bytes ``raw``, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(f"the request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(
            f"the request body is a JSON {type(body).__name__}: expected an object",
            code="invalid_json",
        )
    return body


def parse_completion(body, model):
    """A ``Job`` for ``POST /v1/completions``: ``prompt`` is a string, a list of strings,
    a list of token ids or a list of such lists."""
    _check_fields(body, COMPLETION_FIELDS, model)
    prompts = _prompts(body.get("prompt"), model)
    echo = _boolean(body, "echo", False)
    logprobs = _integer(body, "logprobs", None, least=0, most=MAX_COMPLETION_LOGPROBS)
    # max_tokens 0 with echo and logprobs: the prompt scored, nothing generated (legacy API)
    max_tokens = _integer(body, "max_tokens", 16, least=0 if echo and logprobs is not None else 1)
    # with echo, the prompt's tokens are scored too (evaluation harnesses read them)
    scoring = dict(logprobs=logprobs, prompt_logprobs=logprobs if echo else None)
    job = _job("completion", "cmpl", body, model, prompts, max_tokens, model.end_ids, **scoring)
    job.echo = echo
    return job


def parse_chat(body, model):
    """A ``Job`` for ``POST /v1/chat/completions``: the conversation through the chat
    template, ending in an open assistant turn; the reply ends with the turn's end."""
    _check_fields(body, CHAT_FIELDS, model)
    messages = _messages(body.get("messages"))
    special = getattr(model.tokenizer, "special_tokens", {})
    missing = [token for token in CHAT_SPECIAL_TOKENS if token not in special]
    if missing:
        raise APIError(
            f"model {model.name!r} has no chat template: its tokenizer lacks the special "
            f"tokens {missing}; use /v1/completions",
            param="messages",
        )
    prompt = format_chat(model.tokenizer, messages, add_generation_prompt=True).ids
    max_tokens = _integer(body, "max_completion_tokens", None, least=1)
    max_tokens = _integer(body, "max_tokens", max_tokens, least=1)
    if max_tokens is None:  # as OpenAI: up to the end of the context
        max_tokens = max(model.context_length - len(prompt), 1)
    top = _integer(body, "top_logprobs", None, least=0, most=MAX_LOGPROBS)
    if not _boolean(body, "logprobs", False):
        if top is not None:
            raise APIError(
                f"top_logprobs={top}: needs logprobs=true", param="top_logprobs",
                code="invalid_value",
            )  # fmt: skip
        logprobs = None
    else:
        logprobs = top or 0
    end_ids = model.chat_end_ids()
    return _job("chat", "chatcmpl", body, model, [prompt], max_tokens, end_ids, logprobs)


def _job(kind, prefix, body, model, prompts, max_tokens, end_ids, logprobs=None,
         prompt_logprobs=None):  # fmt: skip
    for prompt in prompts:
        if len(prompt) + max_tokens > model.context_length:
            raise APIError(
                f"This model's maximum context length is {model.context_length} tokens; the "
                f"prompt ({len(prompt)} tokens) and max_tokens={max_tokens} ask for "
                f"{len(prompt) + max_tokens}",
                param="messages" if kind == "chat" else "prompt",
                code="context_length_exceeded",
            )
    n = _integer(body, "n", 1, least=1, most=min(MAX_N, model.max_batch))
    stream = _boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not stream:
        raise APIError("stream_options is only allowed with stream=true", param="stream_options")
    if options is not None and (not isinstance(options, dict) or set(options) - {"include_usage"}):
        raise APIError(
            f"stream_options={options!r}: expected an object with the one key include_usage",
            param="stream_options",
        )
    include_usage = _boolean(options or {}, "include_usage", False)
    if not isinstance(body.get("user", ""), str):
        raise APIError(
            f"user={body['user']!r}: expected a string", param="user", code="invalid_type"
        )
    params = SamplingParams(
        max_tokens=max_tokens, n=n, stop_token_ids=list(end_ids), stop_strings=_stops(body),
        temperature=_number(body, "temperature", 1.0, least=0, most=2),
        top_p=_probability(body, "top_p"), min_p=_probability(body, "min_p"),
        top_k=_integer(body, "top_k", None, least=1),
        repetition_penalty=_number(body, "repetition_penalty", None, least=0, strict=True),
        seed=_integer(body, "seed", None, least=0),
        skip_special_tokens=_boolean(body, "skip_special_tokens", True), logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )  # fmt: skip
    request_id = f"{prefix}-{uuid.uuid4().hex}"
    return Job(kind, request_id, model.name, prompts, params, stream, include_usage)


def _check_fields(body, known, model):
    for name in body:
        if name not in known:
            raise APIError(
                f"Unrecognized request argument supplied: {name}",
                param=name,
                code="unknown_parameter",
            )
    for name, neutral in NEUTRAL.items():
        if name in body and not any(_same(body[name], value) for value in neutral):
            raise APIError(
                f"{name}={body[name]!r} is not supported by tinyllm: leave it out or send "
                f"{' or '.join(map(json.dumps, neutral))}",
                param=name,
                code="unsupported_value",
            )
    if "model" not in body:
        raise APIError(
            "you must provide a model parameter", param="model", code="missing_required_parameter"
        )
    if body["model"] != model.name:
        raise APIError(
            f"The model {body['model']!r} does not exist: this server serves {model.name!r}",
            status=404,
            param="model",
            code="model_not_found",
        )


def _prompts(prompt, model):
    """The token ids of each prompt of a completion request."""
    expected = "a string, a list of strings, a list of token ids, or a list of such lists"
    if prompt is None:
        raise APIError(
            "you must provide a prompt", param="prompt", code="missing_required_parameter"
        )
    if isinstance(prompt, str) or (
        isinstance(prompt, list) and prompt and all(map(_is_int, prompt))
    ):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise APIError(
            f"prompt={prompt!r}: expected {expected}", param="prompt", code="invalid_type"
        )
    vocab = model.tokenizer.vocab_size
    prompts = []
    for item in prompt:
        if isinstance(item, str):
            try:
                item = model.tokenizer.encode(item)
            except ValueError as err:  # a character outside a character-level vocabulary
                raise APIError(f"prompt: {err}", param="prompt") from None
        elif not (isinstance(item, list) and all(_is_int(t) for t in item)):
            raise APIError(
                f"prompt={prompt!r}: expected {expected}", param="prompt", code="invalid_type"
            )
        elif not all(0 <= t < vocab for t in item):
            raise APIError(f"prompt: token ids must be in 0..{vocab - 1}", param="prompt")
        if not item:
            raise APIError("prompt: an empty prompt has nothing to continue", param="prompt")
        prompts.append(item)
    return prompts


def _messages(messages):
    """The conversation as {role, content} dicts; content may be OpenAI's list of text
    parts, and the role "developer" is the system's."""
    if not isinstance(messages, list) or not messages:
        raise APIError(
            f"messages={messages!r}: expected a non-empty list of {{role, content}} objects",
            param="messages",
            code="missing_required_parameter" if messages is None else "invalid_type",
        )
    checked = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if (
            not isinstance(message, dict)
            or "role" not in message
            or set(message) - {"role", "content", "name"}
        ):
            raise APIError(
                f"{where}={message!r}: expected an object with role and content", param=where
            )
        role = {"developer": "system"}.get(message["role"], message["role"])
        if role not in ("system", "user", "assistant"):
            raise APIError(
                f"{where}.role={message['role']!r}: expected system, developer, user or assistant",
                param=f"{where}.role",
            )
        content = message.get("content")
        if isinstance(content, list):  # text parts: [{"type": "text", "text": ...}]
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                for p in content
            ):
                raise APIError(
                    f"{where}.content: only text parts are supported", param=f"{where}.content"
                )
            content = "".join(part["text"] for part in content)
        if not isinstance(content, str):
            raise APIError(
                f"{where}.content={content!r}: expected a string or a list of text parts",
                param=f"{where}.content",
                code="invalid_type",
            )
        checked.append({"role": role, "content": content})
    return checked


def _stops(body):
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not (isinstance(stops, list) and all(isinstance(s, str) and s for s in stops)):
        raise APIError(
            f"stop={stop!r}: expected a non-empty string or a list of them", param="stop"
        )
    if len(stops) > MAX_STOPS:
        raise APIError(f"stop: {len(stops)} strings, at most {MAX_STOPS} allowed", param="stop")
    return stops


# --- typed fields ------------------------------------------------------------------------------
def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _integer(body, name, default, *, least, most=None):
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value):
        raise APIError(f"{name}={value!r}: expected an integer", param=name, code="invalid_type")
    if value < least or (most is not None and value > most):
        bounds = f">= {least}" if most is None else f"in {least}..{most}"
        raise APIError(
            f"{name}={value!r}: expected an integer {bounds}", param=name, code="invalid_value"
        )
    return value


def _number(body, name, default, *, least, most=math.inf, strict=False):
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise APIError(f"{name}={value!r}: expected a number", param=name, code="invalid_type")
    if not (
        math.isfinite(value) and (value > least if strict else value >= least) and value <= most
    ):
        bounds = f"> {least}" if strict else f">= {least}"
        bounds += "" if most == math.inf else f" and <= {most}"
        raise APIError(
            f"{name}={value!r}: expected a number {bounds}", param=name, code="invalid_value"
        )
    return float(value)


def _probability(body, name):
    return _number(body, name, None, least=0, most=1, strict=True)


def _same(value, neutral):
    """Equal and of the same kind: false is not 0 here, as in JSON."""
    return value == neutral and isinstance(value, bool) == isinstance(neutral, bool)


def _boolean(body, name, default):
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(f"{name}={value!r}: expected true or false", param=name, code="invalid_type")
    return value
