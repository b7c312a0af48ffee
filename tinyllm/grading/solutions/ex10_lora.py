"""Reference answers for exercises/ex10_lora.py: tinyllm's LoRA.

The exercises work on plain NumPy arrays in PyTorch's layout, a weight (out, in), so each
answer is a thin adapter around ``LoRALinear`` (tinyllm/nn/lora.py) - its forward, ``merge``
and ``unmerge`` on a ``Linear`` holding the given arrays, whose weight is the transpose,
(in, out) - never a second copy of its arithmetic. The counts come from the adapter modules
``LowRank`` builds for each shape.
"""

import numpy as np

from tinyllm.autograd import Tensor, no_grad
from tinyllm.nn import Linear
from tinyllm.nn.lora_layer import LoRALinear, LowRank

__all__ = [
    "lora_forward",
    "lora_merge",
    "lora_parameter_count",
    "lora_unmerge",
    "trainable_fraction",
]


def _float(x):
    return np.asarray(x, dtype=np.result_type(np.asarray(x).dtype, np.float32))


def _layer(weight, bias, A, B, alpha, *, merged=False):
    """A ``LoRALinear`` holding the given arrays (``weight`` transposed into our layout)."""
    weight = _float(weight)
    out_features, in_features = weight.shape
    base = Linear(in_features, out_features, bias=bias is not None)
    base.weight.data = weight.T.copy()  # (in, out)
    if bias is not None:
        base.bias.data = _float(bias).astype(weight.dtype)
    layer = LoRALinear(base, len(A), alpha)
    adapter = layer.adapters[layer.active]
    adapter.A.data = _float(A).astype(weight.dtype)  # (r, in)
    adapter.B.data = _float(B).astype(weight.dtype)  # (out, r)
    layer.merged = merged  # the weight given already holds the update
    return layer


def lora_forward(x, weight, bias, A, B, alpha):
    layer = _layer(weight, bias, A, B, alpha)
    with no_grad():
        return layer(Tensor(_float(x).astype(layer.base.weight.dtype))).numpy()


def lora_merge(weight, A, B, alpha):
    layer = _layer(weight, None, A, B, alpha)
    layer.merge()
    return layer.base.weight.numpy().T.astype(np.asarray(weight).dtype)


def lora_unmerge(merged, A, B, alpha):
    layer = _layer(merged, None, A, B, alpha, merged=True)
    layer.unmerge()
    return layer.base.weight.numpy().T.astype(np.asarray(merged).dtype)


def lora_parameter_count(shapes, r):
    return sum(LowRank(n_in, n_out, r, alpha=1).num_parameters() for n_out, n_in in shapes)


def trainable_fraction(base_parameters, shapes, r):
    adapters = lora_parameter_count(shapes, r)
    return adapters / (base_parameters + adapters)
