"""The paged KV cache: keys and values in fixed-size blocks of one shared pool (PagedAttention).

A contiguous cache (``kv_cache.py``) reserves ``max_len`` positions per sequence up front. A
server does not know how long each answer will be, so it must reserve for the longest - and
most of that memory is never written (vLLM measured 60-80% of it wasted). The paged cache
does what an operating system does with memory pages:

- per layer, one **pool** of ``num_blocks`` blocks, each ``block_size`` positions of keys and
  values, (num_blocks, block_size, n_kv_head, head_dim);
- per sequence, a **block table**: the blocks holding its positions 0 .. block_size - 1,
  block_size .. 2 * block_size - 1, and so on, wherever they sit in the pool;
- a **block allocator** (``BlockAllocator``): a free list, and a reference count per block,
  so that sequences can share blocks - the prompt of ``n`` parallel samples, or a common
  prefix such as a system prompt (full blocks are found by a hash of their tokens and of
  everything before them, as nano-vllm does). A shared block is copied only when a
  sequence writes into it (copy on write).

A sequence wastes at most the unfilled part of its last block. Position ``p`` of a sequence
lives at slot ``p % block_size`` of block ``table[p // block_size]``:

>>> cache = PagedKVCache(n_layer=1, n_kv_head=1, head_dim=2, num_blocks=4, block_size=2)
>>> cache.add(0); cache.reserve(0, 3)    # room for 3 positions: 2 blocks
True
>>> cache.block_tables[0], cache.allocator.free_count
([0, 1], 2)
>>> cache.fork(0, 1); cache.allocator.ref_counts[:2].tolist()  # a copy shares both blocks
[2, 2]

A forward runs over a ``PagedBatch`` (``cache.batch(seq_ids)``), which speaks the attention
layer's cache protocol (``update``, ``visible``, ``advance``, ``length``): it writes each
row's new keys and values into its blocks and gathers, per row, the keys and values of its
positions through its block table - padded to the longest row, with a mask hiding the
padding. Each row has its own length, so positions (RoPE offsets, learned positions) are
per row too.
"""

from collections import deque

import numpy as np

from ..autograd import Tensor, is_grad_enabled
from ..backend import get_backend


class BlockAllocator:
    """Hands out block ids from a free list; counts who holds each; finds full blocks by hash.

    ``allocate()`` takes the oldest free block (its cached content, if any, is forgotten);
    ``share(block)`` adds a holder, ``free(block)`` removes one, and the block returns to the
    free list when nobody holds it. A full block can be registered under the hash of its
    tokens and of the blocks before it (``register``); ``lookup`` finds it again - even after
    it was freed, as long as it was not handed out anew - so a prompt seen before reuses it.
    """

    def __init__(self, num_blocks):
        if not isinstance(num_blocks, (int, np.integer)) or num_blocks < 1:
            raise ValueError(f"BlockAllocator: num_blocks={num_blocks!r}: expected an integer >= 1")
        self.num_blocks = int(num_blocks)
        self.ref_counts = np.zeros(self.num_blocks, dtype=np.int64)
        self.free_blocks = deque(range(self.num_blocks))  # oldest freed first
        self.hash_of = {}  # block -> (hash, tokens) of the content it holds
        self.block_of = {}  # hash -> block

    @property
    def free_count(self):
        return len(self.free_blocks)

    def allocate(self):
        """A block nobody holds, now held once; raises ``MemoryError`` when none is free."""
        if not self.free_blocks:
            raise MemoryError("BlockAllocator: no free block")
        block = self.free_blocks.popleft()
        self._forget(block)
        self.ref_counts[block] = 1
        return block

    def _check(self, block):
        if not isinstance(block, (int, np.integer)) or not 0 <= block < self.num_blocks:
            raise ValueError(
                f"BlockAllocator: block {block!r} does not exist: expected 0..{self.num_blocks - 1}"
            )

    def share(self, block):
        """One more holder of ``block`` (taken back from the free list if it was there)."""
        self._check(block)
        if self.ref_counts[block] == 0:
            self.free_blocks.remove(block)
        self.ref_counts[block] += 1

    def free(self, block):
        """One holder fewer; at none the block is free again (its hash kept, for reuse)."""
        self._check(block)
        if self.ref_counts[block] <= 0:
            raise ValueError(f"BlockAllocator: block {block} is not held")
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            self.free_blocks.append(block)

    def register(self, block, key):
        """Remember that ``block`` holds the full block ``key`` (see ``block_key``)."""
        self._forget(block)
        self.hash_of[block], self.block_of[key] = key, block

    def lookup(self, key):
        """The block holding ``key``, or None."""
        block = self.block_of.get(key)
        return block if block is not None and self.hash_of.get(block) == key else None

    def _forget(self, block):
        key = self.hash_of.pop(block, None)
        if key is not None and self.block_of.get(key) == block:
            del self.block_of[key]


