"""The JAX backend: the same op code on ``jax.numpy``, compiled with ``jax.jit``.

JAX arrays are immutable, which is why no tinyllm op mutates an array in place: the
in-place spellings NumPy allows are offered functionally by the backend instead
(``scatter_add`` here becomes ``target.at[index].add(values)``).

float32 means float32 here as on the other backends: on an NVIDIA GPU since Ampere, JAX's
default precision multiplies float32 arrays through TF32, rounding each input to 10 bits of
mantissa (a relative 1e-3), where NumPy, CuPy and PyTorch multiply in full float32 unless
asked. So creating the backend sets ``jax_default_matmul_precision`` to ``"highest"``, unless
it was already set (``JAX_DEFAULT_MATMUL_PRECISION=tensorfloat32`` keeps TF32). The fast
products are asked for by name: ``tinyllm.precision("bfloat16")`` (``precision.py``).

Importing this file never imports JAX; creating ``JaxBackend()`` does.
"""

import warnings

import numpy as np

from .base import Backend, BackendUnavailable


class JaxBackend(Backend):
    name = "jax"
    mutable_arrays = False

    def __init__(self):
        try:
            import jax
            import jax.numpy as jnp
        except ImportError as err:
            raise BackendUnavailable(
                "the 'jax' backend needs JAX, which is not installed "
                f"({err}); install it with: pip install 'tinyllm[jax]'"
            ) from None
        super().__init__()
        if jax.config.jax_default_matmul_precision is None:  # float32 products in float32
            jax.config.update("jax_default_matmul_precision", "highest")
        self.jax = jax
        self.xp = jnp
        self._kernel_runs = {}  # flash_attention's (kernel, shapes, dtype, scale) -> it compiles

    def to_numpy(self, x):
        if isinstance(x, self.jax.Array) and not x.is_fully_addressable:
            # cut over several processes (a multi-host run): every process gathers it
            from jax.experimental import multihost_utils

            x = multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(self.jax.device_get(x))

    def to_floats(self, values):
        # device_get starts every copy before it waits: one wait, and no stacking program
        # to compile for each new count of values. (Arrays cut over several processes take
        # the stacked read, which gathers them.)
        jax = self.jax
        if all(v.is_fully_addressable for v in values if isinstance(v, jax.Array)):
            return [float(v) for v in jax.device_get(list(values))]
        return super().to_floats(values)

    def constant(self, key, make):
        # The NumPy array itself: under jax.jit it is then a literal of the program, which XLA
        # folds into the operations that use it (a jax.Array would be read from memory).
        return make()

    def owns(self, x):
        # Concrete arrays and the tracers jax.jit passes in are both jax.Array.
        return isinstance(x, self.jax.Array)

    def is_traced(self, x):
        return isinstance(x, self.jax.core.Tracer)

    def scatter_add(self, target, index, values):
        return target.at[index].add(values)

    def top_k(self, x, k):
        return self.jax.lax.top_k(x, k)

    def after(self, array, token):
        # array + 0 * token[0]: a new value that waits for token. XLA cannot fold the zero
        # away (0 * inf is NaN), so the recomputation neither merges with the first pass nor
        # runs before the gradient arrives. jax.checkpoint's optimization_barrier does not
        # hold on XLA:CPU, which removes barriers before it orders the program.
        array = self.xp.asarray(array)  # (a dropout key's part may be a Python int)
        zero = token.reshape(-1)[0] * 0
        return array + zero.astype(array.dtype)

    def slice_at(self, x, start, length, axis=0):
        return self.jax.lax.dynamic_slice_in_dim(x, start, length, axis)

    def write_at(self, target, values, start, axis=0):
        return self.jax.lax.dynamic_update_slice_in_dim(target, values, start, axis)

    def set_rows(self, target, index, values):
        return target.at[index].set(values)

    def erf(self, x):
        return self.jax.scipy.special.erf(x)

    def uniform(self, seed, shape, dtype=np.float32):
        parts = seed if isinstance(seed, tuple) else (seed,)  # an int, or a tuple of ints
        if not any(self.is_traced(part) for part in parts):
            return super().uniform(seed, shape, dtype)  # same numbers as NumPy
        # A traced seed (inside jax.jit) cannot reach the host: draw on the device.
        key = self.jax.random.PRNGKey(0)
        for part in parts:
            key = self.jax.random.fold_in(key, part)
        return self.jax.random.uniform(key, shape, dtype)

    # The kernel of jax.nn.dot_product_attention that causal attention in 16 bits takes:
    # "cudnn" (cuDNN's FlashAttention, NVIDIA GPUs), "xla" (the same math as tinyllm's own,
    # which lets a CPU test this path) or None (tinyllm's own). "auto": cuDNN on a GPU.
    flash_kernel = "auto"

    def flash_attention(self, q, k, v, scale, dtype):
        kernel = self.flash_kernel
        if kernel == "auto":
            kernel = "cudnn" if self.jax.default_backend() == "gpu" else None
        if kernel is None:
            return None
        jax = self.jax

        def attend(q, k, v):  # tinyllm's (B, H, T, D) is jax.nn's (B, T, H, D), transposed
            q, k, v = (x.astype(dtype).swapaxes(1, 2) for x in (q, k, v))
            out = jax.nn.dot_product_attention(
                q, k, v, scale=scale, is_causal=True, implementation=kernel
            )
            return out.swapaxes(1, 2).astype(self.xp.float32)

        dtype_name = np.dtype(dtype).name
        key = (kernel, q.shape, k.shape, dtype_name, scale)
        if key not in self._kernel_runs:  # compile it alone once, forward and backward
            error = self._compile_error(attend, q, k, v)
            if error is not None:
                warnings.warn(
                    f"attention: the {kernel!r} kernel cannot run q {tuple(q.shape)} in "
                    f"{dtype_name} here ({error}); tinyllm computes attention itself",
                    stacklevel=2,
                )
            self._kernel_runs[key] = error is None
        return jax.vjp(attend, q, k, v) if self._kernel_runs[key] else None  # (out, backward)

    def _compile_error(self, attend, *inputs):
        """What stops ``attend`` and its backward from compiling for arrays shaped as
        ``inputs`` (jax checks cuDNN, the card and the shapes as it traces, XLA the rest as
        it compiles), or None."""
        jax = self.jax

        def forward_backward(*inputs):
            out, backward = jax.vjp(attend, *inputs)
            return out, backward(out)

        shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in inputs]
        try:
            jax.jit(forward_backward).lower(*shapes).compile()
        except Exception as err:  # noqa: BLE001 - whatever jax or XLA refuse, fall back
            return f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        return None

    def update_in_place(self, chain, *args, where=True):
        raise TypeError(
            f"update_in_place({chain.__name__}): JAX arrays are immutable; call the chain "
            "through backend.fused and use the arrays it returns"
        )

    def jit(self, fn, **kwargs):
        return self.jax.jit(fn, **kwargs)

    def synchronize(self):
        self.xp.zeros(()).block_until_ready()

    def describe(self):
        devices = self.jax.devices()
        kinds = sorted({d.platform.upper() for d in devices})
        return f"JAX {self.jax.__version__} on {len(devices)} {'/'.join(kinds)} device(s)"
