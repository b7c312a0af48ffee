"""``Trainer``: the one training loop. Pretraining, fine-tuning and preference tuning differ
only in their batches and their loss, so each is this loop with another ``loss_fn``.

One step: draw ``grad_accum`` micro-batches, run forward and backward on each (gradients
add up), clip the global gradient norm, set the scheduled learning rate, take an AdamW
step. Around the steps the loop

- evaluates every ``eval_interval`` steps: validation loss and perplexity on fixed
  batches, task metrics (``eval_fn``: an accuracy, say), sample generations
  (``sample_fn``), and the loss-curve PNG;
- writes a metrics line to ``metrics.jsonl`` every ``log_interval`` steps and shows loss,
  tokens/s and the time left on a tqdm bar;
- saves a checkpoint of any model every ``checkpoint_interval`` steps, at the end, and on
  Ctrl-C or SIGTERM, and, where the model has a Hugging Face form, refreshes the exported
  model in ``out_dir`` (config.json, model.safetensors, the tokenizer: a folder
  ``Transformer.from_pretrained`` and ``transformers`` both read);
- stops at a NaN or infinite loss before it reaches the weights, with a clear message;
  the last good checkpoint is left as it was.

``loss_fn(model, batch)`` returns the loss, or ``(loss, metrics)`` with a dict of numbers
the trainer averages over micro-batches and logs (a DPO margin, a reward accuracy). A
metric named ``tokens`` is summed instead, and gives the tokens/s figure.

One function, ``_gradients``, makes a step's loss, metrics, clipped gradients and their
norm: micro-batch by micro-batch through ``value_and_grad``, each with its own dropout key
``(seed, step, micro-batch)``. Both executions run it. On NumPy and CuPy it runs eagerly
and the optimizer then updates the parameters in place (a few passes over flat buffers).
Eagerly, a step never reads a number back to the host: the loss, the gradient norm and
the metrics stay device arrays, AdamW skips a non-finite step on the device
(``step(only_if=...)``), and all of them are copied back in one transfer only at a log,
evaluation or checkpoint step (``_read_back``), which then raises for a step that diverged
(with the weights from before it). So a GPU queues step after step without waiting. Eagerly,
float16's loss scaling reads each step's gradient norm for the scale's rule, as does an
optimizer that cannot skip on the device.
Under JAX the whole step, ``_gradients`` and the optimizer's pure ``update``, is one
function ``(params, opt_state, micro_batches, lr, step, guard) -> (params, opt_state, loss,
grad_norm, metrics, guard)`` compiled with ``jax.jit``: tinyllm's autograd is traced into
it. ``guard`` carries from step to step whether every step so far was finite and, under
float16, the loss scale and its rule's count of good steps, so the compiled step reads
nothing back either: its numbers wait on the device for ``_read_back`` as the eager ones do.
It is traced and compiled once, at the first step (``compile_seconds``, logged with that
step), and then only run. Its parameters and optimizer state are *donated*: XLA writes the
new ones into the old ones' memory, so a step keeps one copy of them, not two (the old
arrays are gone after the call; a step that is not taken returns them unchanged).

With ``config.shard`` (or ``config.devices`` > 1) the compiled step runs over several JAX
devices, each on its rows of the batch, with the parameters and AdamW's moments laid out
as ``sharding.py`` explains (``dp``, ``zero1``, ``fsdp``); XLA adds the communication.
Over several processes (``config.num_processes``, joined by ``join_processes`` before the
model was built) the step runs over every process's devices, ``dp`` unless ``shard`` says
otherwise. Each process runs the same loop; only process 0 writes metrics, plots,
checkpoints and the exported model, after every process has helped gather the arrays.

``config.dtype`` sets the compute dtype (``backend/precision.py``) around ``_gradients`` and
the validation loss, so it is in force while ``jax.jit`` traces them: matmuls and attention
in bfloat16 or float16, the rest - weights, gradients, AdamW's moments - in float32. Under
float16 a ``LossScaler`` (``loss_scaling.py``) scales the loss before backward, unscales the
gradients before clipping, and skips a step whose gradients overflowed (logged with its
``loss_scale``).

>>> import numpy as np
>>> from tinyllm.data import RandomBatches
>>> from tinyllm.train import TrainConfig
>>> from tinyllm.models import Transformer, get_preset
>>> model = Transformer(get_preset("tiny", n_layer=1, d_model=32, n_head=2), seed=0)
>>> tokens = np.tile(np.arange(16), 40)  # a pattern a small model learns quickly
>>> config = TrainConfig(steps=30, lr=3e-2, warmup_steps=2, eval_interval=30, progress=False)
>>> trainer = Trainer(model, config, RandomBatches(tokens, 12, 16, seed=0),
...                   val_batches=[next(RandomBatches(tokens, 12, 16, seed=1))])
>>> result = trainer.fit()
>>> result.step, result.val_loss < 0.5
(30, True)
"""

