"""Inference: sampling rules, the KV cache, text generation, and speculative decoding."""

from ..nn.kv_cache import KVCache, StaticKVCache
from . import speculative
from .generate import generate, stream_generate
from .sampling import (
    check_sampling_settings,
    draw,
    filter_logits,
    keep_min_p,
    keep_top_k,
    keep_top_p,
    next_token_probs,
    penalize_repetition,
    sample_next,
)
from .stream import GenerationStats

__all__ = [
    "GenerationStats",
    "KVCache",
    "StaticKVCache",
    "check_sampling_settings",
    "draw",
    "filter_logits",
    "generate",
    "keep_min_p",
    "keep_top_k",
    "keep_top_p",
    "next_token_probs",
    "penalize_repetition",
    "sample_next",
    "speculative",
    "stream_generate",
]
