"""The engine's own thread: it steps while there is work, and hands outputs to asyncio.

The web server answers requests on one thread running an asyncio event loop; a forward
pass must not run there, or no other request would be read or streamed meanwhile. So the
``Engine`` steps on a thread of its own:

- a handler ``submit``s a prompt: the engine queues it, and the thread, asleep on a
  condition while there is nothing to do, wakes up;
- the thread calls ``engine.step()`` over and over while requests are waiting or running;
  after each step it moves every watched request's new outputs (``request.events``) onto
  that request's ``asyncio.Queue`` with ``loop.call_soon_threadsafe`` - the one safe way to
  touch an event loop from another thread - ending with ``None``;
- ``cancel`` (a client that went away) marks the request; the next step retires it and
  frees its blocks.

>>> import asyncio
>>> from tinyllm.infer.engine import Engine, SamplingParams
>>> from tinyllm.models import Transformer, get_preset
>>> model = Transformer(get_preset("tiny", n_layer=1, d_model=16, context_length=32))
>>> worker = EngineWorker(Engine(model, num_blocks=8, block_size=4))
>>> async def tokens():
...     queue = asyncio.Queue()
...     worker.submit([1, 2, 3], SamplingParams(max_tokens=4, temperature=0), "r", queue)
...     outputs = []
...     while (item := await queue.get())[1] is not None:
...         outputs.append(item[1].token)
...     return outputs
>>> worker.start()
>>> len(asyncio.run(tokens())), worker.engine.cache.blocks_in_use
(4, 0)
>>> worker.stop()
"""

import asyncio
import threading
import traceback

from .protocol import APIError


class EngineWorker:
    """Runs ``engine`` on a thread between ``start()`` and ``stop()``."""

    def __init__(self, engine):
        self.engine = engine
        self.wake = threading.Condition()  # guards watched and stopping; wakes the thread
        self.watched = {}  # request id -> (Request, event loop, asyncio.Queue)
        self.stopping = False
        self.error = None  # what stopped the thread, if a step failed
        self.thread = None

    def start(self):
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name="tinyllm-engine", daemon=True)
        self.thread.start()

    def stop(self):
        with self.wake:
            self.stopping = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join()

    def submit(self, prompt, params, request_id, events):
        """Queue a request; its ``(request, Output)`` pairs, then ``(request, None)``,
        arrive on ``events`` (an asyncio.Queue of the running loop). Returns the Request."""
        loop = asyncio.get_running_loop()
        if self.error is not None:
            raise APIError(f"the engine stopped: {self.error!r}", status=503)
        with self.wake:
            try:
                request = self.engine.add_request(prompt, params, request_id)
            except ValueError as err:  # what the protocol does not check: token ids, say
                raise APIError(str(err)) from None
            self.watched[request_id] = (request, loop, events)
            self.wake.notify()
        return request

    def cancel(self, request_id):
        """Stop a request: its sequences end at the next step and free their blocks."""
        with self.wake:
            self.engine.cancel(request_id)
            self.wake.notify()

    def _run(self):
        while True:
            with self.wake:
                while not self.stopping and not self.engine.has_work():
                    self.wake.wait()
                if self.stopping:
                    return
            try:
                self.engine.step()
            except Exception as err:  # a bug: say so to every waiting client, then stop
                traceback.print_exc()
                self.error = err
                self._forward(failed=err)
                return
            self._forward()

    def _forward(self, failed=None):
        """Move the new outputs of every watched request to its event loop."""
        with self.wake:
            watched = list(self.watched.items())
        for request_id, (request, loop, events) in watched:
            items = []
            while not request.events.empty():
                items.append(request.events.get_nowait())
            if failed is not None and (not items or items[-1] is not None):
                items += [failed, None]
            if not items:
                continue
            if items[-1] is None:
                with self.wake:
                    del self.watched[request_id]
            try:
                loop.call_soon_threadsafe(_put_all, events, request, items)
            except RuntimeError:  # the loop is closed: the server is shutting down
                pass


def _put_all(events, request, items):
    for item in items:
        events.put_nowait((request, item))
