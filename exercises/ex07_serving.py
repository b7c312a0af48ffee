"""Exercises for lesson 07: serving. Replace each ``raise NotImplementedError``.

A server keeps the keys and values of many sequences in one pool of fixed-size blocks (the
paged KV cache). A block allocator hands the blocks out and counts who holds each (7.1); a
sequence's block table says where its positions live, and attention reads its keys through
the table (7.2); and at every step a scheduler decides which requests join the batch, which
must give their blocks back, and which are done (7.3).

Everything here is plain Python and NumPy. A pool is ``(num_blocks, block_size, H, D)``:
``block_size`` positions per block, each with ``H`` key/value heads of ``D`` features.
Attention wants ``(H, S, D)`` per sequence: heads first, then positions.

Grade with ``tinyllm grade exercises -k ex07`` (lesson: lessons/07-serving.md).
"""

from collections import deque

import numpy as np


# --- Exercise 7.1 ---------------------------------------------------------------------------
class BlockAllocator:
    """Hands out the blocks ``0 .. num_blocks - 1`` of a pool and counts who holds each.

    The state is given (``__init__``): ``ref_counts``, an int array with the number of
    holders of each block, and ``free_blocks``, a ``deque`` of the blocks nobody holds, in
    the order they are handed out. Write the three operations:

    - ``allocate()``: take the block at the *front* of the free list, now held once, and
      return it; raise ``MemoryError`` when none is free.
    - ``share(block)``: one more holder of ``block`` (a second sequence now reads it). A
      block nobody held comes off the free list: that is how a freed block whose content is
      still good (a cached prompt prefix) is brought back.
    - ``free(block)``: one holder fewer; when none is left, the block joins the *back* of
      the free list. Freeing a block nobody holds is a bug in the caller: raise
      ``ValueError`` naming the block.

    Freed blocks queue behind the ones that were free before, so a freed block keeps its
    content as long as possible. With 4 blocks: allocate() -> 0, allocate() -> 1,
    share(0), free(0) (0 is still held once), free(1) -> the free list is [2, 3, 1].
    """

    def __init__(self, num_blocks):
        if not isinstance(num_blocks, (int, np.integer)) or num_blocks < 1:
            raise ValueError(f"BlockAllocator: num_blocks={num_blocks!r}: expected an integer >= 1")
        self.num_blocks = int(num_blocks)
        self.ref_counts = np.zeros(self.num_blocks, dtype=np.int64)  # holders of each block
        self.free_blocks = deque(range(self.num_blocks))  # handed out from the front

    @property
    def free_count(self):
        return len(self.free_blocks)

    def allocate(self):
        raise NotImplementedError("Exercise 7.1: hand out the oldest free block")

    def share(self, block):
        raise NotImplementedError("Exercise 7.1: one more holder of the block")

    def free(self, block):
        raise NotImplementedError("Exercise 7.1: one holder fewer; at none, back on the free list")


# --- Exercise 7.2 ---------------------------------------------------------------------------
def block_slot(block_table, position, block_size):
    """Where ``position`` of a sequence lives: ``(block, offset)`` in the pool.

    block_table: the sequence's blocks, in order: ``block_table[0]`` holds positions
                 ``0 .. block_size - 1``, ``block_table[1]`` the next ``block_size``, ...
    position:    a position of the sequence (0 is its first token).

    Raise ``ValueError`` if the table has no block for ``position``.

    block_table [7, 2, 5], block_size 4: position 0 -> (7, 0), 5 -> (2, 1), 11 -> (5, 3),
    12 -> ValueError (three blocks hold 12 positions).
    """
    raise NotImplementedError("Exercise 7.2: position -> (block, offset) through the table")


def paged_update(pool, block_table, length, new):
    """Write a sequence's new keys into the pool through its block table; return all its keys.

    pool:        (num_blocks, block_size, H, D), shared by every sequence; change it in place.
    block_table: the sequence's blocks (see ``block_slot``), enough for ``length + T``
                 positions - raise ``ValueError`` if not.
    length:      positions already written: the new ones go to ``length .. length + T - 1``.
    new:         (H, T, D), the keys of T new positions (values work the same way).

    Return (H, length + T, D): the keys of positions ``0 .. length + T - 1``, gathered from
    the blocks of the table, in order. Other sequences' blocks must not change.

    Note the layouts: the pool is position-major (a block is ``(block_size, H, D)``), while
    ``new`` and the result are head-major, as attention wants them.

    pool of 4 blocks of 2 positions (H = D = 1), block_table [3, 1]: three new keys 1, 2, 3
    at length 0 go to (3, 0), (3, 1) and (1, 0); the result is [[[1], [2], [3]]].
    """
    raise NotImplementedError("Exercise 7.2: write through the block table, gather through it")


# --- Exercise 7.3 ---------------------------------------------------------------------------
def schedule_step(waiting, running, free_blocks, block_size, max_batch):
    """One step of continuous batching: who joins, who is preempted, who is done.

    Each request is a dict ``{"id", "tokens", "generated", "max_tokens"}``: ``tokens`` it has
    (its prompt and the ``generated`` new ones after it), and ``max_tokens``, how many new
    tokens it may generate in all.

    waiting:     oldest first: requests not started (``generated`` 0) and sequences that
                 were preempted (their blocks were taken back; they start over from all
                 their tokens). Starting one - its *prefill* - writes all its ``tokens`` to
                 the cache: ``ceil(tokens / block_size)`` blocks.
    running:     in the order they were admitted. A running sequence's cache holds all its
                 tokens but the newest (the next decode feeds that one), so it holds
                 ``ceil((tokens - 1) / block_size)`` blocks.
    free_blocks: the number of blocks nobody holds.
    max_batch:   at most this many sequences run at once.

    The step, as tinyllm's ``Engine.step`` runs it (requests here have one sample each):

    1. admit, oldest first, while ``waiting`` is not empty:
       - stop if ``running`` already holds ``max_batch`` sequences;
       - stop if the head needs more blocks than are free (first come, first served: no one
         behind it jumps the queue) - unless nothing is running, in which case it never
         fits: raise ``MemoryError``;
       - otherwise it takes its blocks and moves to the end of ``running`` (``admitted``);
         its prefill samples one token (``tokens`` + 1, ``generated`` + 1). If that makes
         ``generated`` reach ``max_tokens``, it retires at once and its blocks are free again.
    2. decode: each running sequence, in order, writes its newest token at position
       ``tokens - 1``; it needs one more block when that position starts a new block
       (``(tokens - 1) % block_size == 0``). While it needs one and none is free, preempt the
       *last* running sequence (possibly itself): its blocks are freed, it goes to the
       *front* of ``waiting`` unchanged, and is listed in ``preempted``. A sequence still
       running then takes its block.
    3. every sequence still running samples one token (``tokens`` + 1, ``generated`` + 1);
       each that reaches ``max_tokens`` retires, in running order, and frees its blocks.

    Return a dict: ``admitted``, ``preempted``, ``retired`` (lists of ids, in the order it
    happened), ``waiting`` and ``running`` after the step (lists of dicts as above, updated,
    without the retired) and ``free_blocks`` after it. Leave the arguments unchanged.

    block_size 4, free_blocks 4, max_batch 4, waiting a (5 tokens) then b (9 tokens), both
    new, max_tokens 3: a takes 2 blocks and samples (6 tokens); b needs 3 of the 2 left and
    waits; a decodes position 5 in its second block and samples (7 tokens). Result: admitted
    ["a"], running [a: 7 tokens, 2 generated], waiting [b], free_blocks 2.
    """
    raise NotImplementedError("Exercise 7.3: admit, decode (preempting), retire")
