"""What a run keeps in its folder: ``RunFolder``, the part of ``Trainer`` that writes a
checkpoint of everything a resume needs (the model, the optimizer, the data's place, the
dropout seeds, the loss scale, the step and clocks), refreshes the exported model beside
it, and loads the latest one back. The checkpoint folders themselves - written whole or not
at all, pruned, found again - are ``checkpoint.py``'s.
"""

import contextlib

from ..backend import to_numpy
from . import checkpoint as ckpt
from .sharding import on_host


class RunFolder:
    """Saving and resuming ``Trainer``'s run in ``out_dir``. A base of ``Trainer``, whose
    ``__init__`` and loop set what these methods read and restore: the model, optimizer,
    batches, config, tokenizer, step and clocks, ``plan``, ``writes`` and ``opt_state``."""

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
