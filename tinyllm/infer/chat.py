"""A chat in the terminal: a conversation kept within the context, replies streamed by the engine.

``ChatSession`` holds a conversation - an optional system message, then turns (a user
message and the assistant's reply to it) - and answers a new user message in four steps:

1. **render**: the conversation and the new message go through the chat template
   (``tinyllm.tokenizer.chat``), ending with an open ``<|assistant|>`` turn for the model
   to complete;
2. **fit**: the prompt and the ``max_tokens`` of the reply must fit the model's context.
   When they would not, the oldest turns are dropped, one at a time; the system message
   always stays. A message too long to fit even alone is an error, and nothing is dropped;
3. **generate**: the prompt runs through an ``Engine`` as one request. The engine is
   stepped in this thread, and the reply's text pieces are yielded as they come out of the
   request's ``events``. The reply ends at the end-of-turn token ``<|end|>`` - or at any
   other special token, a turn marker being past the end of the turn - which is not shown,
   at ``max_tokens``, or when ``cancel()`` is called (Ctrl-C in ``chat_loop``);
4. **remember**: a finished reply joins the conversation with its message. A cancelled
   one is forgotten together with the message it answered.

Each turn renders the whole conversation again, but the engine's prefix caching finds the
full blocks of the last prompt in the cache and reuses them: only the new part is computed.

``chat_loop`` is the read-reply loop of ``tinyllm chat``: ``/reset`` clears the
conversation, ``/quit`` or end of input (Ctrl-D) leaves, Ctrl-C cancels a reply being
written, and Ctrl-C at the prompt leaves.

>>> from tinyllm.infer.engine import Engine
>>> from tinyllm.models import Transformer, get_preset
>>> from tinyllm.tokenizer import Tokenizer
>>> tokenizer = Tokenizer.train("Hello there! How are you? " * 10, vocab_size=270)
>>> model = Transformer(get_preset("tiny", n_layer=1, d_model=16, vocab_size=270))
>>> session = ChatSession(Engine(model, tokenizer), SamplingParams(max_tokens=4, temperature=0))
>>> reply = "".join(session.reply("Hi!"))
>>> session.finish_reason, [m["role"] for m in session.messages]
('length', ['user', 'assistant'])
"""

import contextlib
import dataclasses
import signal
import sys
import threading

from ..tokenizer.chat import CHAT_SPECIAL_TOKENS, format_chat
from .engine import SamplingParams


