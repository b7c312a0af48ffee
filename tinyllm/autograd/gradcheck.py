"""Check an op's backward against finite differences of its forward.

For a function f and a random direction v, backward gives the exact gradient of
L(x) = sum(f(x) * v). Nudging each input element by +-eps and re-running the forward gives
a numerical estimate (L(x + eps) - L(x - eps)) / (2 eps), accurate to about eps^2. If the two
disagree, the backward is wrong. Run it in float64: in float32 the rounding error of the
difference swamps the signal.

>>> import numpy as np, tinyllm
>>> x = tinyllm.Tensor(np.random.default_rng(0).normal(size=(3, 4)), requires_grad=True)
>>> gradcheck(lambda t: (t * t).sum(axis=1), [x])
True
"""

import numpy as np

from .function import no_grad
from .tensor import Tensor, to_numpy


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed=0):
    """True when ``fn``'s analytic gradients match finite differences; else AssertionError.

    ``inputs`` are passed to ``fn`` in order; the Tensors among them that require gradients
    are checked (on the NumPy backend, in their own dtype - use float64).
    """
    checked = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input requires gradients")
    for t in checked:
        if t.dtype != np.float64:
            raise TypeError(f"gradcheck: use float64 inputs for finite differences, got {t.dtype}")
        t.grad = None

    out = fn(*inputs)
    direction = np.random.default_rng(seed).normal(size=out.shape)
    out.backward(direction)

    def projected():
        with no_grad():
            return float(np.sum(to_numpy(fn(*inputs)) * direction))

    for position, t in enumerate(checked):
        analytic = to_numpy(t.grad)
        original = t.data
        numeric = np.zeros(t.shape)
        for i in np.ndindex(*t.shape):
            nudged = original.copy()
            nudged[i] += eps
            t.data = nudged
            plus = projected()
            nudged[i] -= 2 * eps
            minus = projected()
            numeric[i] = (plus - minus) / (2 * eps)
        t.data = original
        if not np.allclose(analytic, numeric, atol=atol, rtol=rtol):
            worst = tuple(
                int(i) for i in np.unravel_index(np.argmax(np.abs(analytic - numeric)), t.shape)
            )
            raise AssertionError(
                f"gradcheck: gradient of input {position} (shape {t.shape}) differs from "
                f"finite differences; worst at index {worst}: analytic {analytic[worst]:.6g}, "
                f"numeric {numeric[worst]:.6g}"
            )
    return True
