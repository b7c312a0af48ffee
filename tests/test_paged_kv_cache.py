"""The paged KV cache: batched paged attention equals each sequence alone on a contiguous cache
for every architecture; the allocator counts holders, copies shared blocks on write, reuses
full blocks of a prefix, and refuses what does not fit without changing anything."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import tinyllm
from tinyllm.infer import KVCache
from tinyllm.models import ModelConfig, Transformer
from tinyllm.nn.paged_kv_cache import BlockAllocator, PagedKVCache


def _kv_cache_tests():
    """test_kv_cache.py, for its architectures (tests run with --import-mode=importlib)."""
    path = Path(__file__).with_name("test_kv_cache.py")
    spec = importlib.util.spec_from_file_location("kv_cache_cases", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_CASES = _kv_cache_tests()
BASE, CONFIGS = _CASES.BASE, _CASES.CONFIGS


def logits_of(model, ids, cache):
    with tinyllm.no_grad():
        logits, _ = model(np.asarray(ids), cache=cache)
    return logits.numpy()


@pytest.mark.parametrize("case", CONFIGS)
def test_paged_batches_equal_each_sequence_alone(case):
    model = Transformer(ModelConfig(**{**BASE, **CONFIGS[case]}), seed=0)
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 61, n) for n in (5, 9, 2)]
    paged = PagedKVCache.for_model(model.config, num_blocks=24, block_size=4)
    alone = [KVCache.for_model(model.config, 1) for _ in prompts]
    tokens = []
    for i, prompt in enumerate(prompts):  # prefill one at a time, as the engine does
        paged.add(i)
        assert paged.reserve(i, len(prompt))
        ours = logits_of(model, prompt[None], paged.batch([i]))
        np.testing.assert_allclose(ours, logits_of(model, prompt[None], alone[i]), atol=1e-5)
        tokens.append([int(ours[0, -1].argmax())])
    for _ in range(13):  # decode all three together: lengths differ, positions per row
        for i in range(3):
            assert paged.reserve(i, 1)
        ours = logits_of(model, [[t[-1]] for t in tokens], paged.batch([0, 1, 2]))  # (3, 1, V)
        for i in range(3):
            expected = logits_of(model, [[tokens[i][-1]]], alone[i])
            np.testing.assert_allclose(ours[i], expected[0], atol=1e-5, rtol=0)
            tokens[i].append(int(ours[i, -1].argmax()))
    assert [paged.lengths[i] for i in range(3)] == [len(p) + 13 for p in prompts]
    assert paged.blocks_in_use == sum(-(-(len(p) + 13) // 4) for p in prompts)  # no more


def test_the_allocator_counts_holders_and_frees_oldest_first():
    allocator = BlockAllocator(3)
    a, b = allocator.allocate(), allocator.allocate()
    allocator.share(a)
    allocator.free(a)
    assert allocator.ref_counts.tolist() == [1, 1, 0] and allocator.free_count == 1
    allocator.free(a)
    allocator.free(b)
    assert list(allocator.free_blocks) == [2, 0, 1]  # freed blocks queue behind the never used
    with pytest.raises(ValueError, match="block 0 is not held"):
        allocator.free(a)
    for _ in range(3):
        allocator.allocate()
    with pytest.raises(MemoryError, match="no free block"):
        allocator.allocate()
    for bad in (3, -1):
        with pytest.raises(ValueError, match=f"block {bad} does not exist: expected 0..2"):
            allocator.share(bad)
        with pytest.raises(ValueError, match=f"block {bad} does not exist: expected 0..2"):
            allocator.free(bad)
    with pytest.raises(ValueError, match="num_blocks=0: expected an integer >= 1"):
        BlockAllocator(0)


def small_cache(num_blocks=6):
    return PagedKVCache(n_layer=2, n_kv_head=1, head_dim=2, num_blocks=num_blocks, block_size=2)


def write(cache, seq_id, values):
    """Write ``values`` (one number per position) as seq_id's keys and values, all layers;
    return the keys the sequence then holds, one number per position."""
    if seq_id not in cache.block_tables:
        cache.add(seq_id)
    assert cache.reserve(seq_id, len(values))
    batch = cache.batch([seq_id])
    k = tinyllm.Tensor(np.repeat(np.float32(values)[None, None, :, None], 2, axis=-1))
    for layer in range(2):
        keys, _ = batch.update(layer, k, k)
    batch.advance(len(values))
    return keys.numpy()[0, 0, : cache.lengths[seq_id], 0]


def test_a_shared_block_is_copied_when_written_and_the_other_sequence_keeps_it():
    cache = small_cache()
    write(cache, "a", [1, 2, 3])  # blocks [0, 1]: block 1 half full
    cache.fork("a", "b")
    assert cache.block_tables["b"] == [0, 1] and cache.allocator.ref_counts[:2].tolist() == [2, 2]
    assert write(cache, "b", [9]).tolist() == [1, 2, 3, 9]  # b writes into block 1: a copy
    assert cache.block_tables["b"] == [0, 2] and cache.allocator.ref_counts[:3].tolist() == [
        2,
        1,
        1,
    ]
    assert write(cache, "a", [4]).tolist() == [1, 2, 3, 4]  # a's block 1 was not touched
    cache.free("a")
    cache.free("b")
    assert cache.allocator.free_count == 6 and not cache.block_tables


def test_reserve_refuses_without_changing_anything():
    cache = small_cache(num_blocks=3)
    write(cache, "a", [1, 2, 3])  # 2 blocks
    cache.add("b")
    assert not cache.reserve("b", 3)  # needs 2 blocks, 1 free
    assert cache.block_tables["b"] == [] and cache.allocator.free_count == 1
    assert cache.reserve("b", 2)


def test_full_blocks_of_a_prefix_are_found_and_reused_after_they_were_freed():
    cache = small_cache()
    tokens = [5, 6, 7, 8, 9]
    write(cache, "a", tokens)  # blocks [0, 1, 2]: two full
    cache.register_full_blocks("a", tokens)
    assert cache.match_prefix([5, 6, 7, 8, 1]) == [0, 1]
    assert cache.match_prefix([5, 6, 7, 8]) == [0]  # the last token is always computed
    assert cache.match_prefix([5, 7, 7, 8, 1]) == []  # the first block differs: nothing
    assert cache.match_prefix([1, 1, 7, 8, 1]) == []  # block 2 alone is not a prefix
    cache.free("a")
    cache.add("b", cache.match_prefix([5, 6, 7, 8, 1, 2]))  # freed, but not handed out since
    assert cache.block_tables["b"] == [0, 1] and cache.lengths["b"] == 4
    assert write(cache, "b", [1, 2]).tolist() == [5, 6, 7, 8, 1, 2]


def test_a_batch_without_room_is_named():
    cache = small_cache()
    cache.add("a")
    with pytest.raises(ValueError, match="sequence 'a' has no room for 1 more positions"):
        write_without_reserve = cache.batch(["a"])
        k = tinyllm.Tensor(np.zeros((1, 1, 1, 2), np.float32))
        with tinyllm.no_grad():
            write_without_reserve.update(0, k, k)
    with pytest.raises(ValueError, match="block_size=0: expected a positive integer"):
        PagedKVCache(n_layer=1, n_kv_head=1, head_dim=2, num_blocks=2, block_size=0)
