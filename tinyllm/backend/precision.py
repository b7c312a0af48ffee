"""Mixed precision: float32 weights, matrix products in bfloat16 or float16.

A transformer spends its time in matrix products, and a GPU's tensor cores multiply 16-bit
numbers many times faster than 32-bit ones while moving half the bytes. Mixed precision
takes that speed where it is safe and keeps float32 everywhere else:

    what                                              dtype
    parameters, their gradients, AdamW's m and v      float32   the "master weights"
    the two inputs of a matmul or attention product   bfloat16 or float16, cast on the way in
    the sums inside the product                       float32   accumulated so
    the product's result                              float32   returned so
    softmax, norms, losses, the residual stream       float32   never cast

Why the line falls there:

- **bfloat16: float32's range, few digits.** bf16 keeps float32's 8-bit exponent and cuts
  the mantissa from 23 bits to 7: every float32 value from 1e-38 to 3e38 has a bf16
  neighbour about 0.4% (2^-8) away. Nothing overflows that did not already, so training
  needs no other care.
- **float16: more digits, narrow range.** fp16 has a 10-bit mantissa (0.05%) but a 5-bit
  exponent: its largest value is 65504, and below 6e-8 everything is 0. Activations fit;
  small gradients (1e-8 is common deep in a model) flush to zero. Loss scaling multiplies
  the loss by a large S (2^16) before backward, so every gradient is S times larger and
  lands inside fp16's range; in float32 they are divided by S again, before clipping and
  the update. Too large an S overflows a product to inf: that step is skipped and S halved
  (``LossScaler`` in ``tinyllm.train.loss_scaling``). bf16 needs none of this.
- **Sums in float32.** A product over C = 1024 inputs adds 1024 terms; in bf16 each
  addition would round away whatever is below 1/256 of the running sum. Tensor cores
  multiply 16-bit inputs and add in float32 (cuBLAS's ``CUBLAS_COMPUTE_32F``, which CuPy
  uses for float16; ``preferred_element_type=float32`` asks XLA for it under JAX).
- **Softmax, norms and losses in float32.** They exponentiate, average squares and take
  logs, where a 0.4% error becomes a large one, and they cost little time. PyTorch's
  autocast keeps the same list in float32.
- **Master weights in float32.** An update ``lr * g`` is often below 1/256 of the weight:
  added to a bf16 weight it would round away, and the weight would never move.

Each backend offers what its array library can do fast:

    numpy  float32 only: the reference stays exact (NumPy has no fast 16-bit products)
    jax    float32, bfloat16, float16 (fast on GPUs and TPUs; on a CPU it runs, slowly)
    cupy   float32, float16 (CuPy has no bfloat16 dtype of its own; float16 is the safe path)

The policy is set for a block, like the backend, and read by the ops that run in it
(``functional/linalg.py``, ``functional/attention.py``); the ``Trainer`` sets it from
``TrainConfig.dtype``, ``generate`` from its ``dtype=``:

>>> import tinyllm
>>> tinyllm.compute_dtype()
'float32'
>>> with tinyllm.precision("bfloat16"):
...     tinyllm.compute_dtype()
'bfloat16'
>>> tinyllm.compute_dtype()  # back to float32 after the block
'float32'

Under JAX the policy is read while ``jax.jit`` traces: a compiled function keeps the
precision it was traced under, so compile inside the block.
"""

import contextlib
import contextvars

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
DTYPE_HELP = (  # --dtype's help, for training and for generation alike
    "the dtype of matmuls and attention (the weights stay float32, and in training the "
    "gradients and AdamW's moments): bfloat16 on JAX, float16 on JAX or CuPy (training "
    "with loss scaling)"
)
SUPPORTED = {  # backend name -> the compute dtypes its products run in
    "numpy": ("float32",),
    "jax": ("float32", "bfloat16", "float16"),
    "cupy": ("float32", "float16"),
}

_policy = contextvars.ContextVar("tinyllm_compute_dtype", default="float32")


def _checked_name(dtype):
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(
            f"unknown compute dtype {dtype!r}; expected one of {', '.join(COMPUTE_DTYPES)}"
        )
    return dtype


@contextlib.contextmanager
def precision(dtype):
    """Run matrix products in ``dtype`` ("float32", "bfloat16" or "float16") in the block.

    Whether the backend supports it is checked where a product runs (see
    ``check_compute_dtype``).
    """
    token = _policy.set(_checked_name(dtype))
    try:
        yield dtype
    finally:
        _policy.reset(token)


def compute_dtype():
    """The compute dtype in force here: "float32" outside any ``precision`` block."""
    return _policy.get()


def check_compute_dtype(backend, dtype):
    """Raise a ValueError unless ``backend`` can run its products in ``dtype``.

    >>> from tinyllm.backend import get_backend
    >>> check_compute_dtype(get_backend("numpy"), "bfloat16")
    Traceback (most recent call last):
    ...
    ValueError: compute dtype 'bfloat16' is not available on the 'numpy' backend, which computes in float32 only; use the 'jax' backend for bfloat16 or float16, or 'cupy' for float16
    """
    dtype = _checked_name(dtype)
    if dtype in SUPPORTED[backend.name]:
        return
    if backend.name == "cupy":
        raise ValueError(
            f"compute dtype {dtype!r} is not available on the 'cupy' backend: CuPy has no "
            "bfloat16 dtype of its own; use float16 (with loss scaling), or the 'jax' "
            "backend for bfloat16"
        )
    raise ValueError(
        f"compute dtype {dtype!r} is not available on the '{backend.name}' backend, which "
        "computes in float32 only; use the 'jax' backend for bfloat16 or float16, or "
        "'cupy' for float16"
    )


def product_dtype(backend):
    """The array dtype products on ``backend`` cast their inputs to under the policy in
    force, or None when they stay float32. Raises when ``backend`` cannot."""
    name = _policy.get()
    if name == "float32":
        return None  # the common case, first: one lookup per product
    check_compute_dtype(backend, name)
    return getattr(backend.xp, name)  # jnp.bfloat16, cupy.float16, ...


def lower(x, dtype):
    """``x`` cast to ``dtype`` for a product where it holds float32 values; else ``x``."""
    if dtype is None or x.dtype != "float32":
        return x
    return x.astype(dtype)


def matmul_f32(a, b):
    """``a @ b`` of two bfloat16 or float16 arrays, summed in float32 and returned in float32.

    JAX asks XLA for float32 sums and a float32 result (``preferred_element_type``), at the
    default precision: the JAX backend's ``"highest"`` (``jax_backend.py``) is for float32
    products, and the inputs here are 16-bit already. CuPy's float16 product sums in float32
    inside cuBLAS and writes float16, widened here.
    """
    xp = _namespace(a)
    if xp.__name__.startswith("jax"):
        return xp.matmul(a, b, preferred_element_type=xp.float32, precision="default")
    return xp.matmul(a, b).astype(xp.float32)


def _namespace(x):
    from . import backend_of  # the package imports this module: look it up at the call

    return backend_of(x).xp
