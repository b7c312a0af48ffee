"""Serving: an OpenAI-compatible HTTP endpoint and a chat page over the continuous-batching
``Engine``.

``tinyllm serve MODEL_DIR`` runs it (FastAPI + uvicorn, the ``serve`` extra). The pieces,
each a file:

- ``protocol.py``: request bodies checked into engine work, OpenAI's response and error
  shapes, server-sent events - plain Python, no web framework;
- ``replies.py``: one choice's text as the client sees it (stop strings cut, end tokens
  hidden, held back while a stop string may be starting);
- ``worker.py``: the engine stepping on its own thread, outputs handed to asyncio;
- ``app.py``: the FastAPI routes, streaming, cancelling when a client goes away;
- ``chat.html``: the chat page, one static file.
"""

from .protocol import APIError, Job, ModelCard, parse_chat, parse_completion

__all__ = ["APIError", "Job", "ModelCard", "parse_chat", "parse_completion"]
