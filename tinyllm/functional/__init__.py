"""Differentiable ops, each a ``Function`` with its forward and backward side by side.

| file             | ops                                                             |
|------------------|-----------------------------------------------------------------|
| `elementwise.py` | add sub mul div neg pow astype exp log sqrt tanh                 |
| `activations.py` | relu gelu silu swiglu log_sigmoid dropout                       |
| `reduce.py`      | sum mean max                                                    |
| `shape.py`       | reshape transpose permute concat stack                          |
| `indexing.py`    | getitem embedding where                                         |
| `linalg.py`      | matmul                                                          |
| `softmax.py`     | softmax log_softmax cross_entropy (fused)                       |
| `norms.py`       | rms_norm layer_norm (fused)                                     |
| `attention.py`   | scaled_dot_product_attention (fused, causal, grouped-query)     |
| `rope.py`        | apply_rope (rotary position embedding)                          |
"""

from .activations import dropout, gelu, log_sigmoid, relu, silu, swiglu
from .attention import scaled_dot_product_attention
from .elementwise import (
    add,
    astype,
    div,
    exp,
    log,
    mul,
    neg,
    pow,
    sqrt,
    sub,
    tanh,
    unbroadcast,
)
from .indexing import embedding, getitem, where
from .linalg import matmul
from .norms import layer_norm, rms_norm
from .reduce import max, mean, sum
from .rope import apply_rope
from .shape import concat, permute, reshape, stack, transpose
from .softmax import cross_entropy, log_softmax, softmax

__all__ = [
    "add",
    "apply_rope",
    "astype",
    "concat",
    "cross_entropy",
    "div",
    "dropout",
    "embedding",
    "exp",
    "gelu",
    "getitem",
    "layer_norm",
    "log",
    "log_softmax",
    "matmul",
    "max",
    "mean",
    "mul",
    "neg",
    "permute",
    "pow",
    "relu",
    "reshape",
    "rms_norm",
    "scaled_dot_product_attention",
    "log_sigmoid",
    "silu",
    "softmax",
    "sqrt",
    "stack",
    "sub",
    "swiglu",
    "sum",
    "tanh",
    "transpose",
    "unbroadcast",
    "where",
]
