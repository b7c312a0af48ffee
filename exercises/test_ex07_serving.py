"""Grading tests for exercises/ex07_serving.py (lesson 07: serving).

Answers come from small cases worked out by hand in the comments, from tinyllm's own
``BlockAllocator`` and ``PagedKVCache`` run through the same operations, from tinyllm's
serving ``Engine`` running on your allocator (it must give the same tokens and free every
block), from a real model decoding a batch through your paged update (it must give the
logits of each sequence alone on a contiguous cache), and from the ``Engine``'s own steps,
which your scheduler must predict one by one.
"""

import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor
from tinyllm.infer import KVCache
from tinyllm.infer.engine import Engine, Request, SamplingParams
from tinyllm.models import ModelConfig, Transformer
from tinyllm.nn import paged_kv_cache
from tinyllm.nn.paged_kv_cache import PagedBatch, PagedKVCache

EX = "ex07_serving"

LLAMA = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False,
    tie_embeddings=False,
)  # fmt: skip
BASE = dict(vocab_size=61, context_length=64, d_model=32, n_layer=2, n_head=4, init_std=0.3)
MODELS = {
    "gpt2": {},  # learned positions, multi-head attention
    "llama-gqa": {**LLAMA, "n_kv_head": 2},  # RoPE, 2 key/value heads for 4 query heads
}


def model_of(case="llama-gqa", seed=0):
    return Transformer(ModelConfig(**{**BASE, **MODELS[case]}), seed=seed)


def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 61, n).tolist() for n in lengths]


# --- 7.1 the block allocator ------------------------------------------------------------------
@pytest.mark.exercise("7.1", points=1)
def test_block_allocator_by_hand(exercise):
    """BlockAllocator: oldest free first, holders counted, freed blocks queue at the back"""
    ex = exercise(EX)
    allocator = ex.BlockAllocator(4)
    assert [allocator.allocate() for _ in range(3)] == [0, 1, 2]
    assert allocator.ref_counts.tolist() == [1, 1, 1, 0] and list(allocator.free_blocks) == [3]
    allocator.share(1)  # a second sequence reads block 1 (a forked sample, say)
    assert allocator.ref_counts.tolist() == [1, 2, 1, 0]
    allocator.free(1)  # one holder left: not free
    assert allocator.ref_counts[1] == 1 and list(allocator.free_blocks) == [3]
    allocator.free(0)
    allocator.free(1)
    assert list(allocator.free_blocks) == [3, 0, 1] and allocator.free_count == 3
    assert allocator.allocate() == 3  # the one that was free longest, then those freed
    assert allocator.allocate() == 0
    # A freed block shared again (a cached prefix found by its hash) leaves the free list.
    allocator.share(1)
    assert list(allocator.free_blocks) == [] and allocator.ref_counts.tolist() == [1, 1, 1, 1]


@pytest.mark.exercise("7.1", points=1)
def test_block_allocator_errors(exercise):
    """BlockAllocator: MemoryError when nothing is free, ValueError naming an unheld block"""
    ex = exercise(EX)
    allocator = ex.BlockAllocator(8)
    blocks = [allocator.allocate() for _ in range(8)]
    with pytest.raises(MemoryError):
        allocator.allocate()
    assert allocator.ref_counts.tolist() == [1] * 8 and allocator.free_count == 0
    allocator.free(blocks[5])
    with pytest.raises(ValueError, match=r"\b5\b"):
        allocator.free(5)  # nobody holds block 5 any more
    assert allocator.ref_counts[5] == 0 and list(allocator.free_blocks) == [5]  # unchanged
    assert allocator.allocate() == 5


def apply(allocator, op, block):
    """Run one operation; return what it gave, or the type of error it raised."""
    try:
        return getattr(allocator, op)(*([] if op == "allocate" else [block]))
    except (MemoryError, ValueError) as error:
        return type(error)


