"""Inference: sampling rules, the KV cache, and text generation from a trained model."""

from ..nn.kv_cache import KVCache
from .generate import generate, stream_generate
from .sampling import (
    check_sampling_settings,
    filter_logits,
    keep_min_p,
    keep_top_k,
    keep_top_p,
    penalize_repetition,
    sample_next,
)

__all__ = [
    "KVCache",
    "check_sampling_settings",
    "filter_logits",
    "generate",
    "keep_min_p",
    "keep_top_k",
    "keep_top_p",
    "penalize_repetition",
    "sample_next",
    "stream_generate",
]
