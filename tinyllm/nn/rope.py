"""Rotary position embedding: the angle tables, and how scaling stretches them to longer contexts.

Pair i of a head's D features turns at the frequency ``inv_freq[i] = theta ** (-2i / D)``:
the first pairs spin fast (they tell neighbours apart), the last ones slowly (they tell
far-apart positions apart). Position m turns pair i by ``m * inv_freq[i]``.

A model trained on L positions has never seen angles beyond ``L * inv_freq``. Four ways
to run it on a context ``factor`` times longer, all as in Hugging Face ``transformers``:

- **linear** (position interpolation): divide every frequency by ``factor``, so the long
  context's angles fall in the trained range - at the price of crowding nearby positions.
- **dynamic** NTK: leave short sequences alone; once a sequence of length s > L arrives,
  raise theta to ``theta * (factor * s / L - (factor - 1)) ** (D / (D - 2))``. The fast
  pairs barely change, the slow ones are stretched.
- **YaRN**: interpolate only the slow pairs (those that turn less than ``beta_slow`` times
  over L positions), keep the fast ones (more than ``beta_fast`` turns), blend linearly
  between. Then cos and sin are multiplied by an attention factor, ``0.1 * ln(factor) + 1``
  unless ``attention_factor`` (or ``mscale`` with ``mscale_all_dim``) says otherwise. Both
  queries and keys are rotated with those tables, so each is scaled by the factor and the
  attention logits ``q . k`` by its square: the paper's ``1 / t = (0.1 * ln(factor) + 1)^2``.
- **llama3** (Llama 3.1 and 3.2): by wavelength ``2 pi / inv_freq`` against L. Pairs
  shorter than ``L / high_freq_factor`` are kept, pairs longer than ``L / low_freq_factor``
  are interpolated (divided by ``factor``), and those between blend the two by how many
  times they turn over L. Unlike dynamic NTK it does not depend on the sequence's length.

>>> rope = RotaryEmbedding(head_dim=4, theta=10000.0)
>>> rope.inverse_frequencies(seq_len=8)[0].tolist()        # pair 0 fast, pair 1 slow
[1.0, 0.01]
>>> scaled = RotaryEmbedding(4, 10000.0, {"type": "linear", "factor": 2.0})
>>> scaled.inverse_frequencies(seq_len=8)[0].tolist()
[0.5, 0.005]
"""

import math

import numpy as np

from ..functional.rope import apply_rope


