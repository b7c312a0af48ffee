"""``Optimizer``: what SGD and AdamW share - parameter groups, state, and checkpoints.

An optimizer keeps its parameters in *groups*, each a dict holding the parameters, their
names and the group's own settings (``lr``, ``weight_decay``, ...): see ``param_groups.py``
for how they are made (a Module gives two, so that norm weights and biases are not
decayed). Change ``lr`` between steps with ``opt.lr = ...`` (every group) or
``opt.param_groups[i]["lr"] = ...``: that is how a schedule drives it.

The state is, per parameter name, a step count and the optimizer's arrays (AdamW's
``exp_avg`` and ``exp_avg_sq``, SGD's ``momentum_buffer``), in ``opt.state``:
``{"step": {name: int}, "exp_avg": {name: array}, ...}``. A parameter whose ``.grad`` is
None is skipped and keeps its step count, as in PyTorch.

There are two ways to take a step:

- eager, ``opt.step()``, from each parameter's ``.grad``. NumPy and CuPy arrays can be
  written in place, so the state of a group lives in one flat buffer per key (the
  per-name arrays are views into it), the arithmetic runs as a few passes over the
  whole group, not a loop over many small arrays, and each parameter's array is updated
  in place: ``p.data`` stays the same object. JAX arrays are immutable, so there the
  step calls the pure ``update`` below, compiled, and sets ``p.data`` to the new arrays
  it returns.
- pure, for a compiled training step: ``state = opt.init_state(params)``, then
  ``params, state = opt.update(params, grads, state, lr)`` on dicts of arrays. Only the
  group settings are read from the optimizer object; nothing in it changes.
"""

import numbers

import numpy as np

from ..backend import backend_of
from .param_groups import make_param_groups


