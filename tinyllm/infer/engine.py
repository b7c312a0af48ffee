"""The serving engine: many requests at once over one paged KV cache (continuous batching).

``generate`` serves one batch from start to end: a batch waits for its longest member, and
a request that arrives meanwhile waits for the whole batch. The engine instead works step by
step, and the batch changes at every step (Orca's iteration-level scheduling, vLLM's
continuous batching):

1. **admit**: waiting requests join while blocks are free and the batch has room; each is
   *prefilled* (its prompt runs through the model once, into the paged cache) and gets its
   first token. The blocks of a prompt seen before (the same full blocks from the start:
   a shared system prompt, say) are reused instead of recomputed; ``n`` samples of one
   prompt share its blocks.
2. **decode**: every running sequence gets one more token from *one* batched forward.
   When the free blocks run out, the sequence admitted last is *preempted*: its blocks are
   freed and it waits to be recomputed later (prefilled with its tokens so far), rather
   than anything crashing.
3. **retire**: a sequence that emitted a stop token or stop string, reached its
   ``max_tokens`` or the context, or was cancelled, leaves at once, and its blocks return
   to the free list for the next request.

Each request has its own sampling settings, stops and seed (``SamplingParams``): a request
gets the tokens ``generate`` gives it alone - greedy or with the same seed. Each step's
outputs also go to the request's ``events`` queue (for a server thread to stream), ending
with ``None``.

>>> from tinyllm.models import Transformer, get_preset
>>> model = Transformer(get_preset("tiny", n_layer=1, d_model=16, context_length=32))
>>> engine = Engine(model, num_blocks=8, block_size=4)
>>> requests = [engine.add_request([1, 2, 3], SamplingParams(max_tokens=5, temperature=0))
...             for _ in range(2)]
>>> while engine.has_work():
...     _ = engine.step()
>>> [len(r.sequences[0].new_tokens) for r in requests], engine.cache.blocks_in_use
([5, 5], 0)
"""

import itertools
import math
import threading
from collections import deque

import numpy as np

from ..autograd import to_numpy
from ..backend.precision import check_compute_dtype, precision
from ..nn.module import inference
from ..nn.paged_kv_cache import PagedKVCache
from .request import Output, Request, SamplingParams, Sequence, token_logprobs
from .sampling import _is_integer, sample_next


