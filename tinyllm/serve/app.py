"""The OpenAI-compatible HTTP server: FastAPI routes over one ``Engine`` on its own thread.

=========================  ================================================================
``GET /``                  the chat page (one static HTML file)
``GET /health``            ``{"status": "ok"}`` and the engine's load (503 if it stopped)
``GET /v1/models``         the one model served
``POST /v1/completions``   continue a prompt (a string, token ids, or several)
``POST /v1/chat/completions``  answer a conversation, through the chat template
=========================  ================================================================

A request is checked first (``protocol.py``: a 4xx with OpenAI's error body when it is
wrong), then each prompt goes to the engine thread (``worker.py``), and its outputs come
back on an ``asyncio.Queue``. Streamed (``"stream": true``), each new piece of text goes
out at once as a server-sent event (``data: {json}``, a blank line, and ``data: [DONE]``
at the end); otherwise the whole answer goes out at the end. A client that disconnects
cancels its requests, so their blocks return to the free list.

FastAPI is imported inside ``create_app``: ``import tinyllm`` works without it.
"""

import asyncio
import contextlib
from functools import partial
from importlib import resources

from ..infer.engine import Engine
from .protocol import APIError, ModelCard, parse_chat, parse_completion, read_body
from .replies import Reply
from .responses import DONE, characters_begun, choice, envelope, logprobs_of, sse, usage
from .worker import EngineWorker

DISCONNECT_POLL_SECONDS = 1.0  # how often a non-streamed request checks its client is there


def model_card(model, tokenizer, name, max_batch):
    """The ``ModelCard`` of ``model``: its end-of-text ids from its config and tokenizer."""
    eos = model.config.eos_token_id
    ends = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    special = getattr(tokenizer, "special_tokens", {})
    if "<|endoftext|>" in special:
        ends.append(special["<|endoftext|>"])
    return ModelCard(
        name, tokenizer, model.config.context_length, max_batch, tuple(dict.fromkeys(ends))
    )


