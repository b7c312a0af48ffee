"""``Trainer``: the one training loop. Pretraining, fine-tuning and preference tuning differ
only in their batches and their loss, so each is this loop with another ``loss_fn``.

One step: draw ``grad_accum`` micro-batches, run forward and backward on each (gradients
add up), clip the global gradient norm, set the scheduled learning rate, take an AdamW
step. Around the steps the loop

- evaluates every ``eval_interval`` steps: validation loss and perplexity on fixed
  batches, sample generations (``sample_fn``), and the loss-curve PNG;
- writes a metrics line to ``metrics.jsonl`` every ``log_interval`` steps and shows loss,
  tokens/s and the time left on a tqdm bar;
- saves a checkpoint every ``checkpoint_interval`` steps, at the end, and on Ctrl-C or
  SIGTERM, and refreshes the exported model in ``out_dir`` (config.json,
  model.safetensors, the tokenizer: a folder ``Transformer.from_pretrained`` and
  ``transformers`` both read);
- stops at a NaN or infinite loss before it reaches the weights, with a clear message;
  the last good checkpoint is left as it was.

On NumPy and CuPy the step runs eagerly: ``backward`` fills ``.grad`` and the optimizer
updates the parameters in place. Under JAX it is one pure function
``(params, opt_state, micro_batches, lr, step) -> (params, opt_state, loss, grad_norm)``
compiled with ``jax.jit``: tinyllm's autograd is traced into the compiled program.

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
from tqdm import tqdm  # the text bar: no widget dependency in notebooks

from ..autograd import Tensor, no_grad, value_and_grad
from ..nn import Dropout
from ..optim import AdamW, clip_grad_norm, clip_grads, get_schedule, global_norm
from . import checkpoint as ckpt
from .metrics import MetricsLog, plot_losses, read_metrics


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient norm became NaN or infinite."""


@dataclasses.dataclass
class TrainResult:
    step: int  # optimizer steps completed
    train_loss: float  # the last step's loss
    val_loss: float | None  # the last evaluation's
    best_val_loss: float | None
    tokens_per_second: float  # over this session's steps
    seconds: float  # training time, all sessions of the run together
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM" when interrupted, else None
    checkpoint: Path | None = None  # the last checkpoint written
    samples: list | None = None  # sample_fn's texts when the last step was evaluated


def language_model_loss(model, batch):
    """Next-token cross-entropy of ``batch = (ids, targets)``: pretraining's loss."""
    ids, targets = batch
    return model(ids, targets)[1]


