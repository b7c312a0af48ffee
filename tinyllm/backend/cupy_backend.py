"""The CuPy backend: the NumPy code, run eagerly on an NVIDIA GPU.

It keeps the plain definitions of ``base.py`` (the NumPy backend's matrix-product sums
could round through TF32 on a GPU) and overrides only what CuPy spells differently.

Run eagerly, every NumPy-style expression is a kernel of its own, reading its inputs from
GPU memory and writing a temporary back. So the elementwise chains of a step (``fused.py``:
GELU, SiLU and SwiGLU forward and backward, the normalisations' tails, softmax's
exponential and normalisation, cross-entropy's gradient) are compiled with ``cupy.fuse``,
each into one kernel, on first use. AdamW's update runs as two ``ElementwiseKernel``s with
in/out parameters (below), which write the moments, the update and the parameters in place.

Importing this file never imports CuPy; creating ``CupyBackend()`` does, and fails with
``BackendUnavailable`` saying why when CuPy is missing or sees no CUDA device.
"""

from .base import Backend, BackendUnavailable

# Chains of fused.py that update their first arguments in place, as CUDA C: the inputs (the
# chain's other arguments, then the flag ``ok``) and the in/out parameters (its first
# arguments, which the kernel reads and overwrites). Each body is its chain, line for line.
IN_PLACE_KERNELS = {
    "adamw_moments": (
        "T beta1, T beta2, T step_size, T eps_hat, bool ok",
        "T g, T m, T v",
        """
        T m_new = beta1 * m + (1 - beta1) * g;
        T v_new = beta2 * v + (1 - beta2) * (g * g);
        if (ok) {
            g = m_new / (sqrt(v_new) + eps_hat) * step_size;
            m = m_new;
            v = v_new;
        }
        """,
    ),
    "decayed_step": (
        "T update, T decay, bool ok",
        "T p",
        "if (ok) p = p * decay - update;",
    ),
}


class CupyBackend(Backend):
    name = "cupy"

    def __init__(self):
        try:
            import cupy
        except ImportError as err:
            raise BackendUnavailable(
                "the 'cupy' backend needs CuPy, which is not installed "
                f"({err}); install it with: pip install 'tinyllm[cupy]'"
            ) from None
        try:
            n_devices = cupy.cuda.runtime.getDeviceCount()
        except Exception as err:  # CUDARuntimeError when no driver is present
            raise BackendUnavailable(
                f"CuPy {cupy.__version__} is installed but cannot reach a CUDA device: {err}"
            ) from None
        if n_devices == 0:
            raise BackendUnavailable(
                f"CuPy {cupy.__version__} is installed but no CUDA device is visible"
            )
        super().__init__()
        self.xp = cupy
        self._kernels = {}  # compiled on first use: {chain: kernel}

    def to_numpy(self, x):
        return self.xp.asnumpy(x)

    def reads_values(self, x):
        return False  # a read would wait for the GPU: ids are checked on the host instead

    def owns(self, x):
        return isinstance(x, self.xp.ndarray)

    def scatter_add(self, target, index, values):
        import cupyx

        cupyx.scatter_add(target, index, values)
        return target

    def erf(self, x):
        from cupyx.scipy.special import erf

        return erf(x).astype(x.dtype, copy=False)

    def fused(self, chain):
        kernel = self._kernels.get(chain)
        if kernel is None:
            kernel = self._kernels[chain] = fuse(self.xp, chain)
        return kernel

    def update_in_place(self, chain, *args, where=True):
        if chain.__name__ not in IN_PLACE_KERNELS:
            return super().update_in_place(chain, *args, where=where)  # fused, then copied
        kernel = self._kernels.get(chain)
        if kernel is None:
            in_params, out_params, body = IN_PLACE_KERNELS[chain.__name__]
            kernel = self.xp.ElementwiseKernel(
                in_params, out_params, body, f"tinyllm_{chain.__name__}"
            )
            self._kernels[chain] = kernel
        kernel(*args[kernel.nout :], where, *args[: kernel.nout])

    def synchronize(self):
        self.xp.cuda.Stream.null.synchronize()

    def describe(self):
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"CuPy {self.xp.__version__} on {gpu}"


def fuse(cupy, chain):
    """``chain`` of ``fused.py`` compiled by ``cupy.fuse``: one kernel per input dtypes."""

    def kernel(*args):
        return chain(cupy, *args)

    return cupy.fuse(kernel_name=f"tinyllm_{chain.__name__}")(kernel)
