"""Reference answers for exercises/ex07_serving.py: tinyllm's paged cache and serving engine.

The exercises take and return plain values (block ids, NumPy arrays, dicts), the library
works on a pool, block tables and an engine: the glue builds the library's objects around
the given values, calls the library and reads the answer off. ``BlockAllocator`` is the
library's own (tinyllm/nn/paged_kv_cache.py); the slot of a position and the paged write
and gather are ``PagedBatch``'s; one scheduler step is one ``Engine.step``
(tinyllm/infer/engine.py) of an engine set up in the given state - never a second copy.
"""

import numpy as np

from tinyllm import Tensor, no_grad
from tinyllm.infer.engine import Engine, Request, SamplingParams, Sequence
from tinyllm.models import Transformer, get_preset
from tinyllm.nn.paged_kv_cache import BlockAllocator, PagedKVCache

__all__ = ["BlockAllocator", "block_slot", "paged_update", "schedule_step"]


def _one_sequence(pool_shape, block_table, length, dtype=np.float32):
    """A one-layer PagedKVCache holding sequence 0 with ``block_table`` and ``length``."""
    num_blocks, block_size, n_kv_head, head_dim = pool_shape
    cache = PagedKVCache(1, n_kv_head, head_dim, num_blocks, block_size, dtype=dtype)
    cache.block_tables[0], cache.lengths[0] = list(block_table), length
    return cache


def block_slot(block_table, position, block_size):
    num_blocks = max((int(b) for b in block_table), default=0) + 1
    batch = _one_sequence((num_blocks, block_size, 1, 1), block_table, position).batch([0])
    batch._prepare(1)  # where one new position at `position` goes (raises past the table)
    block, offset = divmod(int(batch._slots[0]), block_size)
    return block, offset


def paged_update(pool, block_table, length, new):
    cache = _one_sequence(pool.shape, block_table, length, dtype=pool.dtype)
    cache.keys[0] = pool  # the caller's pool: PagedBatch writes into it in place
    new = Tensor(np.asarray(new, dtype=pool.dtype)[None])  # (1, H, T, D)
    with no_grad():
        keys, _ = cache.batch([0]).update(0, new, new)  # (1, H, S, D), S a whole number of blocks
    return keys.data[0, :, : length + new.shape[2]]  # (H, length + T, D)


class _Recorded(Engine):
    """An engine that notes whom it preempts."""

    def _preempt(self):
        self.preempted.append(self.running[-1].request.id)
        super()._preempt()


def _sequence(engine, item):
    prompt = [0] * (item["tokens"] - item["generated"])
    request = Request(item["id"], prompt, SamplingParams(item["max_tokens"], temperature=0))
    seq = Sequence(next(engine._ids), request, 0, engine._decode_text)
    seq.tokens = [0] * item["tokens"]
    request.sequences = [seq]
    engine.requests[request.id] = request
    return seq


def _state(item):
    if isinstance(item, Request):  # not started: its prompt alone
        return dict(id=item.id, tokens=len(item.prompt), generated=0,
                    max_tokens=item.params.max_tokens)  # fmt: skip
    return dict(id=item.request.id, tokens=len(item.tokens), generated=len(item.new_tokens),
                max_tokens=item.request.params.max_tokens)  # fmt: skip


def schedule_step(waiting, running, free_blocks, block_size, max_batch):
    # An engine in the given state: a one-layer model whose context fits every request, a
    # pool of the blocks held and free (topped up to the engine's minimum, the extra held by
    # a ballast sequence), the queues rebuilt with their token counts; then one real step.
    everyone = [*waiting, *running]
    context = max([s["tokens"] - s["generated"] + s["max_tokens"] for s in everyone] + [1])
    held = sum(-(-(s["tokens"] - 1) // block_size) for s in running)
    num_blocks = max(held + free_blocks, -(-context // block_size), 1)
    config = get_preset(
        "tiny", vocab_size=2, n_layer=1, n_head=1, d_model=4, context_length=context
    )
    engine = _Recorded(
        Transformer(config), num_blocks=num_blocks, block_size=block_size, max_batch=max_batch,
        prefix_caching=False,
    )  # fmt: skip
    engine.preempted = []
    ballast = num_blocks - held - free_blocks  # blocks the engine's minimum adds: held aside
    if ballast:
        engine.cache.add("ballast")
        engine.cache.reserve("ballast", ballast * block_size)
    for item in waiting:
        if item["generated"] == 0:
            params = SamplingParams(item["max_tokens"], temperature=0)
            engine.add_request([0] * item["tokens"], params, request_id=item["id"])
        else:
            engine.waiting.append(_sequence(engine, item))  # preempted earlier
    for item in running:
        seq = _sequence(engine, item)
        engine.cache.add(seq.id)
        engine.cache.reserve(seq.id, item["tokens"] - 1)  # its newest token is pending
        engine.cache.lengths[seq.id] = item["tokens"] - 1
        engine.running.append(seq)
    outputs = engine.step()
    waiting_ids = [item["id"] for item in waiting]
    admitted = [o.request_id for o in outputs if o.request_id in waiting_ids]
    return dict(
        admitted=list(dict.fromkeys(admitted)),  # first token of each, in order
        preempted=engine.preempted,
        retired=[o.request_id for o in outputs if o.finish_reason],
        waiting=[_state(item) for item in engine.waiting],
        running=[_state(seq) for seq in engine.running],
        free_blocks=engine.cache.allocator.free_count,
    )
