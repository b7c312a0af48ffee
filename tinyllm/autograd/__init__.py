"""Reverse-mode automatic differentiation over the arrays of any backend."""

from .compile import value_and_grad
from .function import Context, Function, enable_grad, is_grad_enabled, no_grad
from .gradcheck import gradcheck
from .tensor import Tensor, to_numpy

__all__ = [
    "Context",
    "Function",
    "Tensor",
    "enable_grad",
    "gradcheck",
    "is_grad_enabled",
    "no_grad",
    "to_numpy",
    "value_and_grad",
]
