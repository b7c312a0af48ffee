"""Inference: sampling rules, the KV cache, and text generation from a trained model."""

from ..nn.kv_cache import KVCache
from .sampling import filter_logits, generate, sample_next

__all__ = ["KVCache", "filter_logits", "generate", "sample_next"]