class ChatSession:
    """A conversation with the model of ``engine`` (which holds a tokenizer that has the chat
    special tokens); each reply is sampled by ``params`` (its ``max_tokens``, rules and seed:
    reply ``i`` of the session uses ``seed + i``). ``system``: the system message, or None.
    See the module doc."""

    def __init__(self, engine, params=None, *, system=None):
        tokenizer = engine.tokenizer
        specials = getattr(tokenizer, "special_tokens", {})
        missing = [t for t in CHAT_SPECIAL_TOKENS if t not in specials]
        if missing:
            raise ValueError(
                f"the tokenizer {tokenizer!r} lacks the chat special tokens {missing}: a chat "
                "needs a BPE tokenizer that has them (tinyllm pretrain --tokenizer bpe)"
            )
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params={params!r}: expected a SamplingParams")
        context = engine.model.config.context_length
        if params.max_tokens >= context:
            raise ValueError(
                f"max_tokens={params.max_tokens} leaves no room for a prompt in the context of "
                f"{context} tokens: expected fewer than {context}"
            )
        if system is not None and not isinstance(system, str):
            raise ValueError(f"system={system!r}: expected the system message's text, or None")
        stops = sorted(specials.values())  # <|end|>, or a marker past the end of the turn
        self.engine, self.tokenizer, self.system = engine, tokenizer, system
        self.params = dataclasses.replace(params, stop_token_ids=stops)
        self.turns = []  # [(user message, assistant message)], oldest first
        self.replies = 0  # replies started: the next one's seed offset
        self.dropped = 0  # turns dropped to fit the context, over the whole session
        self.finish_reason = None  # how the last reply ended: "stop", "length", "cancelled"
        self.request = None  # the engine request of the reply being written

    @property
    def messages(self):
        """The conversation as the chat template takes it: system message first."""
        system = [] if self.system is None else [message("system", self.system)]
        return system + [m for turn in self.turns for m in turn]

    def reset(self):
        """Forget every turn (the system message stays)."""
        self.turns = []

    def _length(self, messages):
        return len(format_chat(self.tokenizer, messages).ids)

    def fit(self, text):
        """The prompt's token ids for a new user message ``text``: the conversation and the
        message, rendered with an open assistant turn; the oldest turns are dropped first
        when the prompt and ``max_tokens`` would not fit the context."""
        context = self.engine.model.config.context_length
        budget = context - self.params.max_tokens  # positions the prompt may take
        system = [] if self.system is None else [message("system", self.system)]
        fixed = self._length([*system, message("user", text)]) + 1  # + the open turn's marker
        if fixed > budget:
            raise ValueError(
                f"the message takes {fixed} tokens (with the system message and the reply's "
                f"opening): with max_tokens={self.params.max_tokens} it does not fit the "
                f"context of {context} tokens; expected at most {budget}"
            )
        lengths = [self._length(list(turn)) for turn in self.turns]  # messages add up
        while self.turns and fixed + sum(lengths) > budget:
            self.turns.pop(0)
            lengths.pop(0)
            self.dropped += 1
        conversation = [*self.messages, message("user", text)]
        ids = format_chat(self.tokenizer, conversation, add_generation_prompt=True).ids
        assert len(ids) + self.params.max_tokens <= context, (len(ids), context)
        return ids

    def reply(self, text):
        """Yield the reply to the user message ``text``, piece by piece, as it is generated
        (see the module doc). ``finish_reason`` says how it ended."""
        ids = self.fit(text)
        seed = None if self.params.seed is None else self.params.seed + self.replies
        params = dataclasses.replace(self.params, seed=seed)
        request = self.engine.add_request(ids, params, request_id=f"chat-{self.replies}")
        self.request, self.finish_reason = request, None
        self.replies += 1
        stops, shown = set(params.stop_token_ids), ""
        try:
            for output in self._outputs(request):
                if output.finish_reason:
                    self.finish_reason = output.finish_reason
                if output.token is not None and output.token not in stops:
                    shown += output.text
                    yield output.text
            tokens = [t for t in request.sequences[0].new_tokens if t not in stops]
            answer = self.tokenizer.decode(tokens)
            if self.finish_reason != "cancelled":
                if answer.startswith(shown) and answer != shown:
                    yield answer[len(shown) :]  # a character held back for its last bytes
                self.turns.append((message("user", text), message("assistant", answer)))
        finally:
            if not request.finished:  # the caller stopped reading: the request goes too
                self.engine.cancel(request.id)
                for _ in self._outputs(request):
                    pass
            self.request = None

    def _outputs(self, request):
        """Step the engine until ``request`` closes; its ``Output``s as they come."""
        while True:
            while request.events.empty():
                if not self.engine.has_work():
                    raise RuntimeError(f"the engine dropped request {request.id!r} unfinished")
                self.engine.step()
            output = request.events.get()
            if output is None:
                return
            yield output

    def cancel(self):
        """Stop the reply being written (from a signal handler or another thread): it ends
        at the engine's next step, with ``finish_reason`` "cancelled"."""
        request = self.request
        if request is not None:
            self.engine.cancel(request.id)


def message(role, content):
    """One message of the chat template.

    >>> message("user", "Hi")
    {'role': 'user', 'content': 'Hi'}
    """
    return {"role": role, "content": content}


@contextlib.contextmanager
def cancel_on_interrupt(session):
    """While the block runs, Ctrl-C (SIGINT) cancels ``session``'s reply instead of raising
    ``KeyboardInterrupt``; the previous handler is back afterwards. (Signals reach only the
    main thread: elsewhere nothing changes.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: session.cancel())
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def chat_loop(session, *, read=input, out=None, err=None):
    """Read user messages with ``read(prompt)`` and write the replies to ``out`` as they
    are generated, notes to ``err`` (default: standard output and error); see the module
    doc for the commands. Returns the exit code, 0."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    while True:
        try:
            text = read("> ")
        except (EOFError, KeyboardInterrupt):  # Ctrl-D or Ctrl-C at the prompt
            out.write("\n")
            return 0
        command = text.strip()
        if command == "/quit":
            return 0
        if command == "/reset":
            session.reset()
            print("(the conversation is cleared)", file=err)
            continue
        if not command:
            continue
        dropped = session.dropped
        try:
            with cancel_on_interrupt(session):
                for piece in session.reply(text):
                    out.write(piece)
                    out.flush()
        except ValueError as error:
            print(f"error: {error}", file=err)
            continue
        out.write("\n")
        out.flush()
        notes = {
            "cancelled": "(reply cancelled; it and its message are forgotten)",
            "length": f"(the reply reached the limit of {session.params.max_tokens} tokens)",
        }
        if session.finish_reason in notes:
            print(notes[session.finish_reason], file=err)
        if session.dropped > dropped:
            n = session.dropped - dropped
            print(f"(dropped the oldest {n} turn(s) to fit the context)", file=err)