@pytest.mark.exercise("7.1", points=2)
def test_block_allocator_matches_tinyllms(exercise):
    """BlockAllocator: tinyllm's, through 600 random allocations, shares and frees"""
    ex = exercise(EX)
    rng = np.random.default_rng(0)
    for num_blocks in (1, 5, 12):
        yours, library = ex.BlockAllocator(num_blocks), paged_kv_cache.BlockAllocator(num_blocks)
        for _ in range(200):
            op = rng.choice(["allocate", "allocate", "share", "free", "free"])
            block = int(rng.integers(0, num_blocks))
            want = apply(library, op, block)
            got = apply(yours, op, block)
            assert got == want, f"{op}({block}): {got!r}, expected {want!r}"
            assert np.asarray(yours.ref_counts).tolist() == library.ref_counts.tolist()
            assert list(yours.free_blocks) == list(library.free_blocks)


@pytest.mark.exercise("7.1", points=1)
def test_the_engine_runs_on_your_allocator(exercise):
    """BlockAllocator: the serving Engine on it - shared samples, copy on write, preemption"""
    ex = exercise(EX)
    model = model_of()
    prompts = prompts_of([10, 8, 8, 8], seed=2)
    params = [SamplingParams(max_tokens=6, temperature=1.0, seed=3, n=3)] + [
        SamplingParams(max_tokens=20, temperature=0)
    ] * 3  # three samples of one prompt; then more than 16 blocks of 4 hold at once

    def run(engine):
        requests = [engine.add_request(p, s) for p, s in zip(prompts, params)]
        shared = 0
        while engine.has_work():
            engine.step()
            shared = max(shared, engine.memory()["shared_blocks"])
        return [[seq.new_tokens for seq in r.sequences] for r in requests], shared

    library = Engine(model, num_blocks=16, block_size=4, max_batch=8, prefix_caching=False)
    engine = Engine(model, num_blocks=16, block_size=4, max_batch=8, prefix_caching=False)
    engine.cache.allocator = ex.BlockAllocator(16)
    (want, want_shared), (got, got_shared) = run(library), run(engine)
    assert library.counts["preemptions"] > 0 and want_shared > 0  # a real test
    assert got == want and got_shared == want_shared
    assert engine.counts["preemptions"] == library.counts["preemptions"]
    assert engine.cache.allocator.free_count == 16 and not engine.cache.block_tables


# --- 7.2 block tables -------------------------------------------------------------------------
@pytest.mark.exercise("7.2", points=1)
def test_block_slot_by_hand(exercise):
    """block_slot: table[position // block_size], position % block_size"""
    ex = exercise(EX)
    table = [7, 2, 5]
    assert tuple(ex.block_slot(table, 0, 4)) == (7, 0)
    assert tuple(ex.block_slot(table, 5, 4)) == (2, 1)
    assert tuple(ex.block_slot(table, 11, 4)) == (5, 3)
    assert tuple(ex.block_slot(table, 11, 6)) == (2, 5)  # other block sizes, other slots
    assert tuple(ex.block_slot([0], 0, 1)) == (0, 0)
    with pytest.raises(ValueError):
        ex.block_slot(table, 12, 4)  # three blocks of 4 hold positions 0 .. 11
    with pytest.raises(ValueError):
        ex.block_slot([], 0, 16)


