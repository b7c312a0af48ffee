"""Layers and the Module container models are built from."""

from .layers import Dropout, Embedding, LayerNorm, Linear, RMSNorm
from .module import Module, Parameter

__all__ = [
    "Dropout",
    "Embedding",
    "LayerNorm",
    "Linear",
    "Module",
    "Parameter",
    "RMSNorm",
]