def _yarn(inv_freq, head_dim, theta, factor, original, scaling):
    """YaRN's blend of interpolated and original frequencies, and the factor for cos and sin."""

    def turns_to_dim(turns):  # the pair index whose wavelength fits `turns` times in `original`
        return head_dim * math.log(original / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = (
        turns_to_dim(scaling.get("beta_fast", 32)),
        turns_to_dim(scaling.get("beta_slow", 1)),
    )
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(head_dim // 2) - low) / (high - low), 0, 1)  # 0: keep, 1: interpolate
    blended = inv_freq / factor * ramp + inv_freq * (1 - ramp)

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention_factor = (
            mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
        )
    return blended, attention_factor


def _llama3(inv_freq, factor, original, scaling):
    """Llama 3's frequencies: keep the fast pairs, interpolate the slow ones, blend between."""
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    turns = original * inv_freq / (2 * math.pi)  # times pair i turns over the trained length
    blend = np.clip((turns - low) / (high - low), 0, 1)  # 0: interpolate, 1: keep
    return inv_freq / factor * (1 - blend) + inv_freq * blend


class RotaryEmbedding:
    """Angle tables for RoPE with ``theta`` and optional ``scaling``; it holds no parameters.

    ``scaling`` is ``None`` or a dict: ``type`` ("linear", "dynamic", "yarn", "llama3"),
    ``factor``, ``original_context_length`` (the trained length L; default
    ``context_length``); for YaRN optionally ``beta_fast``, ``beta_slow``,
    ``attention_factor``, ``mscale``, ``mscale_all_dim``, ``truncate``; for llama3
    ``low_freq_factor`` and ``high_freq_factor``.
    """

    def __init__(self, head_dim, theta=10000.0, scaling=None, context_length=None):
        self.head_dim, self.theta = head_dim, theta
        self.scaling = scaling or {}
        self.original = self.scaling.get("original_context_length", context_length)
        self.context_length = context_length
        self._cache = {}

    def inverse_frequencies(self, seq_len):
        """(inv_freq (D/2,), attention_factor) for a sequence of ``seq_len`` positions."""
        kind, factor = self.scaling.get("type"), self.scaling.get("factor", 1.0)
        D, theta = self.head_dim, self.theta
        if kind == "dynamic" and seq_len > self.original:
            theta = theta * (factor * seq_len / self.original - (factor - 1)) ** (D / (D - 2))
        inv_freq = 1.0 / theta ** (np.arange(0, D, 2, dtype=np.float64) / D)
        if kind == "linear":
            return inv_freq / factor, 1.0
        if kind == "yarn":
            return _yarn(inv_freq, D, theta, factor, self.original, self.scaling)
        if kind == "llama3":
            return _llama3(inv_freq, factor, self.original, self.scaling), 1.0
        return inv_freq, 1.0

    def tables(self, start, length, backend):
        """``cos``, ``sin`` (length, D) for positions ``start .. start + length - 1``; for a
        ``start`` per row (an array (B,), as a paged batch has), or every token's own
        position (an array (B, length), as packed sequences have), (B, 1, length, D).

        One table from position 0 is kept per backend and sliced; dynamic scaling past the
        trained length changes every angle, so there the table is remade for each length.
        """
        per_row = getattr(start, "ndim", 0) >= 1
        traced = not per_row and backend.is_traced(start)
        if traced or per_row:  # any position up to the context
            if self.scaling.get("type") == "dynamic":
                raise ValueError(
                    "RoPE: dynamic scaling remakes every angle as the sequence grows, so it "
                    "needs one known length, not a traced start or one start per row"
                )
            cos, sin = self.tables(0, max(self.context_length or 0, self.original or 0), backend)
            if traced:  # a compiled decoding step
                return backend.slice_at(cos, start, length), backend.slice_at(sin, start, length)
            rows = start if start.ndim == 2 else start[:, None] + np.arange(length)
            rows = backend.asarray(rows)  # (B, T) positions
            return cos[rows][:, None], sin[rows][:, None]  # (B, 1, T, D): shared by the heads
        end = start + length
        stretched = self.scaling.get("type") == "dynamic" and end > self.original
        tag = end if stretched else None
        cached = self._cache.get(backend.name)
        if cached is None or cached[0] != tag or cached[1].shape[0] < end:
            inv_freq, attention_factor = self.inverse_frequencies(end)
            n = max(end, 0 if stretched else self.original or 0)
            angles = np.arange(n, dtype=np.float64)[:, None] * inv_freq  # (n, D/2)
            angles = np.concatenate([angles, angles], axis=-1)  # (n, D): both halves of a pair
            cos = backend.asarray((np.cos(angles) * attention_factor).astype(np.float32))
            sin = backend.asarray((np.sin(angles) * attention_factor).astype(np.float32))
            if backend.is_traced(cos):  # made inside jax.jit: a tracer must not outlive it
                return cos[start:end], sin[start:end]
            cached = self._cache[backend.name] = (tag, cos, sin)
        _, cos, sin = cached
        return cos[start:end], sin[start:end]

    def __call__(self, x, start=0):
        """Rotate ``x`` (B, H, T, D) as if its first position were ``start`` (a number, an
        array (B,): each row's own first position, or (B, T): each token's position)."""
        cos, sin = self.tables(start, x.shape[-2], x.backend)
        return apply_rope(x, cos, sin)
