"""Training on several devices with ``jax.sharding``: who holds which bytes.

tinyllm builds no communication layer. It lays the arrays of a step out over a ``Mesh``
of devices (one axis, ``"data"``), each with a ``PartitionSpec`` that says which of its
axes is cut into pieces, and ``jax.jit`` compiles the step for that layout: XLA inserts
the collectives (all-reduce, reduce-scatter, all-gather) the arithmetic needs.

Take 4 devices and a model whose parameters take P bytes (AdamW's two moments: 2P more):

============  ==================  ==================  =====================================
mode          parameters          AdamW moments       what XLA adds to the step
============  ==================  ==================  =====================================
``dp``        all, on every one   all, on every one   an all-reduce (sum) of the gradients
``zero1``     all, on every one   a quarter each      the same, the update of each quarter
                                                      on its device, then all-gathers of
                                                      the new parameters
``fsdp``      a quarter each      a quarter each      all-gathers of the parameters for the
                                                      forward and backward, the gradients
                                                      summed, each device keeping its part
============  ==================  ==================  =====================================

In every mode the batch is cut along its first axis: each device runs forward and
backward on its quarter of the sequences, so the step sees the gradient of the whole
batch, exactly as one device would (up to the order float32 sums are added in). A device
holds P + 2P bytes under ``dp``, P + 2P/4 under ``zero1`` (ZeRO stage 1: the optimizer
state sharded) and 3P/4 under ``fsdp`` (fully sharded data parallel), paying for the saved
memory with the all-gathers.

``Trainer.step_program.as_text()`` shows the compiled step with these operations in it.

An array is cut along its largest axis that the device count divides (``split_axis``);
one that no axis divides (a (65,) bias over 4 devices) stays whole on every device.

Several hosts are the same picture with more devices: ``initialize_processes`` (that is,
``jax.distributed.initialize``) joins the processes, ``jax.devices()`` then lists every
process's devices, and each process feeds its own rows of the batch
(``jax.make_array_from_process_local_data``). Every process runs the same program on the
same global batch; only process 0 writes the run's files (``is_main_process``), but every
process takes part in gathering the arrays a checkpoint holds, since each host holds only
its devices' pieces. ``TrainConfig``'s ``coordinator``, ``num_processes`` and
``process_id`` (``--coordinator HOST:PORT --num-processes N --process-id I`` on the
training commands) say how to join; ``join_processes`` joins as they say.

>>> split_axis((65, 128), 4)   # the vocabulary (65) does not divide by 4, the width does
1
>>> split_axis((65,), 4) is None  # nothing divides: whole on every device
True
>>> for mode in SHARD_MODES:      # (parameter's axis, its moments' axis); None: whole
...     print(mode, split_axes(mode, (65, 128), 4))
dp (None, None)
zero1 (None, 1)
fsdp (1, 1)
"""

import contextlib
import sys

import numpy as np

from ..backend import to_numpy

SHARD_MODES = ("dp", "zero1", "fsdp")
AXIS = "data"  # the mesh's one axis: data parallelism


def split_axis(shape, n_devices):
    """The axis of ``shape`` to cut over ``n_devices``: the largest that they divide (the
    first of equal ones); None when none does, or for one device (the array stays whole)."""
    divisible = [axis for axis, size in enumerate(shape) if size % n_devices == 0]
    if n_devices == 1 or not divisible:
        return None
    return max(divisible, key=lambda axis: (shape[axis], -axis))


def split_axes(mode, shape, n_devices):
    """``(parameter axis, moments axis)``: where ``mode`` cuts a parameter of ``shape`` and
    its AdamW moments over ``n_devices``; None: kept whole on every device."""
    axis = split_axis(shape, n_devices)
    return {"dp": (None, None), "zero1": (None, axis), "fsdp": (axis, axis)}[mode]


def layout_summary(mode, n_devices, shapes):
    """What each of ``n_devices`` holds under ``mode`` of parameters with ``shapes``
    ({name: shape}) and of their AdamW moments, naming the arrays kept whole.

    >>> shapes = {"embedding": (65, 128), "norm.weight": (128,), "head.bias": (65,)}
    >>> print(layout_summary("fsdp", 4, shapes))
    each device holds 26% of the parameters and 26% of each AdamW moment; whole on every device (no axis divides by 4): head.bias
    >>> print(layout_summary("zero1", 4, shapes))
    each device holds 100% of the parameters and 26% of each AdamW moment; whole on every device (no axis divides by 4): head.bias
    """
    sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    held = [0, 0]  # values on one device: of the parameters, of one moment
    for name, shape in shapes.items():
        for which, axis in enumerate(split_axes(mode, shape, n_devices)):
            held[which] += sizes[name] // (1 if axis is None else n_devices)
    total = sum(sizes.values())
    line = (
        f"each device holds {held[0] / total:.0%} of the parameters and "
        f"{held[1] / total:.0%} of each AdamW moment"
    )
    whole = [name for name, shape in shapes.items() if split_axis(shape, n_devices) is None]
    if mode != "dp" and whole:
        line += f"; whole on every device (no axis divides by {n_devices}): {', '.join(whole)}"
    return line


