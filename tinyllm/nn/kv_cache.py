"""The KV cache: keys and values of past positions, kept so generation computes each once.

Without a cache, every new token reruns the model over the whole prefix: T tokens cost
1 + 2 + ... + T position passes. The keys and values a layer makes for a position never
change once made (attention is causal: later tokens cannot reach back), so a cache keeps
them. Generation then runs in two phases:

- **prefill**: the prompt goes through the model once, and every layer writes its keys
  and values for positions ``0 .. T - 1``;
- **decode**: each step feeds only the newest token; its query attends over the cached
  keys and values plus its own.

Per layer the cache holds keys and values of shape (B, n_kv_head, max_len, head_dim),
allocated once up front; ``length`` says how many positions are filled. Only the
``n_kv_head`` key/value heads are stored - that is what grouped-query attention saves:

>>> llama_like = dict(n_layer=2, batch_size=1, max_len=1024, head_dim=64)
>>> KVCache(n_kv_head=8, **llama_like).nbytes     # multi-head: 8 key/value heads (float32)
8388608
>>> KVCache(n_kv_head=2, **llama_like).nbytes     # grouped-query, 2 heads: a quarter
2097152

The attention layer talks to a cache through one call, ``update(layer, k_new, v_new)``:
it writes the new positions and returns the keys and values to attend over. The model
reads ``length`` for the new tokens' positions and calls ``advance(T)`` once every layer
has written. ``truncate(length)`` forgets the positions from ``length`` on (speculative
decoding rolls back rejected tokens this way); ``reset()`` forgets all. Another layout
(a paged cache, its blocks spread over a shared pool) slots in behind the same calls.

>>> import numpy as np, tinyllm
>>> cache = KVCache(n_layer=1, batch_size=1, n_kv_head=1, max_len=4, head_dim=2)
>>> k = v = tinyllm.Tensor(np.ones((1, 1, 3, 2), np.float32))    # 3 new positions
>>> cache.update(0, k, v)[0].shape                               # the keys to attend over
(1, 1, 3, 2)
>>> cache.advance(3); cache.truncate(1); cache.length
1
"""

import numpy as np

from ..autograd import Tensor, is_grad_enabled
from ..backend import get_backend


def _positive(**numbers):
    for name, n in numbers.items():
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ValueError(f"KVCache: {name}={n!r}: expected a positive integer")


