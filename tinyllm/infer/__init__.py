"""Inference: sampling rules and text generation from a trained model."""

from .sampling import (
    check_sampling_settings,
    filter_logits,
    generate,
    keep_min_p,
    keep_top_k,
    keep_top_p,
    penalize_repetition,
    sample_next,
    stream_generate,
)

__all__ = [
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
