"""Inference: sampling rules and text generation from a trained model."""

from .sampling import filter_logits, generate, sample_next

__all__ = ["filter_logits", "generate", "sample_next"]