def initialize_processes(coordinator_address, num_processes, process_id):
    """Join this process to a multi-process (multi-host) run: ``jax.distributed.initialize``.

    Call it in every process before JAX touches a device (before a model is built). On the
    CPU the processes reach each other through gloo over TCP; ``coordinator_address`` is
    ``"host:port"`` of process 0.
    """
    import jax

    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def process_settings_problem(coordinator, num_processes, process_id):
    """What is wrong with the settings of a multi-process run, or None when they fit: all
    three or none, ``coordinator`` as ``"host:port"``, ``process_id`` in ``0 ..
    num_processes - 1``.

    >>> process_settings_problem(None, None, None) is None   # one process: nothing to join
    True
    >>> process_settings_problem("10.0.0.1:1234", 2, 1) is None
    True
    >>> process_settings_problem("10.0.0.1:1234", 2, 2)
    'process_id=2 is not in 0 .. 1 (num_processes=2)'
    >>> process_settings_problem("10.0.0.1:1234", 2, None)
    'coordinator, num_processes and process_id go together; process_id is missing'
    """
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    missing = [name for name, value in given.items() if value is None]
    if len(missing) == len(given):
        return None
    if missing:
        return (
            "coordinator, num_processes and process_id go together; "
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing"
        )
    host, _, port = str(coordinator).rpartition(":")
    if not (isinstance(coordinator, str) and host and port.isdigit() and 0 < int(port) < 65536):
        return f"coordinator={coordinator!r}: expected HOST:PORT of process 0, like 10.0.0.1:1234"
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) or num_processes < 1:
        return f"num_processes={num_processes!r} must be an integer >= 1"
    if isinstance(process_id, bool) or not isinstance(process_id, int):
        return f"process_id={process_id!r} must be an integer"
    if not 0 <= process_id < num_processes:
        return f"process_id={process_id} is not in 0 .. {num_processes - 1} (num_processes={num_processes})"
    return None


def join_processes(config, backend):
    """Join the multi-process run that ``config`` (a ``TrainConfig``) describes; nothing
    when it describes none. Call it before ``backend`` (a tinyllm backend) touches a
    device: JAX fixes its devices the first time it uses them."""
    if config.coordinator is None:
        return
    if backend.name != "jax":
        raise ValueError(
            f"coordinator={config.coordinator!r}: training over several processes needs the "
            f"JAX backend, but the backend is {backend.name!r}; use --backend jax"
        )
    initialize_processes(config.coordinator, config.num_processes, config.process_id)


def is_main_process():
    """Whether this process writes the run's files: True alone, and in process 0 of several.

    A run that never imported JAX has no other processes; asking JAX otherwise would make
    it set up its devices, so it is only asked once it is loaded.
    """
    jax = sys.modules.get("jax")
    return jax is None or not jax.distributed.is_initialized() or jax.process_index() == 0


@contextlib.contextmanager
def on_host(parameters):
    """Inside the block each of ``parameters`` whose array is cut across several processes
    holds a NumPy copy of it, gathered by a collective that every process joins, in the
    same order, whether it writes anything or not: call it in every process, then write
    in process 0 alone. After the block the arrays are put back, except where the block
    gave a parameter a new one (a merge). In one process it changes nothing."""
    swapped = []
    for p in parameters:
        if not getattr(p.data, "is_fully_addressable", True):
            swapped.append((p, p.data, to_numpy(p.data)))
    for p, _, copy in swapped:
        p.data = copy
    try:
        yield
    finally:
        for p, array, copy in swapped:
            if p.data is copy:
                p.data = array


