"""A model and its KV cache, run a few new tokens at a time: what every decoding loop calls.

``CachedDecoder(model, batch_size)`` holds a cache; each call ``decoder(ids)`` runs the
tokens that follow the ones it holds, returns their logits and keeps their keys and
values; ``truncate(n)`` forgets all but the first ``n`` positions (speculative decoding
drops rejected tokens so).

On NumPy and CuPy the model runs eagerly over a ``KVCache`` that grows. Under JAX every
new shape would be a new program to compile, so there the cache has fixed shapes
(``StaticKVCache``: all ``context_length`` slots, a mask hiding the empty ones) and goes
in and out of one compiled forward as a value: one program for each number of new tokens
(the prompt, then 1 per step), compiled once per model and kept for later calls. Dynamic
RoPE scaling, whose angles change with the length, runs eagerly there too.

The compiled forward *donates* the cache's arrays (``donate_argnums``): a function of
values would otherwise return new keys and values beside the old ones, and XLA would copy
every layer's whole (B, n_kv_head, context_length, head_dim) cache at every step to write
one position. Donated, the input buffers become the outputs and the write happens in
place; the arrays passed in are deleted by the call (``is_deleted()``), so the decoder
keeps only the ones it gets back. NumPy and CuPy, which run eagerly over a cache written
in place anyway, ignore the donation.

A batch of prompts of different lengths is padded on the left (``pads`` says how many
columns each row's padding takes): a key mask hides the padding from every query, and
learned position embeddings get each row's own positions (``padding_keywords``).
"""

import numpy as np

from ..autograd import to_numpy
from ..nn.kv_cache import KVCache, StaticKVCache
from ..nn.module import compiled, inference


class CachedDecoder:
    """``model`` with a KV cache for ``batch_size`` rows; ``pads`` (B,) or None: see the
    module doc. Runs in eval mode without gradients, whatever the model's own mode."""

    def __init__(self, model, batch_size, pads=None):
        weight = model.token_embedding.weight
        self.model, self.pads, self.backend = model, pads, weight.backend
        dynamic = (model.config.rope_scaling or {}).get("type") == "dynamic"
        self.compiled = self.backend.name == "jax" and not dynamic
        kind = StaticKVCache if self.compiled else KVCache
        self.cache = kind.for_model(
            model.config, batch_size, dtype=weight.dtype, backend=self.backend
        )
        if self.compiled:
            self.params = {name: p.data for name, p in model.named_parameters()}
            # arguments 1 and 2 (after the parameters): the cache's keys and values
            self.step = compiled(model, _cached_forward, donate_argnums=(1, 2))

    @property
    def length(self):
        """How many positions the cache holds."""
        return self.cache.length

    def __call__(self, ids):
        """The logits (B, T, V), a NumPy array, of ``ids`` (B, T): the tokens after the
        cached ones; the cache then holds them too."""
        start, end = self.length, self.length + ids.shape[1]
        keys = self.cache.max_len if self.compiled else end  # the mask covers every key slot
        padding = padding_keywords(self.model, self.pads, start, end, keys)
        with inference(self.model):
            if not self.compiled:
                logits, _ = self.model(ids, cache=self.cache, **padding)
                return to_numpy(logits.data)
            mask, positions = padding.get("mask"), padding.get("positions")
            cache = self.cache
            logits, keys, values = self.step(
                self.params, cache.keys, cache.values, start, ids, mask, positions
            )
        self.cache = StaticKVCache.of(keys, values, end, self.backend)
        return to_numpy(logits)

    def truncate(self, length):
        """Forget the positions from ``length`` on."""
        self.cache.truncate(length)


def _cached_forward(model, keys, values, length, ids, mask, positions):
    """The logits (B, T, V) of ``ids`` (B, T) that follow ``length`` cached positions, and
    the cache's new keys and values: one forward over a ``StaticKVCache``, to compile."""
    cache = StaticKVCache.of(keys, values, length, model.token_embedding.weight.backend)
    logits, _ = model(ids, cache=cache, mask=mask, positions=positions)
    keys, values, _ = cache.arrays()
    return logits.data, keys, values


def padding_keywords(model, pads, start, end, keys=None):
    """The ``mask`` and ``positions`` keywords of a forward over columns ``start .. end - 1``
    of a batch whose rows start with ``pads`` (B,) padding columns; none without ``pads``.

    The mask (B, 1, 1, keys) shows each query every real key among the first ``keys``
    columns (``end`` unless given; the causal mask hides the future); learned position
    embeddings get positions (B, end - start) counted from each row's first real token (0
    on the padding, whose queries see no key anyway).
    """
    if pads is None:
        return {}
    columns = np.arange(end if keys is None else keys)  # (S,) every key
    padding = {"mask": (columns >= pads[:, None])[:, None, None, :]}  # (B, 1, 1, S)
    if model.position_embedding is not None:
        padding["positions"] = np.maximum(np.arange(start, end) - pads[:, None], 0)  # (B, T)
    return padding