@pytest.mark.exercise("7.2", points=1)
def test_paged_update_by_hand(exercise):
    """paged_update: writes in place through the table, gathers the sequence's keys"""
    ex = exercise(EX)
    pool = np.zeros((4, 2, 1, 1))
    out = ex.paged_update(pool, [3, 1], 0, np.array([1.0, 2.0, 3.0]).reshape(1, 3, 1))
    np.testing.assert_array_equal(np.asarray(out), [[[1], [2], [3]]])
    np.testing.assert_array_equal(pool[:, :, 0, 0], [[0, 0], [3, 0], [0, 0], [1, 2]])
    # One decode step at length 3: position 3 is slot 1 of block 1.
    out = ex.paged_update(pool, [3, 1], 3, np.full((1, 1, 1), 4.0))
    np.testing.assert_array_equal(np.asarray(out)[0, :, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(pool[:, :, 0, 0], [[0, 0], [3, 4], [0, 0], [1, 2]])
    # Two heads of two features: the pool holds (block_size, H, D) per block.
    pool = np.zeros((3, 2, 2, 2))
    new = np.arange(12.0).reshape(2, 3, 2)  # (H, T, D)
    out = ex.paged_update(pool, [2, 0], 0, new)
    np.testing.assert_array_equal(np.asarray(out), new)
    np.testing.assert_array_equal(pool[2, 1], new[:, 1])  # position 1: both heads
    np.testing.assert_array_equal(pool[0, 0], new[:, 2])
    np.testing.assert_array_equal(pool[1], 0)  # not this sequence's block
    with pytest.raises(ValueError):
        ex.paged_update(pool, [2, 0], 3, np.ones((2, 2, 2)))  # positions 3, 4: one block short


def scattered_cache(lengths, block_size=4, H=2, D=3):
    """A one-layer PagedKVCache whose sequences took their blocks turn by turn, after another
    sequence held the first three blocks and gave them back: the tables are scattered over
    the pool, and some run backwards. Nothing is written yet (every length is 0)."""
    num_blocks = sum(-(-n // block_size) for n in lengths) + 1  # the freed blocks get used
    cache = PagedKVCache(1, H, D, num_blocks, block_size)
    cache.add("gone")
    assert cache.reserve("gone", 3 * block_size)
    for seq in range(len(lengths)):
        cache.add(seq)
    for step in range(max(lengths)):
        for seq, n in enumerate(lengths):
            if step < n:
                assert cache.reserve(seq, 1)
                cache.lengths[seq] += 1  # counted as written: only the tables matter here
        if step == 3:
            cache.free("gone")
    for seq in range(len(lengths)):
        cache.lengths[seq] = 0
    tables = list(cache.block_tables.values())
    assert any(sorted(table) != table for table in tables)
    return cache


@pytest.mark.exercise("7.2", points=1)
def test_block_slot_finds_what_tinyllms_cache_wrote(exercise):
    """block_slot: each position's key where PagedKVCache wrote it, through scattered tables"""
    ex = exercise(EX)
    lengths = [9, 14, 3]
    cache = scattered_cache(lengths)
    for seq, n in enumerate(lengths):  # key of position p of sequence s: 100 s + p everywhere
        batch = cache.batch([seq])
        keys = np.broadcast_to(100.0 * seq + np.arange(n)[None, :, None], (2, n, 3))
        with tinyllm.no_grad():
            batch.update(0, Tensor(keys[None].astype(np.float32)), Tensor(keys[None]))
        batch.advance(n)
    pool = cache.keys[0]
    for seq, n in enumerate(lengths):
        table = cache.block_tables[seq]
        for position in range(n):
            block, offset = ex.block_slot(table, position, cache.block_size)
            np.testing.assert_array_equal(pool[block, offset], 100.0 * seq + position)


@pytest.mark.exercise("7.2", points=1)
def test_paged_update_matches_tinyllms_cache(exercise):
    """paged_update: PagedKVCache's writes and gathers, three sequences in one pool"""
    ex = exercise(EX)
    rng = np.random.default_rng(1)
    lengths = [11, 17, 6]
    cache = scattered_cache(lengths)
    pool = cache.keys[0].copy()  # yours, beside the library's
    written = [0, 0, 0]
    for seq, T in [(0, 5), (1, 1), (2, 6), (1, 9), (0, 1), (0, 4), (1, 3), (0, 1), (1, 4)]:
        new = rng.standard_normal((2, T, 3)).astype(np.float32)
        batch = cache.batch([seq])
        with tinyllm.no_grad():
            want, _ = batch.update(0, Tensor(new[None]), Tensor(new[None]))
        batch.advance(T)
        got = ex.paged_update(pool, cache.block_tables[seq], written[seq], new)
        written[seq] += T
        np.testing.assert_array_equal(np.asarray(got), want.numpy()[0, :, : written[seq]])
        np.testing.assert_array_equal(pool, cache.keys[0])  # the whole pool, every block
    assert written == lengths


class YourPagedBatch(PagedBatch):
    """tinyllm's PagedBatch with ``update`` done row by row by your ``paged_update``: the
    model calls it in every layer, and reads ``length`` and ``visible`` itself."""

    def __init__(self, paged_update, cache, seq_ids):
        super().__init__(cache, seq_ids)
        self.your_update = paged_update

    def update(self, layer, k_new, v_new):
        B, H, T, D = k_new.shape
        if self._tables is None:
            self._prepare(T)  # the tables ``visible`` masks by
        S = self._tables.shape[1] * self.cache.block_size
        gathered = []
        for pools, new in ((self.cache.keys, k_new.numpy()), (self.cache.values, v_new.numpy())):
            out = np.zeros((B, H, S, D), dtype=new.dtype)  # rows padded: ``visible`` hides it
            for row, seq in enumerate(self.seq_ids):
                table, length = self.cache.block_tables[seq], int(self.length[row])
                out[row, :, : length + T] = self.your_update(pools[layer], table, length, new[row])
            gathered.append(Tensor(out))
        return gathered[0], gathered[1]


@pytest.mark.exercise("7.2", points=2)
@pytest.mark.parametrize("case", MODELS)
def test_a_batch_decoding_through_your_paged_update_equals_each_alone(exercise, case):
    """paged_update: a model decoding three sequences through it = each on its own cache"""
    ex = exercise(EX)
    model = model_of(case)
    prompts = [np.array(p) for p in prompts_of([5, 9, 2], seed=1)]
    paged = PagedKVCache.for_model(model.config, num_blocks=24, block_size=4)
    alone = [KVCache.for_model(model.config, 1) for _ in prompts]

    def logits_of(ids, cache):
        with tinyllm.no_grad():
            logits, _ = model(np.asarray(ids), cache=cache)
        return logits.numpy()

    tokens = []
    for i, prompt in enumerate(prompts):  # prefill one at a time, as the engine does
        paged.add(i)
        assert paged.reserve(i, len(prompt))
        ours = logits_of(prompt[None], YourPagedBatch(ex.paged_update, paged, [i]))
        np.testing.assert_allclose(ours, logits_of(prompt[None], alone[i]), atol=1e-5)
        tokens.append([int(ours[0, -1].argmax())])
    for _ in range(12):  # decode all three together: each row at its own length
        for i in range(3):
            assert paged.reserve(i, 1)
        ours = logits_of(
            [[t[-1]] for t in tokens], YourPagedBatch(ex.paged_update, paged, [0, 1, 2])
        )
        for i in range(3):
            expected = logits_of([[tokens[i][-1]]], alone[i])[0]
            np.testing.assert_allclose(ours[i], expected, atol=1e-5, rtol=0)
            tokens[i].append(int(ours[i, -1].argmax()))
    assert len({tuple(t) for t in tokens}) == 3  # three different continuations


# --- 7.3 one scheduler step -------------------------------------------------------------------
def req(id, tokens, generated=0, max_tokens=8):
    return dict(id=id, tokens=tokens, generated=generated, max_tokens=max_tokens)


def step_of(ex, waiting, running, free_blocks, block_size=4, max_batch=4):
    """Your schedule_step, checked not to change its arguments; its result as plain lists."""
    before = repr((waiting, running))
    result = ex.schedule_step(waiting, running, free_blocks, block_size, max_batch)
    assert repr((waiting, running)) == before, "schedule_step changed its arguments"
    return {key: list(value) if key != "free_blocks" else value for key, value in result.items()}


@pytest.mark.exercise("7.3", points=1)
def test_schedule_step_admits_first_come_first_served(exercise):
    """schedule_step: admission stops at max_batch, or at a head that does not fit"""
    ex = exercise(EX)
    # The docstring's case: a (5 tokens) takes 2 blocks; b (9 tokens) needs 3 of the 2 left.
    out = step_of(ex, [req("a", 5, max_tokens=3), req("b", 9, max_tokens=3)], [], 4)
    assert out["admitted"] == ["a"] and out["preempted"] == [] and out["retired"] == []
    assert out["running"] == [req("a", 7, 2, 3)] and out["waiting"] == [req("b", 9, 0, 3)]
    assert out["free_blocks"] == 2
    # c (2 tokens) would fit behind b, but does not jump the queue.
    out = step_of(ex, [req("b", 9), req("c", 2)], [req("a", 6, 1)], 2)
    assert out["admitted"] == [] and [r["id"] for r in out["waiting"]] == ["b", "c"]
    assert out["running"] == [req("a", 7, 2)] and out["free_blocks"] == 2
    # max_batch 2 with one running: one joins. Position 4 of the newcomer (4 tokens) opens
    # its second block in the decode.
    out = step_of(ex, [req("d", 4), req("e", 1)], [req("a", 6, 1)], 10, max_batch=2)
    assert out["admitted"] == ["d"] and [r["id"] for r in out["waiting"]] == ["e"]
    assert out["running"] == [req("a", 7, 2), req("d", 6, 2)] and out["free_blocks"] == 8
    # A preempted sequence waits with its tokens and is prefilled with all of them: 12
    # tokens in 3 blocks; its decode writes position 12, which opens a 4th.
    out = step_of(ex, [req("p", 12, 5)], [], 4)
    assert out["admitted"] == ["p"] and out["running"] == [req("p", 14, 7)]
    assert out["waiting"] == [] and out["free_blocks"] == 0


@pytest.mark.exercise("7.3", points=1)
def test_schedule_step_preempts_the_last_admitted(exercise):
    """schedule_step: a decode without a free block preempts the last running sequence"""
    ex = exercise(EX)
    # x (9 tokens: 8 cached, 2 blocks) writes position 8: a new block, none free. y, admitted
    # after x, gives back its block and goes to the front of waiting; x takes the block.
    out = step_of(ex, [req("w", 3)], [req("x", 9, 2), req("y", 5, 1)], 0)
    assert out["preempted"] == ["y"] and out["admitted"] == []
    assert out["running"] == [req("x", 10, 3)]
    assert out["waiting"] == [req("y", 5, 1), req("w", 3)] and out["free_blocks"] == 0
    # z makes room for x; then y needs a block too and, last now, preempts itself. The two
    # keep their order (the order they were admitted in) at the front of waiting.
    running = [req("x", 9, 2), req("y", 5, 1), req("z", 2, 1)]
    out = step_of(ex, [req("w", 3)], running, 0, max_batch=3)
    assert out["preempted"] == ["z", "y"] and out["running"] == [req("x", 10, 3)]
    assert [r["id"] for r in out["waiting"]] == ["y", "z", "w"] and out["free_blocks"] == 1
    # The last running sequence needs a block, none is free: it preempts itself.
    out = step_of(ex, [], [req("x", 6, 1), req("y", 9, 2)], 0)
    assert out["preempted"] == ["y"] and out["running"] == [req("x", 7, 2)]
    assert out["waiting"] == [req("y", 9, 2)] and out["free_blocks"] == 2
    # Admitted, then preempted in the same step: its prefill fit, its first decode did not.
    out = step_of(ex, [req("p", 12, 5)], [], 3)
    assert out["admitted"] == ["p"] and out["preempted"] == ["p"] and out["running"] == []
    assert out["waiting"] == [req("p", 13, 6)] and out["free_blocks"] == 3


@pytest.mark.exercise("7.3", points=1)
def test_schedule_step_retires_and_cannot_fit(exercise):
    """schedule_step: retiring at max_tokens (even at the prefill), and a request that never fits"""
    ex = exercise(EX)
    # q needs one token: it retires at its prefill, and r takes the blocks it gave back.
    out = step_of(ex, [req("q", 8, 0, 1), req("r", 7, 0, 4)], [], 2)
    assert out["admitted"] == ["q", "r"] and out["retired"] == ["q"]
    assert out["running"] == [req("r", 9, 2, 4)] and out["free_blocks"] == 0
    # a and c generate their last token this step; b does not.
    running = [req("a", 6, 3, 4), req("b", 6, 1, 4), req("c", 3, 2, 3)]
    out = step_of(ex, [], running, 1)
    assert out["retired"] == ["a", "c"] and out["running"] == [req("b", 7, 2, 4)]
    assert out["free_blocks"] == 1 + 2 + 1  # a's two blocks, c's one
    # Nothing is running and the head needs 3 blocks of the 2 there are: it can never run.
    with pytest.raises(MemoryError):
        ex.schedule_step([req("big", 9)], [], 2, 4, 4)


def snapshot(engine):
    """The engine's queues and free blocks, as schedule_step takes them."""

    def state(item):
        if isinstance(item, Request):
            return req(item.id, len(item.prompt), 0, item.params.max_tokens)
        return req(
            item.request.id, len(item.tokens), len(item.new_tokens), item.request.params.max_tokens
        )

    waiting, running = [state(i) for i in engine.waiting], [state(s) for s in engine.running]
    return waiting, running, engine.cache.allocator.free_count


@pytest.mark.exercise("7.3", points=2)
@pytest.mark.parametrize("block_size, num_blocks, max_batch", [(4, 16, 8), (4, 20, 3), (8, 9, 4)])
def test_schedule_step_predicts_every_step_of_the_engine(
    exercise, block_size, num_blocks, max_batch
):
    """schedule_step: the Engine's admissions, preemptions and retirements, step by step"""
    ex = exercise(EX)
    model = model_of()
    engine = Engine(
        model, num_blocks=num_blocks, block_size=block_size, max_batch=max_batch,
        prefix_caching=False,
    )  # fmt: skip
    preempted = []
    preempt = engine._preempt

    def recorded():
        preempted.append(engine.running[-1].request.id)
        preempt()

    engine._preempt = recorded
    rng = np.random.default_rng(block_size + num_blocks + max_batch)
    lengths = rng.integers(1, 24, 12)
    max_tokens = [1, *rng.integers(2, 30, 11)]  # one retires at its prefill
    arrivals = {0: range(0, 5), 3: range(5, 7), 4: range(7, 8), 9: range(8, 12)}
    step, seen = 0, {"admitted": 0, "preempted": 0, "retired": 0}
    while step <= max(arrivals) or engine.has_work():
        for i in arrivals.get(step, []):
            prompt = rng.integers(0, 61, lengths[i]).tolist()
            engine.add_request(prompt, SamplingParams(int(max_tokens[i]), temperature=0), f"r{i}")
        waiting, running, free = snapshot(engine)
        got = step_of(ex, waiting, running, free, block_size, max_batch)
        preempted.clear()
        outputs = engine.step()
        admitted = [o.request_id for o in outputs if o.request_id in {w["id"] for w in waiting}]
        want = dict(
            admitted=list(dict.fromkeys(admitted)),
            preempted=list(preempted),
            retired=[o.request_id for o in outputs if o.finish_reason],
        )
        want["waiting"], want["running"], want["free_blocks"] = snapshot(engine)
        assert got == want, f"step {step}"
        for key in seen:
            seen[key] += len(want[key])
        step += 1
    assert seen["admitted"] >= 12 and seen["retired"] == 12 and seen["preempted"] > 0
