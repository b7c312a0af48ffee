"""How a training step runs: ``StepExecution``, the part of ``Trainer`` between the loop
and the arrays. The loop (``trainer.py``) calls ``_train_step`` once a step and
``_read_back`` at a log, evaluation or checkpoint step; everything in between is here.

One function, ``_gradients``, makes a step's loss, metrics, clipped gradients and their
norm: micro-batch by micro-batch through ``value_and_grad``, each with its own dropout key
``(seed, step, micro-batch)``. Both executions run it. On NumPy and CuPy it runs eagerly
and the optimizer then updates the parameters in place (a few passes over flat buffers).
Under JAX the whole step, ``_gradients`` and the optimizer's pure ``update``, is one
function ``(params, opt_state, micro_batches, lr, step, guard) -> (params, opt_state, loss,
grad_norm, metrics, guard)`` compiled with ``jax.jit``: tinyllm's autograd is traced into
it. It is traced and compiled once, at the first step (``compile_seconds``, logged with that
step), and then only run. Its parameters and optimizer state are *donated*: XLA writes the
new ones into the old ones' memory, so a step keeps one copy of them, not two (the old
arrays are gone after the call; a step that is not taken returns them unchanged).

Neither execution reads a number back to the host inside a step. The loss, the gradient
norm and the metrics stay device arrays, and whether to take the step is decided on the
device from the *guard* (``_next_guard``) that each step hands to the next: whether every
step so far was finite and, under float16, the loss scale and its rule's count of good
steps. Eagerly AdamW takes or skips the step there (``step(only_if=...)``; a skipped step
does not count for its bias corrections); the compiled step keeps its old arrays. All the
numbers are copied back in one transfer only at a log, evaluation or checkpoint step
(``_read_back``), which then raises for a step that diverged (with the weights from before
it). So a GPU queues step after step without waiting. Only an optimizer that cannot skip on
the device reads each step's numbers.

With ``config.shard`` (or ``config.devices`` > 1) the compiled step runs over several JAX
devices, each on its rows of the batch, with the parameters and AdamW's moments laid out
as ``sharding.py`` explains (``dp``, ``zero1``, ``fsdp``); XLA adds the communication.
Over several processes (``config.num_processes``, joined by ``join_processes`` before the
model was built) the step runs over every process's devices, ``dp`` unless ``shard`` says
otherwise.

``config.dtype`` sets the compute dtype (``backend/precision.py``) around ``_gradients`` and
the validation loss, so it is in force while ``jax.jit`` traces them: matmuls and attention
in bfloat16 or float16, the rest - weights, gradients, AdamW's moments - in float32. Under
float16 a ``LossScaler`` (``loss_scaling.py``) scales the loss before backward, unscales the
gradients before clipping, and skips a step whose gradients overflowed (logged with its
``loss_scale``).
"""

import math
import time

import numpy as np