def block_key(previous, tokens):
    """The identity of a full block: its tokens and the key of the block before it (None
    for the first), so equal keys mean equal prefixes up to the end of the block."""
    return (previous, tuple(int(t) for t in tokens))


class PagedKVCache:
    """Pools of ``num_blocks`` blocks of ``block_size`` positions for ``n_layer`` layers, and
    the block tables of the sequences (by id) that use them; see the module doc."""

    def __init__(
        self, n_layer, n_kv_head, head_dim, num_blocks, block_size=16, *, dtype=np.float32,
        backend=None,
    ):  # fmt: skip
        for name, n in dict(n_layer=n_layer, n_kv_head=n_kv_head, head_dim=head_dim,
                            block_size=block_size).items():  # fmt: skip
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
                raise ValueError(f"PagedKVCache: {name}={n!r}: expected a positive integer")
        self.backend = get_backend(backend)
        self.allocator = BlockAllocator(num_blocks)
        self.block_size = block_size
        shape = (num_blocks, block_size, n_kv_head, head_dim)
        self.keys = [self.backend.xp.zeros(shape, dtype=dtype) for _ in range(n_layer)]
        self.values = [self.backend.xp.zeros(shape, dtype=dtype) for _ in range(n_layer)]
        self.block_tables = {}  # seq id -> [block, ...]
        self.lengths = {}  # seq id -> positions written

    @classmethod
    def for_model(cls, config, num_blocks, block_size=16, *, dtype=np.float32, backend=None):
        """A pool fitting a model's ``config`` (a ``ModelConfig``)."""
        return cls(
            config.n_layer, config.kv_heads, config.head_dim, num_blocks, block_size,
            dtype=dtype, backend=backend,
        )  # fmt: skip

    @property
    def nbytes(self):
        """Bytes of every pool, used or not."""
        return sum(int(k.nbytes) + int(v.nbytes) for k, v in zip(self.keys, self.values))

    @property
    def blocks_in_use(self):
        return self.allocator.num_blocks - self.allocator.free_count

    # --- sequences -------------------------------------------------------------------------
    def add(self, seq_id, prefix_blocks=()):
        """Start sequence ``seq_id``, its first positions held by ``prefix_blocks`` (full
        blocks found by ``match_prefix``), which it now shares."""
        if seq_id in self.block_tables:
            raise ValueError(f"PagedKVCache: sequence {seq_id!r} already exists")
        for block in prefix_blocks:
            self.allocator.share(block)
        self.block_tables[seq_id] = list(prefix_blocks)
        self.lengths[seq_id] = len(prefix_blocks) * self.block_size

    def fork(self, parent, child):
        """Start ``child`` as a copy of ``parent``: the same blocks, shared, not copied."""
        self.add(child, self.block_tables[parent])
        self.lengths[child] = self.lengths[parent]

    def free(self, seq_id):
        """End ``seq_id``: each of its blocks has one holder fewer."""
        for block in self.block_tables.pop(seq_id):
            self.allocator.free(block)
        del self.lengths[seq_id]

    def reserve(self, seq_id, n):
        """Make room for ``n`` more positions of ``seq_id``: allocate the blocks they need,
        and copy a shared block they would write into (copy on write). False, with nothing
        changed, when the free blocks do not suffice."""
        table, length = self.block_tables[seq_id], self.lengths[seq_id]
        needed = -(-(length + n) // self.block_size) - len(table)  # new blocks
        shared_tail = length % self.block_size and self.allocator.ref_counts[table[-1]] > 1
        if max(needed, 0) + bool(shared_tail) > self.allocator.free_count:
            return False
        if shared_tail:  # the partly filled last block is shared: this sequence gets a copy
            old, table[-1] = table[-1], self.allocator.allocate()
            for pools in (self.keys, self.values):
                for layer, pool in enumerate(pools):
                    pools[layer] = self.backend.set_rows(pool, table[-1], pool[old])
            self.allocator.free(old)
        table.extend(self.allocator.allocate() for _ in range(max(needed, 0)))
        return True

    def match_prefix(self, tokens):
        """The blocks already holding the longest run of full blocks that begins ``tokens``
        (the same tokens from the start), as a list; the last token is never covered, so a
        forward always has at least one token to compute."""
        blocks, key = [], None
        for start in range(0, len(tokens) - 1 - self.block_size + 1, self.block_size):
            key = block_key(key, tokens[start : start + self.block_size])
            block = self.allocator.lookup(key)
            if block is None:
                break
            blocks.append(block)
        return blocks

    def register_full_blocks(self, seq_id, tokens):
        """Offer the full blocks of ``seq_id`` (whose positions hold ``tokens``) for reuse
        by later sequences with the same prefix."""
        key = None
        table = self.block_tables[seq_id]
        for i in range(min(self.lengths[seq_id], len(tokens)) // self.block_size):
            key = block_key(key, tokens[i * self.block_size : (i + 1) * self.block_size])
            if self.allocator.lookup(key) is None:
                self.allocator.register(table[i], key)

    def batch(self, seq_ids):
        """A view of the sequences ``seq_ids`` for one forward (see ``PagedBatch``)."""
        return PagedBatch(self, list(seq_ids))


class PagedBatch:
    """Sequences of a ``PagedKVCache`` in one forward: the cache protocol of ``KVCache``.

    ``length`` is an array (B,): each row's positions so far. Every row gets the same number
    ``T`` of new tokens, for which ``reserve`` has made room.
    """

    def __init__(self, cache, seq_ids):
        self.cache, self.seq_ids = cache, seq_ids
        self.length = np.array([cache.lengths[s] for s in seq_ids], dtype=np.int64)  # (B,)
        self._slots = self._tables = None

    def _prepare(self, T):
        """The pool slots (B * T,) the new positions go to, and the block tables (B, n)
        covering every row's positions after them (short rows padded with block 0)."""
        size = self.cache.block_size
        tables = [self.cache.block_tables[s] for s in self.seq_ids]
        positions = self.length[:, None] + np.arange(T)  # (B, T)
        for row, table in enumerate(tables):
            if len(table) * size < positions[row, -1] + 1:
                raise ValueError(
                    f"PagedBatch: sequence {self.seq_ids[row]!r} has no room for {T} more "
                    "positions: reserve() them first"
                )
        blocks = np.array(
            [[table[p // size] for p in row] for table, row in zip(tables, positions)]
        )
        self._slots = (blocks * size + positions % size).reshape(-1)  # (B * T,)
        n = max(-(-(int(positions[:, -1].max()) + 1) // size), 1)
        self._tables = np.array([table[:n] + [0] * (n - len(table[:n])) for table in tables])

    def update(self, layer, k_new, v_new):
        """Write ``k_new``, ``v_new`` (B, n_kv_head, T, head_dim) at each row's positions
        ``length .. length + T - 1``; return, per row, the keys and values of all its
        positions through its block table, (B, n_kv_head, S, head_dim), padded to one S."""
        if is_grad_enabled() and (k_new.requires_grad or v_new.requires_grad):
            raise RuntimeError("PagedBatch: the cache is for inference; use tinyllm.no_grad()")
        B, H, T, D = k_new.shape
        if self._slots is None:
            self._prepare(T)
        cache, backend = self.cache, self.cache.backend
        gathered = []
        for pools, new in ((cache.keys, k_new.data), (cache.values, v_new.data)):
            pool = pools[layer]  # (num_blocks, block_size, H, D)
            flat = pool.reshape(-1, H, D)  # (num_blocks * block_size, H, D)
            rows = new.transpose(0, 2, 1, 3).reshape(B * T, H, D)
            pools[layer] = pool = backend.set_rows(flat, self._slots, rows).reshape(pool.shape)
            table = backend.asarray(self._tables)  # (B, n)
            per_row = pool[table].reshape(B, -1, H, D)  # (B, n * block_size, H, D)
            gathered.append(Tensor(per_row.transpose(0, 2, 1, 3)))  # (B, H, S, D)
        return gathered[0], gathered[1]

    def visible(self, T, window=None):
        """(B, 1, T, S): row b's query t (at position length[b] + t) sees keys 0 .. its own
        position (and, with a ``window``, only the last ``window`` of them)."""
        xp = self.cache.backend.xp
        S = self._tables.shape[1] * self.cache.block_size
        query = xp.asarray(self.length[:, None, None] + np.arange(T)[None, :, None])  # (B, T, 1)
        key = xp.arange(S)[None, None, :]  # (1, 1, S)
        seen = key <= query
        if window is not None:
            seen = seen & (key > query - window)
        return seen[:, None]  # (B, 1, T, S)

    def advance(self, n):
        """Count ``n`` more positions of every row as written."""
        for seq_id in self.seq_ids:
            self.cache.lengths[seq_id] += n
        self.length = self.length + n