class ShardingPlan:
    """Where each array of a training step lives, for ``mode`` over ``devices`` JAX devices
    (None: all of them, every process's); see the module doc.

    ``place_params`` / ``place_state`` / ``place_batch`` put arrays where the plan says;
    ``constrain`` says the same inside the compiled step, so its outputs keep the layout
    (and the donated buffers can be reused).
    """

    def __init__(self, mode="dp", devices=None):
        if mode not in SHARD_MODES:
            raise ValueError(f"shard={mode!r}: expected one of {', '.join(SHARD_MODES)}")
        import jax
        from jax.sharding import Mesh

        available = jax.devices()
        n = len(available) if devices is None else devices
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"devices={devices!r}: expected an integer >= 1")
        if n > len(available):
            raise ValueError(
                f"devices={n}, but JAX sees {len(available)} device(s) here "
                f"({available[0].platform.upper()}); on the CPU, set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before starting "
                "Python to split it into that many devices"
            )
        if jax.process_count() > 1 and n != len(available):
            raise ValueError(
                f"devices={n}: a run over {jax.process_count()} processes uses all "
                f"{len(available)} of their devices"
            )
        self.mode, self.jax = mode, jax
        self.mesh = Mesh(np.array(available[:n]), (AXIS,))

    @property
    def n_devices(self):
        return self.mesh.size

    @property
    def n_processes(self):
        return self.jax.process_count()

    def describe(self):
        processes = self.jax.process_count()
        over = f" in {processes} processes" if processes > 1 else ""
        return f"{self.mode} over {self.n_devices} devices{over}"

    def summary(self, params):
        """``layout_summary`` of ``params`` ({name: array}) under this plan."""
        shapes = {name: tuple(a.shape) for name, a in params.items()}
        return f"{self.describe()}: {layout_summary(self.mode, self.n_devices, shapes)}"

    # --- the layout ---------------------------------------------------------------------
    def param_spec(self, shape):
        """Parameters: whole on every device, except under fsdp."""
        return self._spec(split_axes(self.mode, shape, self.n_devices)[0])

    def state_spec(self, shape):
        """Optimizer moments: whole under dp, cut under zero1 and fsdp."""
        return self._spec(split_axes(self.mode, shape, self.n_devices)[1])

    def check_batch(self, batch_size):
        """A (micro-)batch of ``batch_size`` sequences must split evenly over the devices."""
        if batch_size % self.n_devices:
            raise ValueError(
                f"the micro-batch of {batch_size} sequences does not divide over "
                f"{self.n_devices} devices; make --batch-size / --grad-accum a multiple of "
                f"{self.n_devices}"
            )

    # --- putting arrays there -----------------------------------------------------------
    def place_params(self, params):
        """``{name: array}`` laid out as ``param_spec`` says."""
        return {name: self._put(a, self.param_spec(a.shape)) for name, a in params.items()}

    def place_state(self, state):
        """An optimizer state ``{"step": {name: count}, key: {name: array}}`` laid out:
        the moments as ``state_spec`` says, the step counts whole."""
        placed = {}
        for key, arrays in state.items():
            if key == "step":
                placed[key] = self.place_whole({n: np.int32(c) for n, c in arrays.items()})
            else:
                placed[key] = {n: self._put(a, self.state_spec(a.shape)) for n, a in arrays.items()}
        return placed

    def place_whole(self, arrays):
        """``{name: array}`` placed whole on every device (small numbers a step carries)."""
        return {name: self._put(a, self._whole()) for name, a in arrays.items()}

    def place_batch(self, batch, uneven="error"):
        """Every array in ``batch`` (a tuple, list or dict of them) cut along its first
        axis. Every process passes the same global batch and keeps its own rows. An array
        whose rows do not divide over the devices is an error, or with ``uneven="whole"``
        (an evaluation batch, say) is placed whole on every device."""
        if isinstance(batch, dict):
            return {key: self.place_batch(value, uneven) for key, value in batch.items()}
        if isinstance(batch, (tuple, list)):
            return type(batch)(self.place_batch(value, uneven) for value in batch)
        if np.ndim(batch) == 0:
            return batch  # a number: traced as it is
        host = to_numpy(batch)
        if uneven == "whole" and host.shape[0] % self.n_devices:
            return self._put(host, self._whole())
        self.check_batch(host.shape[0])
        rows = host.shape[0] // self.jax.process_count()
        start = self.jax.process_index() * rows
        sharding = self._sharding(self._batch_spec(host.ndim))
        return self.jax.make_array_from_process_local_data(
            sharding, host[start : start + rows], host.shape
        )

    def constrain(self, params, state):
        """Inside the compiled step: the new parameters and state keep the plan's layout."""
        keep = self.jax.lax.with_sharding_constraint
        params = {n: keep(a, self._sharding(self.param_spec(a.shape))) for n, a in params.items()}
        state = {
            key: {
                n: keep(
                    a, self._sharding(self._whole() if key == "step" else self.state_spec(a.shape))
                )
                for n, a in arrays.items()
            }
            for key, arrays in state.items()
        }
        return params, state

    # --- helpers ------------------------------------------------------------------------
    def _whole(self):
        from jax.sharding import PartitionSpec

        return PartitionSpec()

    def _spec(self, axis):
        """The ``PartitionSpec`` that cuts ``axis`` over the devices (None: whole)."""
        from jax.sharding import PartitionSpec

        return PartitionSpec() if axis is None else PartitionSpec(*[None] * axis, AXIS)

    def _batch_spec(self, ndim):
        from jax.sharding import PartitionSpec

        return PartitionSpec(AXIS, *[None] * (ndim - 1))

    def _sharding(self, spec):
        from jax.sharding import NamedSharding

        return NamedSharding(self.mesh, spec)

    def _put(self, array, spec):
        """``array`` (any backend's, or a number) on the mesh as ``spec`` says; an array
        already laid out so is returned as it is."""
        sharding = self._sharding(spec)
        if isinstance(array, self.jax.Array) and array.sharding.is_equivalent_to(
            sharding, array.ndim
        ):
            return array
        host = to_numpy(array)
        return self.jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


__all__ = [
    "SHARD_MODES",
    "ShardingPlan",
    "initialize_processes",
    "is_main_process",
    "join_processes",
    "layout_summary",
    "on_host",
    "process_settings_problem",
    "split_axes",
    "split_axis",
]