from ..autograd import Tensor, no_grad, value_and_grad
from ..backend import backend_of
from ..backend.precision import precision
from ..nn import dropout_key
from ..optim import clip_grads, global_norm
from . import checkpoint as ckpt
from .sharding import ShardingPlan


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient norm became NaN or infinite."""


class StepExecution:
    """Runs ``Trainer``'s steps: the gradients, the optimizer's update, eagerly or as one
    compiled program, and the numbers each step leaves on the device until ``_read_back``.
    A base of ``Trainer``, whose ``__init__`` sets what these methods read: ``model``,
    ``config``, ``optimizer``, ``loss_fn``, ``loss_scaler``, ``backend``, ``compiled``,
    ``on_device``, ``plan``, ``step``, ``out_dir`` and the compiled ``_compiled_step``."""

    # --- one step ---------------------------------------------------------------------------
    def _gradients(self, params, micro_batches, step, scale=None):
        """The step's mean loss, mean metrics, clipped mean gradients and their norm before
        clipping; pure, so the compiled step traces it. Each micro-batch draws its dropout
        masks from the key ``(seed, step, index)``. ``scale``: the loss scale, or None."""
        with precision(self.config.dtype):  # read by every matmul, as jax.jit traces too
            return self._scaled_gradients(params, micro_batches, step, scale)

    def _scaled_gradients(self, params, micro_batches, step, scale):
        n = len(micro_batches)
        loss_and_grads = value_and_grad(self._bound_loss, has_aux=True)
        loss, grads, metrics = 0.0, None, {}
        for index, batch in enumerate(micro_batches):  # unrolled: one program for the step
            key = (self.config.seed, step, index)
            (micro_loss, micro_metrics), micro_grads = loss_and_grads(params, batch, key, scale)
            loss = loss + micro_loss / n
            if grads is None:
                grads = micro_grads
            else:
                grads = {name: grads[name] + g for name, g in micro_grads.items()}
            for name, value in micro_metrics.items():  # tokens add up, the others average
                metrics[name] = metrics.get(name, 0) + (value if name == "tokens" else value / n)
        if n > 1:  # the mean of the micro-batches' gradients
            grads = {name: g / n for name, g in grads.items()}
        if scale is not None:  # the true loss and gradients, in float32, before clipping
            loss = loss / scale
            grads = {name: g / scale for name, g in grads.items()}
        if self.config.grad_clip:
            grads, norm = clip_grads(grads, self.config.grad_clip)
        else:
            norm = global_norm(grads.values())
        return loss, grads, norm, metrics

    def _train_step(self, micro_batches, lr):
        """One optimizer step; returns (loss, gradient norm, metrics), on the device where
        the step can be checked there (see ``_read_back``), else as floats."""
        scale = None if self.loss_scaler is None else self.loss_scaler.scale
        if not self.compiled:
            loss, grads, norm, metrics = self._gradients(
                self._params(), micro_batches, self.step, scale
            )
            for name, p in self.optimizer.named_parameters():
                p.grad = grads[name]
            self.optimizer.lr = lr
            if self.on_device:
                return self._step_on_device(loss, norm, metrics, lr)
            loss, norm, metrics = self._floats(loss, norm, metrics, scale)
            self._pending.append((self.step + 1, loss, norm, metrics, lr))
            if self._overflowed(loss, norm, scale):
                return loss, norm, metrics  # float16 overflowed: step skipped, scale halved
            self._check_finite(loss, norm, lr)  # before the weights change
            self.optimizer.step()  # in place, over the optimizer's flat buffers
            return loss, norm, metrics
        if self.plan is not None:
            micro_batches = [self.plan.place_batch(batch) for batch in micro_batches]
        guard = self._guard()
        args = (self._params(), self.opt_state, micro_batches, lr, self.step, guard)
        if self.compile_seconds is None:  # trace and compile now, timed; the call reuses it
            start = time.perf_counter()
            self.step_program = self._compiled_step.lower(*args).compile()
            self.compile_seconds = time.perf_counter() - start
        params, self.opt_state, loss, norm, metrics, new_guard = self._compiled_step(*args)
        for name, p in self.optimizer.named_parameters():  # the old arrays were donated
            p.data = params[name]
        return self._pend(loss, norm, metrics, lr, guard, new_guard)

    def _step_on_device(self, loss, norm, metrics, lr):
        """The eager optimizer step, taken or not as the guard decides on the device
        (``_next_guard``): nothing is read back here, so a GPU never waits for the host
        inside a step. A step not taken does not count for AdamW's bias corrections."""
        guard = self._guard()
        take, new_guard = self._next_guard(guard, loss, norm)
        self.optimizer.step(only_if=take)
        return self._pend(loss, norm, metrics, lr, guard, new_guard)

    def _pend(self, loss, norm, metrics, lr, guard, new_guard):
        """Keep a step's numbers (and the loss scale it used) for ``_read_back``."""
        self._set_guard(new_guard)
        if "scale" in guard:  # the scale this step used, logged with it
            metrics = {**metrics, "loss_scale": guard["scale"]}
        self._pending.append((self.step + 1, loss, norm, metrics, lr))
        return loss, norm, metrics

    def _read_back(self):
        """The numbers of the steps since the last read, copied to the host in one transfer
        (``backend.to_floats``, the trainer's only read); returns the last step's (loss,
        gradient norm, metrics) as floats and the tokens of all those steps. A step that
        diverged (so it and the steps after it changed nothing) raises ``TrainingDiverged``;
        loss scaling fallen below its floor raises ``FloatingPointError``."""
        pending, self._pending = self._pending, []
        values = [v for step in pending for v in (step[1], step[2], *step[3].values())]
        scaled = self.on_device and self.loss_scaler is not None
        if scaled:  # the scale after the last step, to check it has not fallen too far
            values.append(self.loss_scaler.scale)
        skipped = self.optimizer.skipped  # the eager steps not taken, counted on the device
        if skipped is not None:
            values.append(skipped)
        if any(not isinstance(v, (float, int)) for v in values):  # arrays, NumPy scalars
            values = self.backend.to_floats(values)
        if skipped is not None:
            self.optimizer.settle_counts(values.pop())
        scale = values.pop() if scaled else None
        at, tokens = 0, 0
        for step, _, _, metrics, lr in pending:
            loss, norm = values[at], values[at + 1]
            metrics = dict(zip(metrics, values[at + 2 : at + 2 + len(metrics)]))
            at += 2 + len(metrics)
            tokens += metrics.pop("tokens", 0)
            if self._diverged(np.isfinite(loss), np.isfinite(norm)):
                self.step = step - 1  # the steps from this one on changed nothing
                self._check_finite(loss, norm, lr)
        if scaled:
            self.loss_scaler.check(scale)
        return loss, norm, metrics, int(tokens)

    def _diverged(self, finite_loss, finite_norm):
        """Whether a step diverged, from whether its loss and gradient norm were finite
        (booleans, or boolean arrays inside a step): a non-finite loss, or a non-finite norm
        without loss scaling (with it, an overflow: a skipped step)."""
        return ~finite_loss | (~finite_norm if self.loss_scaler is None else False)

    @staticmethod
    def _floats(loss, norm, metrics, scale):
        """The step's loss, gradient norm and metrics as Python floats (with the loss scale)."""
        metrics = {name: float(value) for name, value in metrics.items()}
        if scale is not None:
            metrics["loss_scale"] = scale
        return float(loss), float(norm), metrics

    def _overflowed(self, loss, norm, scale):
        """Under loss scaling: whether float16 gradients overflowed (a finite loss, a
        non-finite norm), so the step is skipped; tells the scaler either way."""
        return (
            scale is not None
            and math.isfinite(loss)
            and not self.loss_scaler.update(math.isfinite(norm))
        )

    def _pure_step(self, params, opt_state, micro_batches, lr, step, guard):
        """The whole step as a pure function of arrays, for ``jax.jit``."""
        loss, grads, norm, metrics = self._gradients(
            params, micro_batches, step, guard.get("scale")
        )
        take, guard = self._next_guard(guard, loss, norm)

        def update(params, opt_state):
            return self.optimizer.update(params, grads, opt_state, lr)

        if skips_by_branch(self.backend):
            params, opt_state = self.backend.jax.lax.cond(
                take, update, lambda *kept: kept, params, opt_state
            )
        else:  # a select: the new arrays where the step is taken, else what came in
            new_params, new_state = update(params, opt_state)
            params = _where(take, new_params, params)
            opt_state = _where(take, new_state, opt_state)
        if self.plan is not None:
            params, opt_state = self.plan.constrain(params, opt_state)
        return params, opt_state, loss, norm, metrics, guard

    # --- the guard: what a step carries to the next on the device --------------------------
    def _next_guard(self, guard, loss, norm):
        """``(take, guard)`` after a step with ``loss`` and gradient ``norm``, all in array
        operations (so inside the compiled step too). ``guard["all_finite"]``: no step so far
        diverged - a non-finite loss, or without loss scaling a non-finite norm; once one
        has, no later step is taken either. Under loss scaling an overflow (a finite loss, a
        non-finite norm) skips the step and halves the scale, and good steps in a row double
        it (``LossScaler.next_state``)."""
        xp = self.backend.xp
        finite_loss, finite_norm = xp.isfinite(loss), xp.isfinite(norm)
        take = finite_loss & finite_norm & guard["all_finite"]
        new_guard = {"all_finite": guard["all_finite"] & ~self._diverged(finite_loss, finite_norm)}
        if "scale" in guard:
            new_guard["scale"], new_guard["good_steps"] = self.loss_scaler.next_state(
                guard["scale"], guard["good_steps"], finite_norm, xp
            )
        return take, new_guard

    def _start_guard(self):
        """The guard at the start of ``fit``: every step finite so far, and the loss
        scale's state, as device arrays (laid out whole over a plan's devices)."""
        xp = self.backend.xp
        guard = {"all_finite": True}
        if self.loss_scaler is not None:
            guard |= self.loss_scaler.state_dict()  # scale, good_steps
        dtypes = {"all_finite": bool, "scale": xp.float32, "good_steps": xp.int32}
        guard = {key: xp.asarray(value, dtype=dtypes[key]) for key, value in guard.items()}
        if self.plan is not None:
            guard = self.plan.place_whole(guard)
        self._set_guard(guard)

    def _guard(self):
        guard = {"all_finite": self._all_finite}
        if self.loss_scaler is not None:
            guard |= {"scale": self.loss_scaler.scale, "good_steps": self.loss_scaler.good_steps}
        return guard

    def _set_guard(self, guard):
        self._all_finite = guard["all_finite"]
        if self.loss_scaler is not None:
            scaler = self.loss_scaler
            scaler.scale, scaler.good_steps = guard["scale"], guard["good_steps"]

    def _bound_loss(self, tensors, batch, key=None, scale=None):
        """``(loss, metrics)`` of ``loss_fn`` with ``tensors`` in place of the parameters;
        the loss times ``scale`` when given (float16's loss scaling)."""
        with self.model.bind(tensors), dropout_key(self.model, key or (self.config.seed,)):
            out = self.loss_fn(self.model, batch)
        loss, metrics = out if isinstance(out, tuple) else (out, {})
        if not isinstance(loss, Tensor) or loss.size != 1:
            raise TypeError(
                "Trainer: loss_fn(model, batch) must return a scalar loss Tensor or "
                f"(loss, metrics), got {type(loss).__name__}"
            )
        return (loss, metrics) if scale is None else (loss * scale, metrics)

    def _pure_eval_loss(self, params, batch):
        with no_grad(), precision(self.config.dtype):
            tensors = {name: Tensor(array) for name, array in params.items()}
            loss, metrics = self._bound_loss(tensors, batch)
            return loss.data, {
                k: v.data if isinstance(v, Tensor) else v for k, v in metrics.items()
            }

    def _params(self):
        return {name: p.data for name, p in self.optimizer.named_parameters()}

    # --- several devices --------------------------------------------------------------------
    def _sharding_plan(self):
        """The ``ShardingPlan`` that ``config.devices`` and ``config.shard`` ask for, or None
        for a run on one device."""
        c = self.config
        if c.shard is None and (c.devices or 1) == 1 and (c.num_processes or 1) == 1:
            return None
        mode = c.shard or "dp"
        if self.backend.name != "jax":
            raise ValueError(
                f"shard={mode!r}, devices={c.devices}: training over several devices needs the "
                f"JAX backend, but the model is on {self.backend.name!r}; use --backend jax"
            )
        plan = ShardingPlan(mode, c.devices)
        if c.num_processes is not None and c.num_processes != plan.n_processes:
            raise ValueError(
                f"num_processes={c.num_processes}, but this process has joined "
                f"{plan.n_processes}; call tinyllm.train.sharding.join_processes(config, "
                "backend) before building the model"
            )
        plan.check_batch(c.micro_batch_size)
        return plan

    def _place_on_devices(self):
        """Lay the parameters and the optimizer state out as the plan says."""
        params = self.plan.place_params(self._params())
        for name, p in self.optimizer.named_parameters():
            p.data = params[name]
        self.opt_state = self.plan.place_state(self.opt_state)

    def _check_finite(self, loss, norm, lr):
        if math.isfinite(loss) and math.isfinite(norm):
            return
        last = ckpt.latest_checkpoint(self.out_dir) if self.out_dir is not None else None
        kept = f"the last good checkpoint, {last}, is untouched" if last else "no checkpoint yet"
        raise TrainingDiverged(
            f"training stopped at step {self.step + 1}: the loss is {loss} and the gradient "
            f"norm {norm} (lr {lr:.3g}); the weights were not updated and {kept}. "
            "Try a lower --lr, a longer --warmup-steps, or --grad-clip 1.0"
        )


def skips_by_branch(backend):
    """Whether the compiled step keeps a skipped step's arrays by a branch (``lax.cond``)
    rather than a select of each new array against its old one: on the CPU, yes. There the
    select reads each old array after its new one may have overwritten it in place, so XLA
    copies every parameter and moment first (4.5% of the small benchmark's step). On a GPU,
    XLA's conditional copies its predicate to the host and waits for it, which would stall
    the host inside every step; the select costs a pass over memory there instead."""
    return backend.jax.default_backend() == "cpu"


def _where(condition, new, old):
    """``new`` where ``condition`` (a 0-d boolean array) holds, else ``old``; over dicts of
    dicts of arrays, inside the compiled step."""
    if isinstance(new, dict):
        return {key: _where(condition, new[key], old[key]) for key in new}
    return backend_of(new).xp.where(condition, new, old)