import contextlib
import dataclasses
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm  # the text bar: no widget dependency in notebooks

from ..autograd import Tensor, no_grad, value_and_grad
from ..backend import backend_of, to_numpy
from ..backend.precision import check_compute_dtype, precision
from ..nn import Dropout, dropout_key
from ..optim import AdamW, clip_grads, get_schedule, global_norm
from . import checkpoint as ckpt
from .loss_scaling import LossScaler
from .metrics import MetricsLog, plot_losses, read_metrics
from .sharding import ShardingPlan, is_main_process, on_host

# loss.png is redrawn at a checkpoint after an evaluation, at the end, and otherwise at most
# this often: drawing it takes most of a second, a checkpoint of a small model far less
PLOT_INTERVAL_S = 30.0


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    step: int  # optimizer steps completed
    train_loss: float | None  # the last step's loss (None: the run has taken no step)
    val_loss: float | None  # the last evaluation's
    best_val_loss: float | None
    tokens_per_second: float | None  # over this session's steps alone (None: none taken)
    seconds: float  # wall time, all sessions of the run together
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM" when interrupted, else None
    checkpoint: Path | None = None  # the last checkpoint written
    samples: list | None = None  # sample_fn's texts when the last step was evaluated
    steps_this_session: int = 0  # 0 when a finished run is resumed
    metrics: dict = dataclasses.field(default_factory=dict)  # the last step's loss_fn metrics
    compile_seconds: float | None = None  # tracing + compiling the JAX step (None: eager)


def language_model_loss(model, batch):
    """Next-token cross-entropy of ``batch = (ids, targets)``: pretraining's loss, and the
    number of tokens it scored (the trainer's tokens/s)."""
    ids, targets = batch
    return model(ids, targets)[1], {"tokens": int(np.size(ids))}