class Engine:
    """Continuous batching of ``model`` over a ``PagedKVCache`` of ``num_blocks`` blocks of
    ``block_size`` positions; at most ``max_batch`` sequences run at once. ``tokenizer``
    (optional) decodes text pieces and stop strings. ``prefix_caching`` reuses the blocks
    of prompts seen before. ``dtype`` is the compute dtype of every forward ("float32",
    "bfloat16" or "float16", as in ``generate``); it is set around each forward rather
    than by the caller because the engine steps on a thread of its own when it serves,
    and a ``precision`` block holds in its own thread only. See the module doc."""

    def __init__(
        self, model, tokenizer=None, *, num_blocks=None, block_size=16, max_batch=32,
        prefix_caching=True, dtype="float32",
    ):  # fmt: skip
        config = model.config
        check_compute_dtype(model.token_embedding.weight.backend, dtype)  # before any request
        if not (_is_integer(max_batch) and max_batch >= 1):
            raise ValueError(f"Engine: max_batch={max_batch!r}: expected an integer >= 1")
        per_sequence = math.ceil(config.context_length / block_size)
        if num_blocks is None:  # room for half the batch at full length: paging does the rest
            num_blocks = max(per_sequence * max(max_batch // 2, 1), per_sequence)
        if num_blocks < per_sequence:
            raise ValueError(
                f"Engine: num_blocks={num_blocks} of {block_size} positions cannot hold one "
                f"sequence of the context length {config.context_length}: need at least "
                f"{per_sequence}"
            )
        weight = model.token_embedding.weight
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.prefix_caching, self.dtype = prefix_caching, dtype
        self.cache = PagedKVCache.for_model(
            config, num_blocks, block_size, dtype=weight.dtype, backend=weight.backend
        )
        self.waiting = deque()  # Requests not yet started, and preempted Sequences
        self.running = []  # Sequences with a pending token, in the order they were admitted
        self.requests = {}  # id -> Request, until finished
        self.lock = threading.RLock()  # add_request / cancel may come from other threads
        self._ids = itertools.count()
        self.counts = dict(steps=0, prefilled_tokens=0, reused_tokens=0, preemptions=0)

    # --- requests -------------------------------------------------------------------------
    def add_request(self, prompt, params=None, request_id=None):
        """Queue ``prompt`` (a non-empty list of token ids) to be generated by ``params``."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params={params!r}: expected a SamplingParams")
        config = self.model.config
        prompt = list(prompt)
        if not prompt or not all(_is_integer(t) and 0 <= t < config.vocab_size for t in prompt):
            raise ValueError(
                f"Engine: the prompt must be a non-empty list of token ids in "
                f"0..{config.vocab_size - 1}"
            )
        if len(prompt) + params.max_tokens > config.context_length:
            raise ValueError(
                f"Engine: a prompt of {len(prompt)} tokens and max_tokens={params.max_tokens} "
                f"run past the context of {config.context_length} tokens"
            )
        if params.stop_strings and self.tokenizer is None:
            raise ValueError("Engine: stop_strings need a tokenizer to read the text")
        request_id = f"req-{next(self._ids)}" if request_id is None else request_id
        request = Request(request_id, prompt, params)
        with self.lock:
            if request_id in self.requests:
                raise ValueError(f"Engine: request id {request_id!r} is in use")
            self.requests[request_id] = request
            self.waiting.append(request)
        return request

    def cancel(self, request_id):
        """Stop the request: its sequences finish ("cancelled") at the next step."""
        with self.lock:
            request = self.requests.get(request_id)
            if request is not None:
                request.cancelled = True

    def has_work(self):
        with self.lock:
            return bool(self.waiting or self.running)

    # --- one step --------------------------------------------------------------------------
    def step(self):
        """Admit what fits, decode one token for every running sequence, retire the
        finished; returns this step's ``Output``s."""
        outputs = self._cancel()
        outputs += self._admit()
        outputs += self._decode()
        self.counts["steps"] += 1
        return outputs

    def _cancel(self):
        """Finish the sequences of cancelled requests, waiting or running."""
        outputs = []
        with self.lock:
            for item in list(self.waiting):
                request = item if isinstance(item, Request) else item.request
                if not request.cancelled:
                    continue
                self.waiting.remove(item)
                if isinstance(item, Request):  # never started: its samples end unstarted
                    request.sequences = [
                        Sequence(None, request, i, None) for i in range(request.params.n)
                    ]
                    outputs += [self._finish(s, "cancelled") for s in request.sequences]
                else:  # preempted: it holds no blocks
                    outputs.append(self._finish(item, "cancelled"))
        for seq in [s for s in self.running if s.request.cancelled]:
            outputs.append(self._finish(seq, "cancelled"))
        return outputs

    def _admit(self):
        """Prefill waiting work, oldest first, while the batch has room and blocks last."""
        outputs = []
        while True:
            with self.lock:
                if not self.waiting:
                    break
                item = self.waiting[0]
                fresh = isinstance(item, Request)
                n = item.params.n if fresh else 1
                if len(self.running) + n > self.max_batch:
                    break
                seq = Sequence(next(self._ids), item, 0, self._decode_text) if fresh else item
                if not self._start(seq):
                    if self.running:
                        break  # wait for blocks to come back
                    raise MemoryError("Engine: the cache cannot hold one sequence")  # checked
                self.waiting.popleft()
            new = seq.tokens[self.cache.lengths[seq.id] :]  # what earlier prompts did not cover
            k = seq.request.params.prompt_logprobs
            logits = self._forward([seq], [new], every=fresh and k is not None)  # (1, [T,] V)
            if logits.ndim == 3:  # position t's logits score prompt token t + 1
                steps, logits = logits[0, :-1], logits[:, -1]
                item.prompt_logprobs = tuple(
                    token_logprobs(row, token, k) for row, token in zip(steps, new[1:])
                )
            self.counts["prefilled_tokens"] += len(new)
            if self.prefix_caching:  # later prompts with the same start reuse these blocks
                self.cache.register_full_blocks(seq.id, seq.tokens)
            group = [seq]
            if fresh:
                item.sequences = group
                for index in range(1, n):  # more samples of the prompt: its blocks, shared
                    sample = Sequence(next(self._ids), item, index, self._decode_text)
                    self.cache.fork(seq.id, sample.id)
                    group.append(sample)  # (the request's own list)
            if seq.request.params.max_tokens == 0:  # only the prompt's logprobs were asked for
                outputs += [self._finish(sample, "length") for sample in group]
                continue
            self.running += group
            outputs += self._sample(group, np.repeat(logits, len(group), axis=0))
        return outputs

    def _start(self, seq):
        """Give ``seq`` its blocks: reused ones for a prompt prefix seen before, new ones for
        the rest. False, with nothing held, when too few blocks are free."""
        whole = seq.request.params.prompt_logprobs is not None  # every prompt position's logits
        prefix = self.cache.match_prefix(seq.tokens) if self.prefix_caching and not whole else []
        self.cache.add(seq.id, prefix)
        if not self.cache.reserve(seq.id, len(seq.tokens) - self.cache.lengths[seq.id]):
            self.cache.free(seq.id)
            return False
        self.counts["reused_tokens"] += len(prefix) * self.cache.block_size
        return True

    def _decode(self):
        """One batched forward over the pending token of every running sequence."""
        for seq in list(self.running):
            while seq in self.running and not self.cache.reserve(seq.id, 1):
                self._preempt()
        if not self.running:
            return []
        batch = list(self.running)
        logits = self._forward(batch, [[seq.tokens[-1]] for seq in batch])
        return self._sample(batch, logits)

    def _preempt(self):
        """Free the blocks of the sequence admitted last; it waits to be recomputed."""
        seq = self.running.pop()
        self.cache.free(seq.id)
        self.counts["preemptions"] += 1
        with self.lock:
            self.waiting.appendleft(seq)

    def _forward(self, batch, ids, every=False):
        """The next-token logits (B, V) after feeding ``ids`` (one list per sequence, of one
        length) to the sequences of ``batch``; ``every``: at every position, (B, T, V)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(len(batch), -1)  # (B, T)
        with inference(self.model), precision(self.dtype):
            logits, _ = self.model(ids, cache=self.cache.batch([s.id for s in batch]))
        return to_numpy(logits.data if every else logits.data[:, -1, :])

    def _sample(self, batch, logits):
        """Each sequence's next token from its row of ``logits`` (B, V); stops checked."""
        outputs = []
        for seq, row in zip(batch, logits):
            rules = seq.request.params.rules()
            previous = np.asarray(seq.tokens)[None]
            token = int(sample_next(row[None], **rules, previous_ids=previous, rng=seq.rng)[0])
            seq.tokens.append(token)
            step = seq.stops.step(np.asarray(seq.tokens)[None])
            text = step[1][0] if self.tokenizer is not None else ""
            reason = None
            if seq.stops.stopped[0]:
                reason = "stop"
            elif len(seq.new_tokens) >= seq.request.params.max_tokens or (
                len(seq.tokens) >= self.model.config.context_length
            ):
                reason = "length"
            output = Output(seq.request.id, seq.index, token, text, reason)
            if seq.request.params.logprobs is not None:
                output.logprob, output.top_logprobs = token_logprobs(
                    row, token, seq.request.params.logprobs
                )
            seq.request.events.put(output)
            outputs.append(output)
            if reason:
                self._finish(seq, reason, report=False)
        return outputs

    def _finish(self, seq, reason, *, report=True):
        """Retire ``seq``: its blocks back to the pool, its request closed once all are done."""
        seq.finish_reason = reason
        if seq in self.running:
            self.running.remove(seq)
        if seq.id in self.cache.block_tables:
            if self.prefix_caching:
                self.cache.register_full_blocks(seq.id, seq.tokens)
            self.cache.free(seq.id)
        output = Output(seq.request.id, seq.index, None, "", reason)
        if report:
            seq.request.events.put(output)
        request = seq.request
        if request.finished:
            request.events.put(None)
            with self.lock:
                self.requests.pop(request.id, None)
        return output

    def _decode_text(self, ids, skip):
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=skip)

    # --- measures ----------------------------------------------------------------------------
    def memory(self):
        """Positions held now: ``used`` (written), ``blocks`` (in blocks in use, each
        counted once however many share it), ``contiguous`` (what a cache reserving
        prompt + max_tokens per running sequence would hold), ``waste`` (the unwritten share
        of the blocks in use)."""
        used = sum(self.cache.lengths[s.id] for s in self.running)
        blocks = self.cache.blocks_in_use * self.cache.block_size
        contiguous = sum(len(s.request.prompt) + s.request.params.max_tokens for s in self.running)
        shared = int((self.cache.allocator.ref_counts > 1).sum())
        waste = 1 - min(used, blocks) / blocks if blocks else 0.0
        return dict(
            used=used, blocks=blocks, contiguous=contiguous, shared_blocks=shared, waste=waste
        )

    def generate(self, prompts, params=None):
        """Run ``prompts`` (lists of token ids) to the end; each request's samples' new
        tokens: a list (per prompt) of lists (per sample)."""
        requests = [self.add_request(prompt, params) for prompt in prompts]
        while self.has_work():
            self.step()
        return [[seq.new_tokens for seq in request.sequences] for request in requests]
