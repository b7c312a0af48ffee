"""Training batches: random windows of a token array, and the train / validation split.

A language model learns to predict token ``t + 1`` from tokens ``..t``. A batch is
``batch_size`` windows of ``context`` tokens cut at random offsets; the targets ``y`` are
the same windows shifted one token right, so ``y[b, t]`` is the token after ``x[b, t]``.

>>> tokens = np.arange(100)
>>> x, y = random_batch(tokens, batch_size=2, context=4, rng=np.random.default_rng(0))
>>> x
array([[81, 82, 83, 84],
       [61, 62, 63, 64]])
>>> bool((y == x + 1).all()), x.dtype, x.shape
(True, dtype('int64'), (2, 4))
"""

import numpy as np


def train_val_split(tokens, val_fraction=0.1):
    """The first ``1 - val_fraction`` of ``tokens`` for training, the rest for validation
    (nanoGPT's split: the validation text is the end of the corpus, never seen in training).

    >>> train, val = train_val_split(np.arange(10))
    >>> train, val
    (array([0, 1, 2, 3, 4, 5, 6, 7, 8]), array([9]))
    """
    if not 0 < val_fraction < 1:
        raise ValueError(
            f"val_fraction={val_fraction}: expected a fraction strictly between 0 and 1"
        )
    n_train = int(len(tokens) * (1 - val_fraction))
    return tokens[:n_train], tokens[n_train:]


def random_batch(tokens, batch_size, context, *, rng):
    """``(x, y)``: ``batch_size`` random windows of ``context`` tokens and their next tokens,
    both int64 arrays of shape ``(batch_size, context)``. ``rng`` is a ``numpy.random.Generator``
    (or an int seed for one).
    """
    rng = np.random.default_rng(rng)
    if len(tokens) <= context:
        raise ValueError(
            f"{len(tokens)} tokens are too few for windows of context={context}: "
            f"expected at least {context + 1} (a window plus its next token)"
        )
    starts = rng.integers(0, len(tokens) - context, size=batch_size)  # (B,)
    index = starts[:, None] + np.arange(context)  # (B, T)
    x = np.asarray(tokens[index], dtype=np.int64)  # (B, T)
    y = np.asarray(tokens[index + 1], dtype=np.int64)  # (B, T): each x[b, t]'s next token
    return x, y


class RandomBatches:
    """An endless stream of ``random_batch`` draws from one generator seeded with ``seed``,
    that can be saved and resumed: the same seed gives the same batches in the same order,
    and ``load_state_dict(state_dict())`` continues exactly where the stream stood.

    >>> batches = RandomBatches(np.arange(50), batch_size=1, context=3, seed=0)
    >>> next(batches)[0], next(batches)[0]
    (array([[39, 40, 41]]), array([[29, 30, 31]]))
    >>> saved = batches.state_dict()
    >>> later = next(batches)[0]
    >>> bool((next(batches.load_state_dict(saved))[0] == later).all())
    True
    """

    def __init__(self, tokens, batch_size, context, *, seed):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        if len(tokens) <= context:
            raise ValueError(
                f"a batch does not fit the data: {len(tokens)} tokens are too few for windows "
                f"of context={context}; expected at least {context + 1} (a window plus its next "
                "token): use a shorter context or more text"
            )
        self.tokens, self.batch_size, self.context = tokens, batch_size, context
        self.rng = np.random.default_rng(seed)
        self.batches_drawn = 0  # the data position, for the record

    def __iter__(self):
        return self

    def __next__(self):
        self.batches_drawn += 1
        return random_batch(self.tokens, self.batch_size, self.context, rng=self.rng)

    def state_dict(self):
        """The generator's state and the batch count, as JSON-ready values."""
        return {"rng": self.rng.bit_generator.state, "batches_drawn": self.batches_drawn}

    def load_state_dict(self, state):
        """Continue from a ``state_dict()``; returns ``self``."""
        self.rng.bit_generator.state = state["rng"]
        self.batches_drawn = int(state["batches_drawn"])
        return self


class RowBatches:
    """An endless, resumable stream of batches of ``batch_size`` rows of ``rows`` (a tuple
    of arrays with one row per example: packed SFT rows, preference pairs), in a fresh
    seeded order each epoch; each batch is the tuple of those arrays' picked rows.

    >>> batches = RowBatches((np.arange(5), np.arange(5) * 10), 2, seed=0)
    >>> [b.tolist() for b in next(batches)]
    [[2, 4], [20, 40]]
    """

    def __init__(self, rows, batch_size, *, seed):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        if len(rows[0]) == 0:
            raise ValueError("RowBatches: no rows: give at least one example")
        self.rows, self.batch_size = rows, batch_size
        self.rng = np.random.default_rng(seed)
        self.order, self.cursor, self.epochs = self.rng.permutation(len(rows[0])), 0, 0

    def __iter__(self):
        return self

    def __next__(self):
        picked = []
        while len(picked) < self.batch_size:
            if self.cursor == len(self.order):
                self.order, self.cursor = self.rng.permutation(len(self.rows[0])), 0
                self.epochs += 1
            take = self.order[self.cursor : self.cursor + self.batch_size - len(picked)]
            picked.extend(take)
            self.cursor += len(take)
        return tuple(array[picked] for array in self.rows)  # as many arrays as the rows have

    def state_dict(self):
        return {
            "rng": self.rng.bit_generator.state, "order": self.order.tolist(),
            "cursor": self.cursor, "epochs": self.epochs,
        }  # fmt: skip

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.order, self.cursor = np.asarray(state["order"]), int(state["cursor"])
        self.epochs = int(state["epochs"])
        return self