class Trainer:
    """Trains ``model`` on ``train_batches`` as ``config`` says; see the module docstring.

    ``train_batches`` yields micro-batches of ``config.micro_batch_size`` sequences; give it
    ``state_dict``/``load_state_dict`` (as ``RandomBatches`` has) for exact resume.
    ``val_batches`` is a list of batches, the same at every evaluation. ``loss_fn(model,
    batch)`` returns a scalar loss Tensor or ``(loss, metrics)``. ``eval_fn(model)`` returns
    a dict of numbers logged at each evaluation (an exact-match accuracy, say);
    ``sample_fn(model)`` returns a list of strings. With no ``out_dir`` nothing is written.
    ``loss_scaler`` (a ``LossScaler``) scales the loss; float16 gets one by default.
    """

    def __init__(
        self,
        model,
        config,
        train_batches,
        *,
        val_batches=(),
        out_dir=None,
        loss_fn=language_model_loss,
        sample_fn=None,
        eval_fn=None,
        tokenizer=None,
        optimizer=None,
        loss_scaler=None,
        title="training",
    ):
        self.model, self.config, self.train_batches = model, config, train_batches
        self.val_batches, self.loss_fn, self.sample_fn = list(val_batches), loss_fn, sample_fn
        self.eval_fn = eval_fn
        self.measure_names = []  # what eval_fn has returned, in order: plotted with the losses
        self.tokenizer, self.title = tokenizer, title
        self.out_dir = None if out_dir is None else Path(out_dir)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("Trainer: the model has no trainable parameters (all frozen)")
        self.optimizer = optimizer or AdamW(
            trainable,
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
            weight_decay=config.weight_decay,
        )
        self.schedule = get_schedule(config.schedule)
        self.backend = trainable[0][1].backend
        check_compute_dtype(self.backend, config.dtype)
        if loss_scaler is None and config.dtype == "float16":
            loss_scaler = LossScaler()
        self.loss_scaler = loss_scaler
        self.compiled = self.backend.name == "jax"
        self.step = 0
        self.seconds = 0.0  # wall time before this session (from a checkpoint)
        self.tokens_seen = 0
        self.last_loss = self.val_loss = self.best_val_loss = None
        self._dropouts = [m for _, m in model.named_modules() if isinstance(m, Dropout)]
        self._stop = None
        self._eval_loss = self.backend.jit(self._pure_eval_loss)
        self.opt_state = None
        self.plan = self._sharding_plan()  # None: one device
        self.writes = is_main_process()  # False in processes other than 0 of several
        self.compile_seconds = None  # measured at the first compiled step
        self.step_program = None  # the compiled step (JAX): .as_text() shows XLA's program
        if self.compiled:  # arguments 0 and 1, the parameters and the state, are donated
            self._compiled_step = self.backend.jit(self._pure_step, donate_argnums=(0, 1))

    # --- the public entry points ----------------------------------------------------------
    def learning_rate(self, step):
        c = self.config
        return self.schedule(step, c.lr, c.warmup_steps, c.steps, min(c.min_lr, c.lr))

    def fit(self, *, resume=False):
        """Train until ``config.steps`` (from the latest checkpoint when ``resume``)."""
        c, log = self.config, None
        if self.out_dir is not None:
            self._prepare_out_dir(resume)
        if self.out_dir is not None and self.writes:
            log = MetricsLog(self.out_dir / "metrics.jsonl")
            log.resume_at(self.step)
        if self.compiled and self.opt_state is None:
            self.opt_state = self.optimizer.init_state(self._params())
        if self.compiled:  # step counts as int32 arrays, as the step returns them: one trace
            xp = self.backend.xp
            counts = {n: xp.asarray(c, dtype=xp.int32) for n, c in self.opt_state["step"].items()}
            self.opt_state = {**self.opt_state, "step": counts}
        self._stop, self._pending, self._all_finite = None, [], None
        if self.compiled:
            self._start_guard()
        if self.plan is not None:
            self._place_on_devices()
            if c.progress:
                print(self.plan.summary(self._params()))
        saved, samples, metrics = None, None, {}
        first_step, session_start = self.step, time.perf_counter()
        plotted = session_start  # when loss.png was last drawn
        step_seconds, session_tokens = 0.0, 0  # the steps' own time: no eval, no saving
        bar = tqdm(total=c.steps, initial=self.step, disable=not c.progress, desc=self.title)
        with _StopOnSignals(self):
            while self.step < c.steps and self._stop is None:
                lr = self.learning_rate(self.step)
                step_start = time.perf_counter()
                micro_batches = [next(self.train_batches) for _ in range(c.grad_accum)]
                compiled_before = self.compile_seconds
                self.last_loss, grad_norm, metrics = self._train_step(micro_batches, lr)
                step_seconds += time.perf_counter() - step_start
                compiled_now = self.compile_seconds != compiled_before
                if compiled_now:  # tokens/s counts running steps, not compiling them
                    step_seconds -= self.compile_seconds
                self.step += 1
                eval_due = c.eval_interval and self.step % c.eval_interval == 0
                evaluated = (eval_due or self.step == c.steps) and self._stop is None
                logged = self.step % c.log_interval == 0 or evaluated or compiled_now
                save_due = self.out_dir is not None and (
                    (c.checkpoint_interval and self.step % c.checkpoint_interval == 0)
                    or self.step == c.steps
                    or self._stop is not None
                )
                if not (logged or save_due or self._stop is not None):
                    continue  # the step's numbers stay on the device until the next read
                read_start = time.perf_counter()  # the wait for the device is the steps' time
                self.last_loss, grad_norm, metrics, n_tokens = self._read_back()
                step_seconds += time.perf_counter() - read_start
                self.tokens_seen += n_tokens
                session_tokens += n_tokens
                elapsed = time.perf_counter() - session_start
                rate = session_tokens / max(step_seconds, 1e-9)
                bar.update(self.step - bar.n)
                bar.set_postfix(loss=f"{self.last_loss:.4f}", tok_s=f"{rate:,.0f}")
                row = {"step": self.step, "loss": self.last_loss, "lr": lr, "grad_norm": grad_norm}
                row |= metrics
                if session_tokens:
                    row |= {"tokens": self.tokens_seen, "tokens_per_s": rate}
                row["seconds"] = self.seconds + elapsed
                if compiled_now:
                    row["compile_seconds"] = self.compile_seconds
                    where = f" ({self.plan.describe()})" if self.plan else ""
                    self._say(
                        bar, f"compiled the training step{where} in {self.compile_seconds:.2f}s"
                    )
                if evaluated:
                    self._evaluate(row, bar)
                samples = row.get("samples")  # None unless this step was evaluated
                if log is not None and logged:
                    log.write(row)
                if save_due:
                    saved = self.save(elapsed=self.seconds + elapsed)
                    ending = self.step == c.steps or self._stop is not None
                    redraw = ending or evaluated or time.perf_counter() - plotted >= PLOT_INTERVAL_S
                    if self.writes and redraw:  # drawing takes most of a second
                        plotted = time.perf_counter()
                        plot_losses(
                            read_metrics(log.path), self.out_dir / "loss.png", self.title,
                            measures=self.measure_names,
                        )  # fmt: skip
        bar.close()
        steps = self.step - first_step
        return TrainResult(
            step=self.step,
            train_loss=self.last_loss,
            val_loss=self.val_loss,
            best_val_loss=self.best_val_loss,
            tokens_per_second=session_tokens / step_seconds if steps and session_tokens else None,
            seconds=self.seconds + time.perf_counter() - session_start,
            stopped_by=self._stop,
            checkpoint=saved,
            samples=samples,
            steps_this_session=steps,
            metrics=metrics,
            compile_seconds=self.compile_seconds,
        )

    def evaluate(self):
        """Mean loss over ``val_batches`` (no dropout, no gradients)."""
        return self._validation()["val_loss"]

    def _validation(self):
        """``{"val_loss": mean loss, "val_<metric>": mean metric}`` over ``val_batches``."""
        params = self._params()
        was_training = self.model.training
        self.model.eval()
        if self.plan is not None:  # split over the devices where the rows divide evenly
            batches = [self.plan.place_batch(b, uneven="whole") for b in self.val_batches]
        else:
            batches = self.val_batches
        try:
            results = [self._eval_loss(params, batch) for batch in batches]
        finally:
            self.model.train(was_training)
        n = len(results)
        out = {"val_loss": sum(float(loss) for loss, _ in results) / n}
        for name in results[0][1]:
            if name != "tokens":
                out[f"val_{name}"] = sum(float(m[name]) for _, m in results) / n
        return out

    def save(self, elapsed=None):
        """Write a checkpoint of the current step and refresh the exported model; returns
        its path. Over several processes every one must call this (each gathers the arrays
        with the others), and only process 0 writes (the others return None)."""
        state = {
            "step": self.step,
            "seconds": self.seconds if elapsed is None else elapsed,
            "tokens_seen": self.tokens_seen,
            "train_loss": self.last_loss,
            "val_loss": self.val_loss,
            "best_val_loss": self.best_val_loss,
            "dropout_seeds": [m.seed for m in self._dropouts],  # with the step: the masks
            "train_config": self.config.to_dict(),
        }
        if hasattr(self.train_batches, "state_dict"):
            state["data"] = self.train_batches.state_dict()
        if self.loss_scaler is not None:
            state["loss_scale"] = self.loss_scaler.state_dict()
        if self.plan is not None and self.plan.n_processes > 1:
            with self._gathered() as opt_state:
                return self._write(state, opt_state) if self.writes else None
        if not self.writes:
            return None
        return self._write(state, self.opt_state if self.compiled else None)

    def _write(self, state, opt_state):
        """The checkpoint of ``state`` (and ``opt_state``, a compiled loop's), and the
        exported model; returns the checkpoint's path."""
        path = ckpt.save_checkpoint(
            self.out_dir,
            model=self.model,
            optimizer=self.optimizer,
            state=state,
            opt_state=opt_state,
            tokenizer=self.tokenizer,
        )
        ckpt.prune_checkpoints(self.out_dir, self.config.keep_checkpoints)
        if getattr(self.model, "has_hf_form", lambda: False)():
            self.model.save_pretrained(self.out_dir)  # the exported model: always the newest
            if self.tokenizer is not None:
                context = self.model.config.context_length
                self.tokenizer.save(self.out_dir, model_max_length=context)
        return path

    @contextlib.contextmanager
    def _gathered(self):
        """Inside the block the parameters are NumPy arrays (``on_host``: every process
        joins the gather); yields the optimizer state as NumPy arrays, gathered the same way."""
        with on_host(p for _, p in self.optimizer.named_parameters()):
            yield {
                key: {name: to_numpy(array) for name, array in arrays.items()}
                for key, arrays in self.opt_state.items()
            }

    def load(self, path):
        """Continue from the checkpoint folder ``path``."""
        state = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer)
        self.step, self.seconds = state["step"], state["seconds"]
        self.tokens_seen, self.best_val_loss = state["tokens_seen"], state["best_val_loss"]
        self.last_loss, self.val_loss = state.get("train_loss"), state.get("val_loss")
        seeds = state.get("dropout_seeds") or [s for s, _ in state.get("dropout", [])]
        for module, seed in zip(self._dropouts, seeds):
            module.seed = seed
        if "data" in state and hasattr(self.train_batches, "load_state_dict"):
            self.train_batches.load_state_dict(state["data"])
        if "loss_scale" in state and self.loss_scaler is not None:
            self.loss_scaler.load_state_dict(state["loss_scale"])
        if self.compiled:
            self.opt_state = self.optimizer.state
        return state

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
            if scale is None and self.optimizer.skips_on_device:
                return self._step_on_device(loss, norm, metrics, lr)
            loss, norm, metrics = self._floats(loss, norm, metrics, scale)
            self._pending.append((self.step + 1, loss, norm, metrics, None, lr))
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
        self._set_guard(new_guard)
        if scale is not None:  # the scale this step used, logged with it
            metrics = {**metrics, "loss_scale": guard["scale"]}
        self._pending.append((self.step + 1, loss, norm, metrics, {}, lr))  # nothing read
        return loss, norm, metrics

    def _step_on_device(self, loss, norm, metrics, lr):
        """The optimizer step, taken only if this step's loss and gradient norm - and every
        step's since the last read - are finite, decided on the device: nothing is read back
        here, so a GPU never waits for the host inside a step. ``_read_back`` raises for a
        step that was not finite; the weights are then those from before it."""
        xp = self.backend.xp
        finite = xp.isfinite(loss) & xp.isfinite(norm)  # a 0-d boolean array
        if self._all_finite is not None:
            finite = finite & self._all_finite  # once a step is skipped, all that follow are
        self._all_finite = finite
        counts = dict(self.optimizer.state["step"])  # to rewind them to a skipped step
        self.optimizer.step(only_if=finite)
        self._pending.append((self.step + 1, loss, norm, metrics, counts, lr))
        return loss, norm, metrics

    def _read_back(self):
        """The numbers of the steps since the last read, copied to the host in one transfer
        (``backend.to_numpy``, the trainer's only read); returns the last step's (loss,
        gradient norm, metrics) as floats and the tokens of all those steps. A step that
        diverged (so it and the steps after it changed nothing) raises ``TrainingDiverged``;
        loss scaling fallen below its floor raises ``FloatingPointError``."""
        pending, self._pending = self._pending, []
        values = [v for step in pending for v in (step[1], step[2], *step[3].values())]
        if any(not isinstance(v, (float, int)) for v in values):  # arrays, NumPy scalars
            xp = self.backend.xp
            # float32, which every backend has: the numbers are float32 on the device, and
            # a step's token count is exact below 2^24
            stacked = xp.stack([xp.asarray(v, dtype=xp.float32).reshape(()) for v in values])
            values = self.backend.to_numpy(stacked).tolist()
        at, tokens = 0, 0
        for step, _, _, metrics, counts, lr in pending:
            loss, norm = values[at], values[at + 1]
            metrics = dict(zip(metrics, values[at + 2 : at + 2 + len(metrics)]))
            at += 2 + len(metrics)
            tokens += metrics.pop("tokens", 0)
            if counts is not None and self._diverged(loss, norm):
                self.step = step - 1  # the steps from this one on changed nothing
                self.optimizer.state["step"].update(counts)  # (compiled: kept on the device)
                self._check_finite(loss, norm, lr)
        if self.compiled and self.loss_scaler is not None:
            self.loss_scaler.check()
        return loss, norm, metrics, int(tokens)

    def _diverged(self, loss, norm):
        """Whether a step's loss and gradient norm mean the run diverged: a non-finite loss,
        or a non-finite norm without loss scaling (with it, an overflow: a skipped step)."""
        finite_norm = math.isfinite(norm) or self.loss_scaler is not None
        return not (math.isfinite(loss) and finite_norm)

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
        """The whole step as a pure function of arrays, for ``jax.jit``. ``guard`` carries
        from step to step whether every step so far was finite, and the loss scale's state
        (``_guard``)."""
        scale = guard.get("scale")
        loss, grads, norm, metrics = self._gradients(params, micro_batches, step, scale)
        new_params, new_state = self.optimizer.update(params, grads, opt_state, lr)
        xp = self.backend.xp
        finite_loss, finite_norm = xp.isfinite(loss), xp.isfinite(norm)
        take = finite_loss & finite_norm & guard["all_finite"]  # else: keep what came in
        params = _where(take, new_params, params)
        opt_state = _where(take, new_state, opt_state)
        if self.plan is not None:
            params, opt_state = self.plan.constrain(params, opt_state)
        diverged = ~finite_loss if scale is not None else ~(finite_loss & finite_norm)
        new_guard = {"all_finite": guard["all_finite"] & ~diverged}
        if scale is not None:  # an overflow halves the scale; good steps in a row double it
            new_guard["scale"], new_guard["good_steps"] = self.loss_scaler.next_state(
                scale, guard["good_steps"], finite_norm, xp
            )
        return params, opt_state, loss, norm, metrics, new_guard

    def _start_guard(self):
        """The compiled step's ``guard`` at the start of ``fit``: every step finite so far,
        and the loss scale's state as device arrays (laid out whole over a plan's devices)."""
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
            self.loss_scaler.scale, self.loss_scaler.good_steps = (
                guard["scale"],
                guard["good_steps"],
            )

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

    # --- around the steps -------------------------------------------------------------------
    def _evaluate(self, row, bar):
        if self.val_batches:
            row |= self._validation()
            self.val_loss = row["val_loss"]
            row["val_ppl"] = math.exp(min(row["val_loss"], 50.0))
            if self.best_val_loss is None or row["val_loss"] < self.best_val_loss:
                self.best_val_loss = row["val_loss"]
            self._say(
                bar,
                f"step {self.step}: train loss {row['loss']:.4f}, val loss "
                f"{row['val_loss']:.4f} (perplexity {row['val_ppl']:.2f})",
            )
        if self.eval_fn is not None:
            scores = {name: float(value) for name, value in self.eval_fn(self.model).items()}
            self.measure_names = [*dict.fromkeys([*self.measure_names, *scores])]
            row |= scores
            shown = ", ".join(f"{name} {value:.4g}" for name, value in scores.items())
            self._say(bar, f"step {self.step}: {shown}")
        if self.sample_fn is not None:
            row["samples"] = self.sample_fn(self.model)
            for text in row["samples"]:
                self._say(bar, f"  sample: {text!r}")

    def _say(self, bar, line):
        if self.config.progress:
            bar.write(line)

    def _prepare_out_dir(self, resume):
        """Refuse a folder holding a run unless ``resume``; load its latest checkpoint. Over
        several processes every one loads it (the folder must be on a file system they all
        read), and only process 0 cleans what an interrupted save left."""
        leftovers = ckpt.clean_partial(self.out_dir) if self.writes else []
        if leftovers:
            print(f"removed unfinished checkpoint folders {leftovers} (a save was interrupted)")
        latest = ckpt.latest_checkpoint(self.out_dir)
        if latest is None:
            return
        if not resume:
            raise FileExistsError(
                f"{self.out_dir} already holds a run (latest checkpoint {latest.name}); resume it "
                "(--resume, or fit(resume=True)) or choose another output folder"
            )
        self.load(latest)


def _where(condition, new, old):
    """``new`` where ``condition`` (a 0-d boolean array) holds, else ``old``; over dicts of
    dicts of arrays, inside the compiled step."""
    if isinstance(new, dict):
        return {key: _where(condition, new[key], old[key]) for key in new}
    return backend_of(new).xp.where(condition, new, old)


class _StopOnSignals:
    """While training: Ctrl-C or SIGTERM finishes the current step, saves and stops.

    A second Ctrl-C stops at once (KeyboardInterrupt). Off the main thread (where Python
    allows no signal handlers) this does nothing.
    """

    def __init__(self, trainer):
        self.trainer, self.previous = trainer, {}

    def _handle(self, signum, frame):
        if self.trainer._stop is not None:
            raise KeyboardInterrupt
        self.trainer._stop = signal.Signals(signum).name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
