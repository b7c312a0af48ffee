"""tinyllm: how large language models are built, by building one.

>>> import tinyllm
>>> x = tinyllm.Tensor([1.0, 2.0], requires_grad=True)
>>> (x * x).sum().backward()
>>> tinyllm.to_numpy(x.grad)
array([2., 4.], dtype=float32)
"""

__version__ = "0.1.0"

from . import functional
from .autograd import (
    Function,
    Tensor,
    enable_grad,
    gradcheck,
    no_grad,
    to_numpy,
    value_and_grad,
)
from .backend import (
    BackendUnavailable,
    available_backends,
    get_backend,
    jit,
    set_backend,
    use_backend,
)
from .backend.precision import compute_dtype, precision

__all__ = [
    "BackendUnavailable",
    "Function",
    "Tensor",
    "__version__",
    "available_backends",
    "compute_dtype",
    "enable_grad",
    "functional",
    "get_backend",
    "gradcheck",
    "jit",
    "no_grad",
    "precision",
    "set_backend",
    "to_numpy",
    "use_backend",
    "value_and_grad",
]