class KVCache:
    """Contiguous keys and values for ``n_layer`` layers, ``max_len`` positions each.

    ``dtype`` is the stored element type (float32 by default); ``backend`` the array
    library (the current one by default).
    """

    def __init__(
        self, n_layer, batch_size, n_kv_head, max_len, head_dim, *, dtype=np.float32, backend=None
    ):
        _positive(
            n_layer=n_layer, batch_size=batch_size, n_kv_head=n_kv_head, max_len=max_len,
            head_dim=head_dim,
        )  # fmt: skip
        self.backend = get_backend(backend)
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.keys = [self.backend.xp.zeros(shape, dtype=dtype) for _ in range(n_layer)]
        self.values = [self.backend.xp.zeros(shape, dtype=dtype) for _ in range(n_layer)]
        self.shape, self.max_len = shape, max_len
        self.length = 0  # positions 0 .. length - 1 hold keys and values

    @classmethod
    def for_model(cls, config, batch_size, *, max_len=None, dtype=np.float32, backend=None):
        """A cache fitting a model's ``config`` (a ``ModelConfig``): ``n_layer`` layers of
        ``kv_heads`` heads, ``context_length`` positions unless ``max_len`` says fewer."""
        return cls(
            config.n_layer, batch_size, config.kv_heads, config.context_length if max_len is None else max_len,
            config.head_dim, dtype=dtype, backend=backend,
        )  # fmt: skip

    @property
    def nbytes(self):
        """Bytes held by the keys and values of every layer (filled or not)."""
        return sum(int(k.nbytes) + int(v.nbytes) for k, v in zip(self.keys, self.values))

    def update(self, layer, k_new, v_new):
        """Write ``k_new``, ``v_new`` (B, n_kv_head, T, head_dim) at positions ``length ..
        length + T - 1`` of ``layer``; return the keys and values of positions ``0 ..
        length + T - 1`` (B, n_kv_head, length + T, head_dim) as Tensors.

        The cache holds plain arrays, outside the autograd graph: use it under ``no_grad``.
        """
        if is_grad_enabled() and (k_new.requires_grad or v_new.requires_grad):
            raise RuntimeError(
                "KVCache: keys and values that need gradients cannot be cached (the cache is "
                "for inference); run the forward under tinyllm.no_grad()"
            )
        if not isinstance(layer, (int, np.integer)) or not 0 <= layer < len(self.keys):
            raise ValueError(f"KVCache: layer={layer!r}: expected 0 .. {len(self.keys) - 1}")
        B, H, _, D = self.shape
        T = k_new.shape[2]
        if k_new.shape != (B, H, T, D) or v_new.shape != k_new.shape:
            raise ValueError(
                f"KVCache: k {k_new.shape} and v {v_new.shape} must both be "
                f"({B}, {H}, new positions, {D})"
            )
        end = self.length + T
        if end > self.max_len:
            raise ValueError(
                f"KVCache: {T} new positions after {self.length} run past max_len={self.max_len}"
            )
        self._write(layer, k_new, v_new)
        return Tensor(self.keys[layer][:, :, :end]), Tensor(self.values[layer][:, :, :end])

    def _write(self, layer, k_new, v_new):
        """Write the new positions along the time axis from ``length``: in place where
        arrays are mutable (NumPy, CuPy), as new arrays under JAX."""
        write = self.backend.write_at
        self.keys[layer] = write(self.keys[layer], k_new.data, self.length, axis=2)
        self.values[layer] = write(self.values[layer], v_new.data, self.length, axis=2)

    def visible(self, T, window=None):
        """Which keys of ``update``'s result each of the ``T`` new queries may see, as a
        boolean (T, S) array, or None where attention's causal mask already says it (the
        keys end at the newest query, so query i sits at S - T + i)."""
        return None

    def advance(self, n):
        """Count ``n`` more positions as filled: called once all layers have written them."""
        if not 0 <= self.length + n <= self.max_len:
            raise ValueError(f"KVCache: advancing {self.length} by {n} leaves 0 .. {self.max_len}")
        self.length += n

    def truncate(self, length):
        """Forget positions ``length`` and after; the next write starts at ``length``."""
        if not isinstance(length, (int, np.integer)) or not 0 <= length <= self.length:
            raise ValueError(
                f"KVCache: truncate({length!r}): expected a length in 0 .. {self.length}"
            )
        self.length = int(length)

    def reset(self):
        """Forget every position (the arrays stay allocated, ready for the next sequence)."""
        self.truncate(0)


class StaticKVCache(KVCache):
    """A KV cache whose shapes never change, for decoding compiled with ``jax.jit``.

    A compiled program has fixed shapes, and a new shape means a new compilation. So
    ``update`` returns the keys and values of all ``max_len`` positions, filled or not,
    and ``visible`` says which of them each new query may see: the filled ones up to its
    own position (and within the sliding window). ``length`` may be a traced value of the
    program, and the writes go through ``backend.write_at`` (``dynamic_update_slice``):
    one program serves every step. The compiled step takes the arrays and the length in
    and gives them back (``arrays()``, ``of(...)``): inside ``jit`` the cache is a value.
    """

    @classmethod
    def of(cls, keys, values, length, backend):
        """A cache over existing ``keys`` and ``values`` (lists of (B, H, max_len, D)
        arrays, one per layer) whose first ``length`` positions are filled."""
        cache = cls.__new__(cls)
        cache.backend, cache.keys, cache.values = backend, list(keys), list(values)
        cache.shape, cache.max_len, cache.length = keys[0].shape, keys[0].shape[2], length
        return cache

    def arrays(self):
        """``(keys, values, length)``: what a compiled step returns to carry the cache on."""
        return self.keys, self.values, self.length

    def update(self, layer, k_new, v_new):
        """Write ``k_new``, ``v_new`` (B, n_kv_head, T, head_dim) from ``length``; return
        every position's keys and values (B, n_kv_head, max_len, head_dim) as Tensors."""
        self._write(layer, k_new, v_new)
        return Tensor(self.keys[layer]), Tensor(self.values[layer])

    def visible(self, T, window=None):
        xp = self.backend.xp
        query = self.length + xp.arange(T)[:, None]  # (T, 1) each new query's position
        key = xp.arange(self.max_len)[None, :]  # (1, S)
        seen = key <= query  # filled, and not in the query's future
        if window is not None:
            seen = seen & (key > query - window)
        return seen  # (T, S)

    def advance(self, n):
        self.length = self.length + n  # no range check: the length may be traced
