"""The basic layers: Linear, Embedding, RMSNorm, LayerNorm, Dropout.

Each holds its Parameters and calls one op from ``tinyllm.functional`` in ``forward``.
Weights start as seeded NumPy draws (``seed`` is an int or a ``numpy.random.Generator``;
pass one Generator down a model so every layer draws the next numbers from it).

>>> import numpy as np
>>> layer = Linear(3, 2, seed=0)
>>> layer.weight.shape, layer.bias.shape          # weight is (in, out): y = x @ W + b
((3, 2), (2,))
>>> layer(np.ones((4, 3), np.float32)).shape
(4, 2)
"""

import numpy as np

from .. import functional as F
from .module import Module, Parameter


def normal(seed, shape, std):
    """float32 draws from N(0, std^2); ``default_rng`` returns a Generator ``seed`` unchanged."""
    return (np.random.default_rng(seed).standard_normal(shape) * std).astype(np.float32)


class Linear(Module):
    """``y = x @ weight + bias`` with ``weight`` of shape (in_features, out_features)."""

    def __init__(self, in_features, out_features, bias=True, *, std=0.02, seed=0):
        self.weight = Parameter(normal(seed, (in_features, out_features), std))
        self.bias = Parameter(np.zeros(out_features, np.float32)) if bias else None

    def forward(self, x):
        y = x @ self.weight  # (..., out_features)
        return y if self.bias is None else y + self.bias


class Embedding(Module):
    """A (num_embeddings, dim) table; ``forward(ids)`` picks one row per id."""

    def __init__(self, num_embeddings, dim, *, std=0.02, seed=0):
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
    """Dropout in training mode, the identity in eval mode; each call draws a new mask.

    The mask seed advances from ``seed`` on every call, so a run is reproducible.
    """

    def __init__(self, p, *, seed=0):
        self.p = p
        self.calls = 0
        self.seed = seed

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        self.calls += 1
        return F.dropout(x, self.p, seed=(self.seed, self.calls), training=True)
