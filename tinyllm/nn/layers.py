"""The basic layers: Linear, Embedding, RMSNorm, LayerNorm, Dropout.

Each holds its Parameters and calls one op from ``tinyllm.functional`` in ``forward``.
Weights start as seeded NumPy draws (``seed`` is an int or a ``numpy.random.Generator``;
pass one Generator down a model so every layer draws the next numbers from it). A layer
built without a seed draws fresh numbers, so two such layers never start equal.

>>> import numpy as np
>>> layer = Linear(3, 2, seed=0)
>>> layer.weight.shape, layer.bias.shape          # weight is (in, out): y = x @ W + b
((3, 2), (2,))
>>> layer(np.ones((4, 3), np.float32)).shape
(4, 2)
"""

import contextlib

import numpy as np

from .. import functional as F
from .module import Module, Parameter


def normal(seed, shape, std):
    """float32 draws from N(0, std^2); ``default_rng`` returns a Generator ``seed`` unchanged
    and draws fresh OS entropy for ``seed=None``."""
    return (np.random.default_rng(seed).standard_normal(shape) * std).astype(np.float32)


class Linear(Module):
    """``y = x @ weight + bias`` with ``weight`` of shape (in_features, out_features)."""

    def __init__(self, in_features, out_features, bias=True, *, std=0.02, seed=None):
        self.weight = Parameter(normal(seed, (in_features, out_features), std))
        self.bias = Parameter(np.zeros(out_features, np.float32)) if bias else None

    @property
    def in_features(self):
        return self.weight.shape[0]

    @property
    def out_features(self):
        return self.weight.shape[1]

    def forward(self, x):
        y = x @ self.weight  # (..., out_features)
        return y if self.bias is None else y + self.bias


class Embedding(Module):
    """A (num_embeddings, dim) table; ``forward(ids)`` picks one row per id."""

    def __init__(self, num_embeddings, dim, *, std=0.02, seed=None):
        self.weight = Parameter(normal(seed, (num_embeddings, dim), std))

    def forward(self, ids):
        return F.embedding(self.weight, ids)  # (*ids.shape, dim)


class RMSNorm(Module):
    """Scale each vector to unit root-mean-square, then by a learned per-feature weight."""

    def __init__(self, dim, eps=1e-5):
        self.weight = Parameter(np.ones(dim, np.float32))
        self.eps = eps

    def forward(self, x):
        return F.rms_norm(x, self.weight, eps=self.eps)


class LayerNorm(Module):
    """Centre and scale each vector to unit variance, then ``* weight + bias``."""

    def __init__(self, dim, eps=1e-5, bias=True):
        self.weight = Parameter(np.ones(dim, np.float32))
        self.bias = Parameter(np.zeros(dim, np.float32)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, eps=self.eps)


class Dropout(Module):
    """Dropout in training mode, the identity in eval mode.

    A mask is drawn from a key, never from a hidden counter: ``(*step_key, seed)``, where
    ``step_key`` is given for one forward pass by ``dropout_key(model, step_key)`` (the
    Trainer gives ``(train seed, step, micro-batch)``) and ``seed`` tells this layer from
    the others. So a step's masks follow from the step alone, and a resumed run draws the
    same ones. Outside such a block a training-mode call draws a fresh, unrepeatable mask.

    >>> import numpy as np
    >>> drop = Dropout(0.5, seed=7)
    >>> x = np.ones((2, 4), np.float32)
    >>> with dropout_key(drop, (0, 1)):
    ...     a = drop(x).numpy()
    >>> with dropout_key(drop, (0, 1)):
    ...     b = drop(x).numpy()
    >>> bool((a == b).all()), sorted(set(a.ravel().tolist())) == [0.0, 2.0]
    (True, True)
    """

    def __init__(self, p, *, seed=None):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p={p!r} must be in [0, 1)")
        self.p = p
        self.seed = _fresh_seed() if seed is None else int(seed)
        self.key = None  # the step key, set by dropout_key() for one forward pass

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        key = _fresh_seed() if self.key is None else (*self.key, self.seed)
        return F.dropout(x, self.p, seed=key, training=True)


@contextlib.contextmanager
def dropout_key(model, key):
    """Give every Dropout inside ``model`` the step key ``key`` (a tuple of ints; inside
    ``jax.jit`` some may be traced) for the ``with`` block. A Dropout called twice in one
    block draws the same mask twice: give each forward pass its own key."""
    layers = [m for _, m in model.named_modules() if isinstance(m, Dropout)]
    with dropout_keys({layer: tuple(key) for layer in layers}):
        yield model


@contextlib.contextmanager
def dropout_keys(keys):
    """Give each Dropout layer of ``keys`` ({layer: key}) its own key for the ``with`` block,
    and the keys they had back after it (activation checkpointing recomputes a block with
    the keys its first pass drew from)."""
    given = {layer: layer.key for layer in keys}
    for layer, key in keys.items():
        layer.key = key
    try:
        yield
    finally:
        for layer, key in given.items():
            layer.key = key


def _fresh_seed():
    return int(np.random.SeedSequence().entropy % 2**63)
