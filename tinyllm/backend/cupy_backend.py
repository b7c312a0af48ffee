"""The CuPy backend: the NumPy code, run eagerly on an NVIDIA GPU.

It keeps the plain definitions of ``base.py`` (the NumPy backend's matrix-product sums
could round through TF32 on a GPU) and overrides only what CuPy spells differently.

Importing this file never imports CuPy; creating ``CupyBackend()`` does, and fails with
``BackendUnavailable`` saying why when CuPy is missing or sees no CUDA device.
"""

from .base import Backend, BackendUnavailable


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
        self.xp = cupy

    def to_numpy(self, x):
        return self.xp.asnumpy(x)

    def owns(self, x):
        return isinstance(x, self.xp.ndarray)

    def scatter_add(self, target, index, values):
        import cupyx

        cupyx.scatter_add(target, index, values)
        return target

    def erf(self, x):
        from cupyx.scipy.special import erf

        return erf(x).astype(x.dtype, copy=False)

    def synchronize(self):
        self.xp.cuda.Stream.null.synchronize()

    def describe(self):
        props = self.xp.cuda.runtime.getDeviceProperties(self.xp.cuda.Device().id)
        gpu = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return f"CuPy {self.xp.__version__} on {gpu}"
