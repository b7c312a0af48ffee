"""Layers and the Module container models are built from.

| file                  | what it holds                                               |
|-----------------------|-------------------------------------------------------------|
| `module.py`           | Module, Parameter, Buffer: naming, saving, moving, binding  |
| `layers.py`           | Linear, Embedding, RMSNorm, LayerNorm, Dropout              |
| `mlp.py`              | MLP (GELU), SwiGLU                                          |
| `rope.py`             | RotaryEmbedding, with linear / dynamic NTK / YaRN scaling   |
| `attention.py`        | CausalSelfAttention: multi-head, grouped-query, multi-query |
| `moe.py`              | MoE: top-k routing, load-balancing loss, expert counts      |
| `lora.py`             | LoRALinear, apply_lora: low-rank adapters, merge, switch    |
| `lora_targets.py`     | which layers LoRA adapts: targets matched against paths     |
| `trainable_tokens.py` | TrainableTokens: some embedding rows train, the rest frozen |
| `kv_cache.py`         | KVCache: per-layer keys/values of the n_kv_head heads       |
"""

from .attention import CausalSelfAttention
from .kv_cache import KVCache
from .layers import Dropout, Embedding, LayerNorm, Linear, RMSNorm, dropout_key
from .lora import LoRALinear, apply_lora
from .mlp import MLP, SwiGLU
from .module import Buffer, Module, Parameter
from .moe import MoE
from .rope import RotaryEmbedding

__all__ = [
    "MLP",
    "Buffer",
    "CausalSelfAttention",
    "Dropout",
    "Embedding",
    "KVCache",
    "LayerNorm",
    "Linear",
    "LoRALinear",
    "MoE",
    "Module",
    "Parameter",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_lora",
    "dropout_key",
]
