"""Loss-and-gradient as a pure function, so JAX can compile it with ``jax.jit``.

``jax.jit`` traces a function once with placeholder arrays and compiles what it saw. Our
autograd is ordinary Python that calls ``xp`` functions on arrays, so it traces like any
other JAX code: the forward ops, the tape walk and every backward formula all run at trace
time and land in one compiled XLA program. Two rules make this work, and every op keeps
them: no array is mutated in place, and no Python ``if`` looks at array values.

``value_and_grad(loss_fn)`` turns "a loss computed from Tensors" into
"arrays in -> (loss, gradients) out", the pure shape ``jax.jit`` wants:

>>> import numpy as np, tinyllm
>>> def loss_fn(params, x):
...     return ((x @ params["w"]) ** 2).mean()
>>> step = tinyllm.jit(value_and_grad(loss_fn))   # jax.jit under JAX, as-is on NumPy
>>> loss, grads = step({"w": np.ones((2, 1), np.float32)}, np.ones((3, 2), np.float32))
>>> float(loss), grads["w"].ravel().tolist()
(4.0, [4.0, 4.0])
"""

from .tensor import Tensor


def value_and_grad(loss_fn, has_aux=False):
    """``pure(params, *args) -> (loss, grads)`` from ``loss_fn(params, *args) -> Tensor``.

    ``params`` is a dict (or list) of arrays; inside, each becomes a Tensor that requires
    gradients, so ``loss_fn`` sees Tensors. ``grads`` has the same structure as ``params``;
    a parameter the loss does not depend on gets zeros. ``args`` are passed through as
    they are (arrays, not differentiated).

    With ``has_aux`` (as in ``jax.value_and_grad``), ``loss_fn`` returns ``(loss, aux)``
    and ``pure`` returns ``((loss, aux), grads)``: aux is a dict of numbers it reports
    along the way (an accuracy, a margin), Tensors among them given as their arrays.

    >>> import numpy as np
    >>> def with_size(params, x):
    ...     return ((x @ params["w"]) ** 2).mean(), {"rows": x.shape[0]}
    >>> (loss, aux), grads = value_and_grad(with_size, has_aux=True)(
    ...     {"w": np.ones((2, 1), np.float32)}, np.ones((3, 2), np.float32))
    >>> float(loss), aux
    (4.0, {'rows': 3})
    """

    def pure(params, *args):
        names = list(params) if isinstance(params, dict) else range(len(params))
        tensors = {name: Tensor(params[name], requires_grad=True) for name in names}
        inputs = tensors if isinstance(params, dict) else [tensors[i] for i in names]
        loss = loss_fn(inputs, *args)
        aux = None
        if has_aux:
            loss, aux = loss
            aux = {k: v.data if isinstance(v, Tensor) else v for k, v in aux.items()}
        loss.backward()
        grads = {}
        for name, t in tensors.items():
            xp = t.backend.xp
            grads[name] = xp.zeros_like(t.data) if t.grad is None else t.grad
        if not isinstance(params, dict):
            grads = [grads[i] for i in names]
        return ((loss.data, aux) if has_aux else loss.data), grads

    return pure