class Trainer:
    """Trains ``model`` on ``train_batches`` as ``config`` says; see the module docstring.

    ``train_batches`` yields micro-batches of ``config.micro_batch_size`` sequences; give it
    ``state_dict``/``load_state_dict`` (as ``RandomBatches`` has) for exact resume.
    ``val_batches`` is a list of batches, the same at every evaluation. ``loss_fn(model,
    batch)`` returns a scalar loss Tensor. ``sample_fn(model)`` returns a list of strings.
    With no ``out_dir`` nothing is written.
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
        tokenizer=None,
        optimizer=None,
        title="training",
    ):
        self.model, self.config, self.train_batches = model, config, train_batches
        self.val_batches, self.loss_fn, self.sample_fn = list(val_batches), loss_fn, sample_fn
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
        self.compiled = self.backend.name == "jax"
        self.step = 0
        self.seconds = 0.0  # training time before this session (from a checkpoint)
        self.tokens_seen = 0
        self.best_val_loss = None
        self._dropouts = [m for _, m in model.named_modules() if isinstance(m, Dropout)]
        self._stop = None
        self._eval_loss = self.backend.jit(self._pure_eval_loss)
        if self.compiled:
            self._compiled_step = self.backend.jit(self._pure_step)
            self.opt_state = None
        if self.out_dir is not None:
            from ..models.hf import model_type_of

            model_type_of(model.config)  # checkpoints are HF folders: fail now, not at step 500

    # --- the public entry points ----------------------------------------------------------
    def learning_rate(self, step):
        c = self.config
        return self.schedule(step, c.lr, c.warmup_steps, c.steps, min(c.min_lr, c.lr))

    def fit(self, *, resume=False):
        """Train until ``config.steps`` (from the latest checkpoint when ``resume``)."""
        c, log = self.config, None
        if self.out_dir is not None:
            self._prepare_out_dir(resume)
            log = MetricsLog(self.out_dir / "metrics.jsonl")
            log.resume_at(self.step)
        params = self._params()
        if self.compiled and self.opt_state is None:
            self.opt_state = self.optimizer.init_state(params)
        last_loss, val_loss, saved, samples = math.nan, None, None, None
        session_start, session_tokens = time.perf_counter(), 0
        bar = tqdm(total=c.steps, initial=self.step, disable=not c.progress, desc=self.title)
        self._stop = None
        with _StopOnSignals(self):
            while self.step < c.steps and self._stop is None:
                lr = self.learning_rate(self.step)
                micro_batches = [next(self.train_batches) for _ in range(c.grad_accum)]
                last_loss, grad_norm = self._train_step(micro_batches, lr)
                self.step += 1
                n_tokens = sum(int(np.size(batch[0])) for batch in micro_batches)
                self.tokens_seen += n_tokens
                session_tokens += n_tokens
                elapsed = time.perf_counter() - session_start
                rate = session_tokens / max(elapsed, 1e-9)
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{rate:,.0f}")
                row = {"step": self.step, "loss": last_loss, "lr": lr, "grad_norm": grad_norm}
                row |= {"tokens": self.tokens_seen, "tokens_per_s": rate}
                row["seconds"] = self.seconds + elapsed
                eval_due = c.eval_interval and self.step % c.eval_interval == 0
                if eval_due or self.step == c.steps:
                    val_loss = self._evaluate(row, bar)
                samples = row.get("samples")  # None unless this step was evaluated
                if log is not None and (self.step % c.log_interval == 0 or "val_loss" in row):
                    log.write(row)
                if self.out_dir is not None:
                    due = c.checkpoint_interval and self.step % c.checkpoint_interval == 0
                    if due or self.step == c.steps or self._stop is not None:
                        saved = self.save(elapsed=self.seconds + elapsed)
                        plot_losses(read_metrics(log.path), self.out_dir / "loss.png", self.title)
        bar.close()
        elapsed = time.perf_counter() - session_start
        return TrainResult(
            step=self.step,
            train_loss=last_loss,
            val_loss=val_loss,
            best_val_loss=self.best_val_loss,
            tokens_per_second=session_tokens / max(elapsed, 1e-9),
            seconds=self.seconds + elapsed,
            stopped_by=self._stop,
            checkpoint=saved,
            samples=samples,
        )

    def evaluate(self):
        """Mean loss over ``val_batches`` (no dropout, no gradients)."""
        params = self._params()
        was_training = self.model.training
        self.model.eval()
        try:
            losses = [float(self._eval_loss(params, batch)) for batch in self.val_batches]
        finally:
            self.model.train(was_training)
        return sum(losses) / len(losses)

    def save(self, elapsed=None):
        """Write a checkpoint of the current step and refresh the exported model."""
        state = {
            "step": self.step,
            "seconds": self.seconds if elapsed is None else elapsed,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "dropout": [[int(m.seed), int(m.calls)] for m in self._dropouts],  # mask seeds
            "train_config": self.config.to_dict(),
        }
        if hasattr(self.train_batches, "state_dict"):
            state["data"] = self.train_batches.state_dict()
        path = ckpt.save_checkpoint(
            self.out_dir,
            model=self.model,
            optimizer=self.optimizer,
            state=state,
            opt_state=self.opt_state if self.compiled else None,
            tokenizer=self.tokenizer,
        )
        ckpt.prune_checkpoints(self.out_dir, self.config.keep_checkpoints)
        self.model.save_pretrained(self.out_dir)  # the exported model: always the newest
        if self.tokenizer is not None:
            self.tokenizer.save(self.out_dir)
        return path

    def load(self, path):
        """Continue from the checkpoint folder ``path``."""
        state = ckpt.load_checkpoint(path, model=self.model, optimizer=self.optimizer)
        self.step, self.seconds = state["step"], state["seconds"]
        self.tokens_seen, self.best_val_loss = state["tokens_seen"], state["best_val_loss"]
        for module, (seed, calls) in zip(self._dropouts, state["dropout"]):
            module.seed, module.calls = seed, calls
        if "data" in state and hasattr(self.train_batches, "load_state_dict"):
            self.train_batches.load_state_dict(state["data"])
        if self.compiled:
            self.opt_state = self.optimizer.state
        return state

    # --- one step ---------------------------------------------------------------------------
    def _train_step(self, micro_batches, lr):
        """One optimizer step; returns (loss, gradient norm) as floats."""
        if self.compiled:
            params, opt_state, loss, norm = self._compiled_step(
                self._params(), self.opt_state, micro_batches, lr, self.step
            )
            loss, norm = float(loss), float(norm)
            self._check_finite(loss, norm, lr)  # before the new arrays replace the old
            self.opt_state = opt_state
            for name, p in self.optimizer.named_parameters():
                p.data = params[name]
            for module in self._dropouts:  # as many masks as the eager step draws
                module.calls += len(micro_batches) if module.p > 0 else 0
            return loss, norm
        self.optimizer.zero_grad()
        loss = 0.0
        for batch in micro_batches:  # gradients add up in .grad; 1/n makes their mean
            micro_loss = self.loss_fn(self.model, batch)
            (micro_loss * (1.0 / len(micro_batches))).backward()
            loss += micro_loss.item() / len(micro_batches)
        params = [p for _, p in self.optimizer.named_parameters()]
        if self.config.grad_clip:
            norm = float(clip_grad_norm(params, self.config.grad_clip))
        else:
            norm = float(global_norm(p.grad for p in params if p.grad is not None))
        self._check_finite(loss, norm, lr)  # before the optimizer touches the weights
        self.optimizer.lr = lr
        self.optimizer.step()
        return loss, norm

    def _pure_step(self, params, opt_state, micro_batches, lr, step):
        """The whole step as a pure function of arrays, for ``jax.jit``."""
        n = len(micro_batches)
        saved_calls = [m.calls for m in self._dropouts]
        for module in self._dropouts:  # masks from the (traced) step number, as in eager
            module.calls = step * n
        try:
            loss, grads = 0.0, {name: 0.0 for name in params}
            for batch in micro_batches:  # unrolled: one compiled program for the whole step
                micro_loss, micro_grads = value_and_grad(self._bound_loss)(params, batch)
                loss = loss + micro_loss / n
                grads = {name: grads[name] + g / n for name, g in micro_grads.items()}
        finally:
            for module, calls in zip(self._dropouts, saved_calls):
                module.calls = calls
        if self.config.grad_clip:
            grads, norm = clip_grads(grads, self.config.grad_clip)
        else:
            norm = global_norm(grads.values())
        params, opt_state = self.optimizer.update(params, grads, opt_state, lr)
        return params, opt_state, loss, norm

    def _bound_loss(self, tensors, batch):
        with self.model.bind(tensors):
            return self.loss_fn(self.model, batch)

    def _pure_eval_loss(self, params, batch):
        with no_grad():
            tensors = {name: Tensor(array) for name, array in params.items()}
            return self._bound_loss(tensors, batch).data

    def _params(self):
        return {name: p.data for name, p in self.optimizer.named_parameters()}

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
            row["val_loss"] = self.evaluate()
            row["val_ppl"] = math.exp(min(row["val_loss"], 50.0))
            if self.best_val_loss is None or row["val_loss"] < self.best_val_loss:
                self.best_val_loss = row["val_loss"]
            self._say(
                bar,
                f"step {self.step}: train loss {row['loss']:.4f}, val loss "
                f"{row['val_loss']:.4f} (perplexity {row['val_ppl']:.2f})",
            )
        if self.sample_fn is not None:
            row["samples"] = self.sample_fn(self.model)
            for text in row["samples"]:
                self._say(bar, f"  sample: {text!r}")
        return row.get("val_loss")

    def _say(self, bar, line):
        if self.config.progress:
            bar.write(line)

    def _prepare_out_dir(self, resume):
        leftovers = ckpt.clean_partial(self.out_dir)
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