class Optimizer:
    """Base class: groups, state, ``step``, ``update`` and checkpoints. See the module doc.

    A subclass names its ``hyperparameters`` (``lr`` first), the ``non_negative`` ones
    and its ``state_keys``, checks other values in ``_check``, and writes its update
    twice: ``_update_arrays`` in plain array ops (pure: for JAX and ``update``) and
    ``_step_in_place``, in place over a group's flat NumPy/CuPy buffers.
    """

    hyperparameters = ("lr", "weight_decay")
    skips_on_device = False  # whether step(only_if=...) works: _step_in_place takes only_if
    non_negative = ("lr", "weight_decay")  # settings that must be numbers >= 0
    state_keys = ()

    def __init__(self, params, **defaults):
        self.defaults = {key: self._check(key, value) for key, value in defaults.items()}
        self.param_groups = make_param_groups(params, self.defaults, type(self).__name__)
        for index, group in enumerate(self.param_groups):
            for key in self.hyperparameters:
                group[key] = self._check(key, group[key], index)
        self._group_of = {name: g for g in self.param_groups for name in g["names"]}
        self._state = None  # made on first use, so init_state/update alone allocate nothing
        self._flat = None  # per group: flat buffers on NumPy/CuPy, None on JAX
        self._compiled_update = None
        self.skipped = None  # steps step(only_if=...) did not take: a 0-d int array, or None

    # --- settings ----------------------------------------------------------------------
    def _check(self, key, value, group=None):
        """``value`` if it is a valid ``key`` setting, else a ValueError that names it."""
        if key in self.non_negative:
            return _non_negative(self, key, value, group)
        raise NotImplementedError(f"{type(self).__name__} does not check {key!r}")

    @property
    def lr(self):
        """The learning rate of every group (an error if the groups differ)."""
        rates = [group["lr"] for group in self.param_groups]
        if len(set(rates)) > 1:
            raise ValueError(
                f"{type(self).__name__}: the groups have different learning rates {rates}; "
                "read them from opt.param_groups[i]['lr']"
            )
        return rates[0]

    @lr.setter
    def lr(self, value):
        value = self._check("lr", value)
        for group in self.param_groups:
            group["lr"] = value

    def named_parameters(self):
        """(name, parameter) for every parameter, group by group."""
        for group in self.param_groups:
            yield from zip(group["names"], group["params"])

    def zero_grad(self):
        """Drop every parameter's gradient (``backward`` adds into ``.grad``)."""
        for _, p in self.named_parameters():
            p.grad = None

    # --- the pure form -----------------------------------------------------------------
    def init_state(self, params):
        """Fresh state for ``params`` ({name: array}): step 0 and zeros like each array."""
        self._check_names(params, "init_state")
        state = {"step": {name: 0 for name in params}}
        for key in self.state_keys:
            state[key] = {name: backend_of(a).xp.zeros_like(a) for name, a in params.items()}
        return state

    def update(self, params, grads, state, lr=None):
        """``(new_params, new_state)`` after one step; pure, so ``jax.jit`` can compile it.

        ``params`` and ``grads`` are {name: array}, ``state`` comes from ``init_state`` or
        an earlier ``update``. ``lr`` is one number for every group (under ``jit``, pass it:
        a group's ``lr`` read here would be frozen into the compiled step).
        """
        self._check_names(params, "update")
        new_params, new_state = {}, {key: {} for key in ("step", *self.state_keys)}
        for group in self.param_groups:
            names = [name for name in group["names"] if name in params]
            if not names:
                continue
            part_state = {key: {n: state[key][n] for n in names} for key in new_state}
            part_params, part_state = self._update_group(
                {n: params[n] for n in names},
                {n: grads[n] for n in names},
                part_state,
                group["lr"] if lr is None else lr,
                self._hyper(group),
            )
            new_params.update(part_params)
            for key in new_state:
                new_state[key].update(part_state[key])
        return new_params, new_state

    def _update_group(self, params, grads, state, lr, hyper):
        """``update`` for the names of one group, whose settings other than lr are ``hyper``."""
        new_params, new_state = {}, {key: {} for key in state}
        for name in params:
            step = state["step"][name] + 1
            slots = {key: state[key][name] for key in self.state_keys}
            new_params[name], slots = self._update_arrays(
                params[name], grads[name], slots, step, lr, hyper
            )
            new_state["step"][name] = step
            for key in self.state_keys:
                new_state[key][name] = slots[key]
        return new_params, new_state

    def _hyper(self, group):
        """The group's settings other than lr, as a hashable tuple (static under jit)."""
        return tuple(group[key] for key in self.hyperparameters[1:])

    def _check_names(self, arrays, where):
        unknown = sorted(set(arrays) - set(self._group_of))
        if unknown:
            raise KeyError(
                f"{type(self).__name__}.{where}: no parameters named {unknown}; "
                f"this optimizer has {sorted(self._group_of)}"
            )

    # --- the eager step ----------------------------------------------------------------
    @property
    def state(self):
        """``{"step": {name: int}, key: {name: array}}`` for every parameter."""
        if self._state is None:
            self._state = self.init_state({n: p.data for n, p in self.named_parameters()})
            self._flat = [self._pack(group) for group in self.param_groups]
        return self._state

    def step(self, only_if=None):
        """Update every parameter that has a ``.grad``; the others are left as they are.

        ``only_if``, a 0-d boolean array, makes the step conditional without reading it back
        to the host: where it is False, parameters and state stay as they were, and the step
        does not count. How a training loop skips a non-finite step on a GPU; only
        optimizers with ``skips_on_device`` (AdamW) take it, and every parameter needs a
        gradient. The counts in ``state["step"]`` advance on the host all the same, and
        ``skipped``, on the device, counts the steps not taken; the bias corrections
        subtract it there, and ``settle_counts`` (which ``state_dict`` calls) takes it off
        the counts.
        """
        if only_if is not None:
            self._check_skippable()
        condition = {} if only_if is None else {"only_if": only_if}
        self._check_before_step()
        steps = self.state["step"]
        skipped = 0 if self.skipped is None else self.skipped
        for group, flat in zip(self.param_groups, self._flat):
            if flat is None:
                self._step_functional(group, only_if, skipped)
            else:
                for start, stop in _runs(group, steps):
                    params = group["params"][start:stop]
                    lo, hi = flat["offsets"][start], flat["offsets"][stop]
                    grad = flat["grad"][lo:hi]  # (n,) scratch the update may overwrite
                    backend_of(grad).xp.concatenate([p.grad.reshape(-1) for p in params], out=grad)
                    state = {key: flat[key][lo:hi] for key in self.state_keys}
                    step = steps[group["names"][start]] - skipped  # the steps taken
                    self._step_in_place(group, params, grad, state, step, **condition)
            for name, p in zip(group["names"], group["params"]):
                if p.grad is not None:
                    steps[name] += 1
        if only_if is not None:
            not_taken = (~backend_of(only_if).xp.asarray(only_if)).astype(np.int32)
            self.skipped = not_taken + skipped

    def settle_counts(self, skipped=None):
        """Take the steps ``step(only_if=...)`` did not take off the counts: ``skipped``,
        their number when the caller has read it already, else one read of ``self.skipped``."""
        if self.skipped is None:
            return
        if skipped is None:
            skipped = int(backend_of(self.skipped).to_numpy(self.skipped))
        self.skipped = None
        for name in self.state["step"]:
            self.state["step"][name] -= int(skipped)

    def _check_skippable(self):
        if not self.skips_on_device:
            raise TypeError(
                f"{type(self).__name__}.step cannot skip a step on the device (only_if)"
            )
        missing = [name for name, p in self.named_parameters() if p.grad is None]
        if missing:
            raise ValueError(
                f"{type(self).__name__}.step(only_if=...) needs a gradient for every "
                f"parameter; {missing} have none"
            )

    def _check_before_step(self):
        """Every setting (one may have been set in param_groups) and gradient shape, so a
        bad one stops the step before any parameter changes."""
        for index, group in enumerate(self.param_groups):
            for key in self.hyperparameters:
                group[key] = self._check(key, group[key], index)
            for name, p in zip(group["names"], group["params"]):
                if p.grad is not None and tuple(p.grad.shape) != tuple(p.data.shape):
                    raise ValueError(
                        f"{type(self).__name__}.step: the gradient of {name} has shape "
                        f"{tuple(p.grad.shape)}, expected {tuple(p.data.shape)}"
                    )

    def _step_functional(self, group, only_if=None, skipped=0):
        """A step for immutable (JAX) arrays: the compiled pure update, then store its output."""
        live = [(n, p) for n, p in zip(group["names"], group["params"]) if p.grad is not None]
        if not live:
            return
        if self._compiled_update is None:
            backend = live[0][1].backend
            self._compiled_update = backend.jit(self._update_group, static_argnames="hyper")
        keys = ("step", *self.state_keys)
        state = {key: {n: self.state[key][n] for n, _ in live} for key in keys}
        state["step"] = {n: count - skipped for n, count in state["step"].items()}  # taken
        new_params, new_state = self._compiled_update(
            {n: p.data for n, p in live},
            {n: p.grad for n, p in live},
            state,
            group["lr"],
            hyper=self._hyper(group),
        )
        keep = (lambda new, old: new) if only_if is None else _where(only_if)
        for name, p in live:
            p.data = keep(new_params[name], p.data)
            for key in self.state_keys:
                self.state[key][name] = keep(new_state[key][name], self.state[key][name])

    def _pack(self, group):
        """Move the group's state into one flat buffer per key (NumPy, CuPy); None on JAX.

        The per-name arrays in ``self.state`` become views into those buffers, so a step
        can update a whole group in one pass per operation. ``offsets[i]`` is where
        parameter ``i`` starts; ``grad`` is scratch space the gradients are gathered into.
        """
        backend = group["params"][0].backend
        if not backend.mutable_arrays:
            return None  # JAX: a step stores the new arrays of the pure update instead
        xp, sizes = backend.xp, [p.size for p in group["params"]]
        dtype = np.result_type(*(p.dtype for p in group["params"]))
        flat = {"offsets": np.concatenate([[0], np.cumsum(sizes)]).tolist()}
        flat["grad"] = xp.empty(flat["offsets"][-1], dtype=dtype)
        for key in self.state_keys:
            arrays = [self._state[key][name].reshape(-1) for name in group["names"]]
            flat[key] = xp.concatenate(arrays).astype(dtype, copy=False)
            for name, view in zip(group["names"], split(flat[key], group["params"])):
                self._state[key][name] = view
        return flat

    # --- checkpoints -------------------------------------------------------------------
    def state_dict(self, state=None):
        """The state as ``{"step": {name: int}, key: {name: NumPy array}}``, copied.

        ``state`` is a state from ``init_state``/``update`` (a compiled JAX loop keeps its
        own); left out, the optimizer's. Settings (lr, betas, ...) are not included: give
        them to the constructor, and drive lr from the step count with a schedule.
        """
        if state is None:
            self.settle_counts()
            state = self.state
        out = {"step": {name: int(step) for name, step in state["step"].items()}}
        for key in self.state_keys:
            out[key] = {name: np.array(backend_of(a).to_numpy(a)) for name, a in state[key].items()}
        return out

    def load_state_dict(self, state_dict):
        """Load a ``state_dict()``; every name, shape and step is checked before any is set."""
        owner = f"{type(self).__name__}.load_state_dict"
        keys = ("step", *self.state_keys)
        _same_names(owner, "keys", set(state_dict), keys)
        params = dict(self.named_parameters())
        for key in keys:
            _same_names(owner, f"{key!r} names", set(state_dict[key]), params)
        for name, step in state_dict["step"].items():
            if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
                raise ValueError(f"{owner}: step of {name} is {step!r}, expected an int >= 0")
        for key in self.state_keys:
            for name, value in state_dict[key].items():
                if tuple(np.shape(value)) != params[name].shape:
                    raise ValueError(
                        f"{owner}: {key} of {name} has shape {tuple(np.shape(value))}, "
                        f"expected {params[name].shape}"
                    )
        self._state = {"step": {name: int(s) for name, s in state_dict["step"].items()}}
        self.skipped = None
        for key in self.state_keys:
            self._state[key] = {
                name: p.backend.asarray(np.asarray(state_dict[key][name], dtype=p.dtype))
                for name, p in params.items()
            }
        self._flat = [self._pack(group) for group in self.param_groups]
        return self

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for group in self.param_groups:
            settings = ", ".join(f"{k}={group[k]}" for k in self.hyperparameters)
            count = sum(p.size for p in group["params"])
            lines.append(f"  {len(group['params'])} arrays, {count:,} values: {settings}")
        return "\n".join(lines + [")"])


