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

How a step runs - eagerly or as one compiled program, on one device or several, in which
dtype, and how its numbers wait on the device until the loop reads them - is ``step.py``'s
``StepExecution``, one base this class builds on; what a checkpoint holds and how a run
resumes is ``run_folder.py``'s ``RunFolder``, the other. Over several processes each runs
this same loop; only process 0 writes metrics, plots, checkpoints and the exported model,
after every process has helped gather the arrays.

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

import dataclasses
import math
import signal
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..backend.precision import check_compute_dtype
from ..nn import Dropout
from ..nn.recompute import enable_gradient_checkpointing
from ..optim import AdamW, get_schedule
from .loss_scaling import LossScaler
from .metrics import MetricsLog, plot_losses, read_metrics
from .run_folder import RunFolder
from .sharding import is_main_process
from .step import StepExecution, TrainingDiverged

__all__ = ["TrainResult", "Trainer", "TrainingDiverged", "language_model_loss"]

# loss.png is redrawn at a checkpoint after an evaluation, at the end, and otherwise at most
# this often: drawing it takes most of a second, a checkpoint of a small model far less
PLOT_INTERVAL_S = 30.0


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


class Trainer(StepExecution, RunFolder):
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
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        check_compute_dtype(self.backend, config.dtype)
        if loss_scaler is None and config.dtype == "float16":
            loss_scaler = LossScaler()
        self.loss_scaler = loss_scaler
        self.compiled = self.backend.name == "jax"
        # whether steps decide on the device to be taken, so that none reads back: the
        # compiled step, and eager optimizers that can skip (step(only_if=...))
        self.on_device = self.compiled or self.optimizer.skips_on_device
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
            xp, owns = self.backend.xp, self.backend.owns
            counts = {
                n: c if owns(c) else xp.asarray(c, dtype=xp.int32)  # (from init_state, load)
                for n, c in self.opt_state["step"].items()
            }
            self.opt_state = {**self.opt_state, "step": counts}
        self._stop, self._pending, self._all_finite = None, [], None
        if self.on_device:
            self._start_guard()
        if self.plan is not None:
            self._place_on_devices()
            if c.progress:
                print(self.plan.summary(self._params()))
        saved, samples, metrics = None, None, {}
        first_step, session_start = self.step, time.perf_counter()
        plotted = session_start  # when loss.png was last drawn
        step_seconds, session_tokens = 0.0, 0  # the steps' own time: no eval, no saving
        bar = _Bar(total=c.steps, initial=self.step, disable=not c.progress, desc=self.title)
        stopping = False  # a signal seen: this step is the last, and is saved
        with _StopOnSignals(self):
            while self.step < c.steps and not stopping:
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
                # Read once: a signal landing after this line is seen after the next step,
                # which then saves - never between this step's save decision and the loop's.
                stopping = self._stop is not None
                eval_due = c.eval_interval and self.step % c.eval_interval == 0
                evaluated = (eval_due or self.step == c.steps) and not stopping
                logged = self.step % c.log_interval == 0 or evaluated or compiled_now
                save_due = self.out_dir is not None and (
                    (c.checkpoint_interval and self.step % c.checkpoint_interval == 0)
                    or self.step == c.steps
                    or stopping
                )
                if not (logged or save_due or stopping):
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
                    ending = self.step == c.steps or stopping
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


class _Bar(tqdm):
    """The text bar (no widget dependency in notebooks), without tqdm's monitor: a daemon
    thread, started even for a disabled bar, that wakes every 10 s. A daemon thread that
    wakes while Python shuts down can crash it (CPython gh-87135)."""

    monitor_interval = 0


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
