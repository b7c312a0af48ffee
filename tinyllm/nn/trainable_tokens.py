"""Trainable tokens: an embedding table of which only a few rows train.

A chat template brings tokens a pretrained model never saw (``<|user|>``, ``<|end|>``):
their rows of the embedding table are as they were initialized, or pushed away from every
context by pretraining, since the model learned never to predict them. LoRA on the other
layers has to work around such rows; a full fine-tune would retrain the whole table. PEFT's
answer (``trainable_token_indices``) trains those rows alone: a few hundred numbers.

``TrainableTokens`` wraps the frozen ``Embedding`` and holds the new rows as ``values``
(n, dim), starting as the old ones, so the model is unchanged at step 0. Its ``weight`` is
the base table with them in place, so a model whose output layer is the embedding (tied
weights) scores the new tokens with the new rows too.

>>> import numpy as np
>>> from tinyllm.nn import Embedding
>>> table = TrainableTokens(Embedding(10, 4, seed=0), token_ids=[7, 9])
>>> [name for name, p in table.named_parameters() if p.requires_grad], table.values.shape
(['values'], (2, 4))
>>> bool((table.weight.numpy() == table.base.weight.numpy()).all())     # unchanged at first
True
"""

import numpy as np

from .. import functional as F
from ..autograd import Tensor, no_grad, to_numpy
from .module import Buffer, Module, Parameter


class TrainableTokens(Module):
    """A frozen ``base`` Embedding whose rows ``token_ids`` train; see the module docstring."""

    def __init__(self, base, token_ids):
        vocab_size = base.weight.shape[0]
        ids = sorted({int(i) for i in token_ids})
        if not ids or ids[0] < 0 or ids[-1] >= vocab_size:
            raise ValueError(
                f"TrainableTokens: token ids {list(token_ids)!r} must be one or more ids from 0 "
                f"to {vocab_size - 1}"
            )
        backend = base.weight.backend
        self.base = base.freeze()
        self.token_ids = Buffer(backend.asarray(np.array(ids, np.int64)))
        self.values = Parameter(backend.asarray(to_numpy(base.weight.data)[ids]))  # (n, dim)

    @property
    def weight(self):
        """The (vocab_size, dim) table: the base's rows, the trained ones in place."""
        xp = self.base.weight.backend.xp
        rows = xp.arange(self.base.weight.shape[0])[:, None] == self.token_ids.data  # (V, n)
        placed = Tensor(rows.astype(self.values.dtype)) @ self.values  # (V, dim), 0 elsewhere
        return F.where(rows.any(axis=1)[:, None], placed, self.base.weight)

    def forward(self, ids):
        return F.embedding(self.weight, ids)  # (*ids.shape, dim)

    def unload(self):
        """The base Embedding with the trained rows written into it."""
        with no_grad():
            self.base.weight.data = self.weight.data
        return self.base