# --- helpers ---------------------------------------------------------------------------
def _non_negative(owner, key, value, group=None):
    where = "" if group is None else f" in param group {group}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(
            f"{type(owner).__name__}: {key}{where} must be a number >= 0, got {value!r}"
        )
    return float(value)


def _same_names(owner, what, given, expected):
    missing, unexpected = sorted(set(expected) - given), sorted(given - set(expected))
    if missing or unexpected:
        raise KeyError(
            f"{owner}: {what} missing {missing or 'nothing'}, unexpected {unexpected or 'nothing'}"
        )


def _where(condition):
    """``(new, old) -> new where condition else old``, for one 0-d boolean ``condition``."""
    return lambda new, old: backend_of(new).xp.where(condition, new, old)


def split(flat, params):
    """Views of a flat buffer shaped like each of ``params``, in order (no copies)."""
    start = 0
    for p in params:
        size = p.data.size
        yield flat[start : start + size].reshape(p.data.shape)
        start += size


def _runs(group, steps):
    """(start, stop) of each run of neighbouring parameters that have a gradient and the
    same step count: usually one run, the whole group, which one set of passes updates."""
    runs = []
    names, params = group["names"], group["params"]
    for i, (name, p) in enumerate(zip(names, params)):
        if p.grad is None:
            continue
        if runs and runs[-1][1] == i and steps[names[runs[-1][0]]] == steps[name]:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return runs


__all__ = ["Optimizer"]
