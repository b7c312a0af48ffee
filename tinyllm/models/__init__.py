"""Models: the config dataclass, the decoder-only Transformer, Hugging Face load/save, and
LoRA adapters in PEFT's format (``adapters.py``)."""

from .config import PRESETS, ModelConfig, get_preset
from .transformer import Block, Transformer

__all__ = ["PRESETS", "Block", "ModelConfig", "Transformer", "get_preset"]