def create_app(
    model, tokenizer, *, name="tinyllm", max_batch=32, num_blocks=None, block_size=16,
    dtype="float32",
):  # fmt: skip
    """The FastAPI app serving ``model`` as ``name``; ``app.state.engine`` is its Engine,
    whose forwards run their matmuls in ``dtype``. The engine thread runs while the app
    runs (its lifespan)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

    if model.config.vocab_size > tokenizer.vocab_size:
        raise ValueError(
            f"the model has {model.config.vocab_size} token ids but its tokenizer knows "
            f"{tokenizer.vocab_size}: ids beyond those could not be turned into text"
        )
    engine = Engine(
        model, tokenizer, num_blocks=num_blocks, block_size=block_size, max_batch=max_batch,
        dtype=dtype,
    )  # fmt: skip
    worker = EngineWorker(engine)
    card = model_card(model, tokenizer, name, max_batch)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        worker.start()
        try:
            yield
        finally:
            worker.stop()

    app = FastAPI(title="tinyllm", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.worker, app.state.model_card = engine, worker, card

    class EventStream(StreamingResponse):
        """Server-sent events that cancel the job's requests however the response ends
        (a client gone mid-stream, or before the first event)."""

        def __init__(self, events, submitted):
            super().__init__(events, media_type="text/event-stream")
            self.submitted = submitted

        async def __call__(self, scope, receive, send):
            try:
                await super().__call__(scope, receive, send)
            finally:
                await self.body_iterator.aclose()
                cancel(self.submitted)

    # --- errors: OpenAI's body for every status -------------------------------------------
    @app.exception_handler(APIError)
    async def api_error(request, err):
        return JSONResponse(err.body(), status_code=err.status)

    async def http_error(request, err):  # unknown paths (404), wrong methods (405)
        return JSONResponse(APIError(err.detail, status=err.status_code).body(), err.status_code)

    for status in (404, 405):
        app.add_exception_handler(status, http_error)

    # --- routes ----------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse)
    async def chat_page():
        return resources.files(__package__).joinpath("chat.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health():
        status = "ok" if worker.error is None else f"the engine stopped: {worker.error!r}"
        allocator = engine.cache.allocator
        load = dict(
            status=status, running=len(engine.running), waiting=len(engine.waiting),
            free_blocks=allocator.free_count, num_blocks=allocator.num_blocks,
        )  # fmt: skip
        return JSONResponse(load, status_code=200 if worker.error is None else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [card.describe()]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await answer(request, parse_completion(read_body(await request.body()), card))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await answer(request, parse_chat(read_body(await request.body()), card))

    # --- answering a job -------------------------------------------------------------------
    async def answer(request, job):
        events = asyncio.Queue()
        submitted = []
        try:
            for index, prompt in enumerate(job.prompts):
                submitted.append(worker.submit(prompt, job.params, f"{job.id}-{index}", events))
        except APIError:
            cancel(submitted)
            raise
        if job.stream:
            return EventStream(stream(job, submitted, events), submitted)
        try:
            return await collect(request, job, submitted, events)
        finally:
            cancel(submitted)

    def cancel(submitted):
        for engine_request in submitted:
            if not engine_request.finished:
                worker.cancel(engine_request.id)

    def decode(ids, job):
        return tokenizer.decode(ids, skip_special_tokens=job.params.skip_special_tokens)

    def echo(job, reply, request):
        """Begin ``reply``'s scored tokens with its prompt's (the first unscored: nothing
        precedes it), when logprobs are asked; the prompt's text."""
        if job.params.logprobs is not None:
            scored = zip(request.prompt[1:], request.prompt_logprobs or ())
            rest = [(t, logprob, top) for t, (logprob, top) in scored]
            reply.scored[:0] = [(request.prompt[0], None, None), *rest]
        return decode(request.prompt, job)

    def replies_of(job, submitted):
        """One ``Reply`` per choice, keyed by (engine request, sample index)."""
        params = job.params
        return {
            (r.id, i): Reply(partial(decode, job=job), params.stop_strings, params.stop_token_ids)
            for r in submitted
            for i in range(params.n)
        }

    async def outputs(job, submitted, events):
        """(choice index, Output) for each output of the job, until all requests end."""
        order = {r.id: i for i, r in enumerate(submitted)}
        open_requests = len(submitted)
        while open_requests:
            engine_request, item = await events.get()
            if item is None:
                open_requests -= 1
            elif isinstance(item, Exception):
                raise APIError(f"the engine stopped: {item!r}", status=500)
            else:
                yield order[engine_request.id] * job.params.n + item.index, item

    async def collect(request, job, submitted, events):
        watcher = asyncio.create_task(cancel_on_disconnect(request, submitted))
        replies = replies_of(job, submitted)
        try:
            async for _, output in outputs(job, submitted, events):
                replies[output.request_id, output.index].add(output)
        finally:
            watcher.cancel()
        requests = {r.id: r for r in submitted}
        choices = []
        for index, ((request_id, _), reply) in enumerate(replies.items()):
            prompt = echo(job, reply, requests[request_id]) if job.echo else ""
            logprobs = logprobs_of(job, tokenizer, reply.scored)
            choices.append(choice(job, index, prompt + reply.text, reply.finish_reason,
                                  stream=False, logprobs=logprobs))  # fmt: skip
        tokens = usage(sum(map(len, job.prompts)), sum(len(r.tokens) for r in replies.values()))
        return envelope(job, choices, stream=False, usage=tokens)

    async def cancel_on_disconnect(request, submitted):
        """A whole answer is sent only at the end: poll meanwhile that the client is there."""
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_POLL_SECONDS)
        cancel(submitted)

    async def stream(job, submitted, events):
        replies = replies_of(job, submitted)
        try:
            if job.kind == "chat":  # OpenAI's first chunk of each choice names the role
                for index in range(len(replies)):
                    first = {"index": index, "delta": {"role": "assistant", "content": ""}}
                    first.update(logprobs=None, finish_reason=None)
                    yield sse(envelope(job, [first], stream=True))
            requests = {r.id: r for r in submitted}
            offsets = {}  # choice: where its next token's text begins (a completion's text_offset)

            def unsent_logprobs(index, reply):
                """The logprobs of the tokens ``reply`` has not streamed yet."""
                new = reply.unsent_scored()
                logprobs = logprobs_of(job, tokenizer, new, offsets.get(index, 0))
                if new and logprobs and "text_offset" in logprobs:  # the next chunk's start
                    last = characters_begun(job, tokenizer, new[-1][0])
                    offsets[index] = logprobs["text_offset"][-1] + last
                return logprobs

            async for index, output in outputs(job, submitted, events):
                reply = replies[output.request_id, output.index]
                if job.echo and not reply.tokens:  # the choice's first output: its prompt first
                    prompt = echo(job, reply, requests[output.request_id])
                    piece = choice(job, index, prompt, None, stream=True,
                                   logprobs=unsent_logprobs(index, reply))  # fmt: skip
                    yield sse(envelope(job, [piece], stream=True))
                text = reply.add(output)
                if text or output.finish_reason:
                    piece = choice(job, index, text, output.finish_reason, stream=True,
                                   logprobs=unsent_logprobs(index, reply))  # fmt: skip
                    yield sse(envelope(job, [piece], stream=True))
            if job.include_usage:
                completion = sum(len(r.tokens) for r in replies.values())
                tokens = usage(sum(map(len, job.prompts)), completion)
                yield sse(envelope(job, [], stream=True, usage=tokens))
        except APIError as err:  # the engine failed mid-stream: the error as the last event
            yield sse(err.body())
        yield DONE

    return app
