"""One choice's text as the client sees it, built from the engine's outputs token by token.

The engine stops a sequence when it samples an end token or when a stop string shows up in
its text; the client, as with OpenAI, sees neither: the text ends just before the first stop
string, and the end token is not text at all. While the reply streams, a tail that could be
the beginning of a stop string is held back until the next tokens decide:

>>> from tinyllm.infer.request import Output
>>> reply = Reply(decode=lambda ids: "", stop_strings=["\\n\\n"], end_ids=())
>>> [reply.add(Output("r", 0, token, piece)) for token, piece in [(1, "Hi"), (2, "\\n"), (3, "you")]]
['Hi', '', '\\nyou']

``add`` returns the new text to send. When the sequence finishes, the reply's text is
decoded once more from all its tokens - the pieces hold back a character split across
tokens, and the end may leave one unfinished - so the pieces sent add up to ``text``.
"""


class Reply:
    """The text, token count and finish reason of one choice; ``decode`` turns token ids
    into text, ``stop_strings`` cut it, the tokens in ``end_ids`` are not shown."""

    def __init__(self, decode, stop_strings, end_ids):
        self.decode, self.stop_strings, self.end_ids = decode, list(stop_strings), set(end_ids)
        self.tokens = []  # every token generated, an end token included
        self.scored = []  # (token, logprob, top_logprobs) of each shown token, when asked for
        self.sent_scored = 0  # how many of them a stream has sent
        self.pieces = ""  # the engine's text pieces so far
        self.text = ""  # what the client has been sent
        self.finish_reason = None

    def add(self, output):
        """Take one ``Output`` of this choice; the text to send now (maybe "")."""
        if output.token is not None:
            self.tokens.append(output.token)
        if output.logprob is not None:
            self.scored.append((output.token, output.logprob, output.top_logprobs))
        if output.finish_reason is None:
            self.pieces += output.text
            visible = self.pieces[: self._shown_length(self.pieces)]
        else:
            self.finish_reason = output.finish_reason
            tokens = self.tokens
            if output.finish_reason == "stop" and tokens and tokens[-1] in self.end_ids:
                tokens = tokens[:-1]
                if self.scored and self.scored[-1][0] == self.tokens[-1]:
                    self.scored.pop()  # the end token is not text: it has no logprob entry
            visible = self.cut(self.decode(tokens))
        new = visible[len(self.text) :] if visible.startswith(self.text) else ""
        self.text += new
        return new

    def unsent_scored(self):
        """The scored tokens a stream has not sent yet, marked sent: a chunk carries the
        log-probabilities of the tokens that arrived since the chunk before."""
        new, self.sent_scored = self.scored[self.sent_scored :], len(self.scored)
        return new

    def cut(self, text):
        """``text`` up to the first stop string in it.

        >>> Reply(None, ["!", "."], ()).cut("Hi. You!")
        'Hi'
        """
        ends = [text.find(stop) for stop in self.stop_strings if stop in text]
        return text[: min(ends)] if ends else text

    def _shown_length(self, text):
        """How much of ``text`` can be sent: all but a stop string, or a tail that could
        begin one."""
        text = self.cut(text)
        for size in range(min(len(text), max(map(len, self.stop_strings), default=1) - 1), 0, -1):
            if any(stop.startswith(text[-size:]) for stop in self.stop_strings):
                return len(text) - size
        return len(text)
