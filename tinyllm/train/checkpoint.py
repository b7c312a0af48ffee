"""Checkpoints: everything a run needs to continue exactly where it stopped.

Resuming exactly needs more than the weights. AdamW's moments and step counts decide the
next update; the data stream's random state decides the next batch; the step number and
the dropout layers' seeds decide the next masks. A checkpoint folder holds all of it, in
open formats, for any ``Module`` (a model with adapters, an extra head or Buffers too):

    checkpoints/step-000500/
        model.json             what the model is: its class, and its config where it has one
        model.safetensors      the model's own state_dict(): parameters and buffers by path
        optimizer.safetensors  the optimizer's arrays, as "exp_avg/<parameter name>", ...
        trainer_state.json     step, optimizer step counts, data and dropout state, config
        tokenizer.json         and tokenizer_config.json (or char_vocab.json) when the
                               run has a tokenizer

The Hugging Face form of a model (``save_pretrained``) is an export, written beside the
checkpoints by the Trainer where the model has one; a checkpoint is tinyllm's own.

A folder is written under a temporary name and renamed into place when complete, so a
crash or a kill mid-write leaves the previous checkpoints whole. Old folders are renamed
out of the way before they are deleted, so a kill mid-delete leaves none half-gone either:
``latest_checkpoint`` only ever sees complete folders, and ``clean_partial`` removes the
leftovers.

>>> import tempfile, numpy as np
>>> from tinyllm.models import Transformer, get_preset
>>> from tinyllm.optim import AdamW
>>> model = Transformer(get_preset("tiny", n_layer=1, d_model=32, n_head=2), seed=0)
>>> optimizer = AdamW(model)
>>> with tempfile.TemporaryDirectory() as run:
...     path = save_checkpoint(run, model=model, optimizer=optimizer, state={"step": 7})
...     state = load_checkpoint(latest_checkpoint(run), model=model, optimizer=optimizer)
>>> path.name, state["step"]
('step-000007', 7)
>>> sorted(describe_model(model))
['class', 'config']
"""

import importlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..files import atomic_open
from ..models.config import ModelConfig
from ..models.weights import read_safetensors, write_safetensors

CHECKPOINTS = "checkpoints"
_NAME = re.compile(r"^step-(\d+)$")


def checkpoint_dir(run_dir, step):
    return Path(run_dir) / CHECKPOINTS / f"step-{step:06d}"


def save_checkpoint(run_dir, *, model, optimizer, state, opt_state=None, tokenizer=None):
    """Write ``run_dir/checkpoints/step-NNNNNN`` atomically and return its path.

    ``state`` is a JSON-ready dict holding at least ``"step"``; ``opt_state`` is the
    optimizer state of a compiled loop (left out: the optimizer's own).
    """
    final = checkpoint_dir(run_dir, state["step"])
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    old = None
    try:
        write_safetensors(partial / "model.safetensors", model.state_dict())
        with atomic_open(partial / "model.json", "w") as file:
            json.dump(describe_model(model), file, indent=1)
        optimizer_state = optimizer.state_dict(opt_state)
        arrays = {
            f"{key}/{name}": array
            for key, per_name in optimizer_state.items()
            if key != "step"
            for name, array in per_name.items()
        }
        write_safetensors(partial / "optimizer.safetensors", arrays)
        state = {**state, "optimizer_steps": optimizer_state["step"]}
        with atomic_open(partial / "trainer_state.json", "w") as file:
            json.dump(state, file, indent=1)
        if tokenizer is not None:
            tokenizer.save(partial)
        _fsync_dir(partial)
        old = _set_aside(final) if final.exists() else None  # the same step saved again
        os.replace(partial, final)
        _fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        if old is not None and not final.exists():  # put the earlier save of this step back
            os.replace(old / final.name, final)
            old.rmdir()
        raise
    if old is not None:
        shutil.rmtree(old)
    return final


def list_checkpoints(run_dir):
    """The complete checkpoint folders of a run, oldest first."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir):
    """The newest complete checkpoint folder of a run, or None."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def prune_checkpoints(run_dir, keep):
    """Delete all but the newest ``keep`` checkpoints."""
    for path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(_set_aside(path))


def clean_partial(run_dir):
    """Remove the temporary folders a killed save left behind; returns their names."""
    folder = Path(run_dir) / CHECKPOINTS
    leftovers = sorted(folder.glob(".step-*.tmp")) if folder.is_dir() else []
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    return [path.name for path in leftovers]


def _set_aside(path):
    """Move a checkpoint folder out of the ``step-*`` names in one atomic rename and return
    where it went: deleting it there can be cut short by a kill without ever leaving a
    half-deleted ``step-*`` folder for ``latest_checkpoint`` to find (``clean_partial``
    removes what a kill left)."""
    trash = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.replace(path, trash / path.name)
    return trash


def describe_model(model):
    """What a checkpoint says its model is: ``{"class": "module.Class", ...}`` plus what the
    model's own ``describe()`` adds (a Transformer its config), and under ``"layers"`` the
    layers swapped in after it was built (a class with ``swapped_in = True``, such as
    ``QuantizedLinear``), each described the same way, by path."""
    cls = type(model)
    description = {"class": f"{cls.__module__}.{cls.__qualname__}", **model.describe()}
    swapped = {
        path: describe_model(m)
        for path, m in model.named_modules()
        if path and getattr(m, "swapped_in", False)
    }
    return {**description, "layers": swapped} if swapped else description


def save_model(directory, model, tokenizer=None):
    """Write a model folder that ``load_model`` rebuilds: ``model.json``, ``model.safetensors``
    (the state dict, in the dtypes it holds) and the tokenizer if given; returns the folder.

    This is the form of a model with no Hugging Face form (a quantized one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / "model.safetensors", model.state_dict())
    with atomic_open(directory / "model.json", "w") as file:
        json.dump(describe_model(model), file, indent=1)
    if tokenizer is not None:
        tokenizer.save(directory)
    return directory


def load_model(path):
    """Rebuild the model of a checkpoint or model folder from its ``model.json`` and weights.

    Only tinyllm's own classes that know how to rebuild themselves (``from_description``)
    are rebuilt; for any other model, build it and call ``load_checkpoint``.
    """
    path = Path(path)
    description = _read_description(path)
    model = _rebuild(path, description)
    for layer_path, layer in description.get("layers", {}).items():
        old, new = dict(model.named_modules())[layer_path], _rebuild(path, layer)
        new.freeze(not any(p.requires_grad for p in old.parameters()))  # as frozen as before
        model.set_submodule(layer_path, new)
    weights = read_safetensors(path / "model.safetensors")
    try:
        _check_same_tensors(path, weights, model)
    except ValueError as err:  # an adapter or a head was added to the described model
        raise ValueError(
            f"cannot rebuild the model of {path} from its description alone ({err}); build "
            "it and load the checkpoint into it with load_checkpoint(path, model=...)"
        ) from None
    return model.load_state_dict(weights)


def load_model_folder(directory):
    """The model of a model folder in either form, in eval mode: tinyllm's own
    (``model.json``, as ``save_model`` writes it) or Hugging Face's (``config.json``)."""
    directory = Path(directory)
    if (directory / "model.json").is_file():
        return load_model(directory).eval()
    from ..models import Transformer  # the model classes sit above this module's helpers

    return Transformer.from_pretrained(directory)


def load_checkpoint(path, *, model, optimizer):
    """Load a checkpoint into ``model`` and ``optimizer``; returns its ``trainer_state``.

    The checkpoint must be of the same model: the same class and architecture (a
    difference is named, field by field) and the same parameter and buffer names and
    shapes. Everything is checked before anything is loaded.
    """
    path = Path(path)
    state_path = path / "trainer_state.json"
    if not state_path.is_file():
        raise FileNotFoundError(f"{path}: no trainer_state.json; is this a checkpoint folder?")
    if (path / "model.json").is_file():
        _check_same_model(path, _read_description(path), model)
        weights = read_safetensors(path / "model.safetensors")
    else:  # written by tinyllm 0.4 and before: the checkpoint was a Hugging Face folder
        from ..models import Transformer  # the model classes sit above this module's helpers

        saved = Transformer.from_pretrained(path)
        _check_same_model(path, describe_model(saved), model)
        weights = saved.state_dict()
    _check_same_tensors(path, weights, model)
    state = json.loads(state_path.read_text())
    arrays = read_safetensors(path / "optimizer.safetensors")
    optimizer_state = {"step": state.pop("optimizer_steps")}
    for key_name, array in arrays.items():
        key, name = key_name.split("/", 1)
        optimizer_state.setdefault(key, {})[name] = array
    optimizer.load_state_dict(optimizer_state)
    model.load_state_dict(weights)
    return state


def _rebuild(path, description):
    """A fresh module of a ``describe_model`` dict (without its swapped-in layers)."""
    module_name, _, class_name = description["class"].rpartition(".")
    cls = None
    if module_name.split(".")[0] == "tinyllm":
        cls = getattr(importlib.import_module(module_name), class_name, None)
    if not hasattr(cls, "from_description"):
        raise ValueError(
            f"{path}: cannot rebuild a {description['class']} by itself; build the model "
            "and load the checkpoint into it with load_checkpoint(path, model=...)"
        )
    return cls.from_description(description)


def _read_description(path):
    description = json.loads((path / "model.json").read_text())
    if not isinstance(description, dict) or not isinstance(description.get("class"), str):
        raise ValueError(f'{path / "model.json"}: expected {{"class": ..., ...}}')
    return description


def _check_same_model(path, saved, model):
    ours = describe_model(model)
    if saved["class"] != ours["class"]:
        raise ValueError(
            f"{path} holds a checkpoint of a {saved['class']}, not of a {ours['class']}"
        )
    if "config" not in ours or "config" not in saved:
        return
    theirs = type(model.config).from_dict(saved["config"])
    mine, theirs = _architecture(model.config), _architecture(theirs)
    differ = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
    if differ:
        detail = ", ".join(f"{k}={a!r} (this model: {b!r})" for k, (a, b) in differ.items())
        raise ValueError(f"{path} holds a checkpoint of another architecture: {detail}")


def _check_same_tensors(path, weights, model):
    """The saved arrays have the model's names and shapes (a wrapped layer or an extra
    head changes both), or a ValueError that lists the differences."""
    ours = {name: tuple(t.shape) for name, t in [*model.named_parameters(), *model.named_buffers()]}
    theirs = {name: tuple(np.shape(a)) for name, a in weights.items()}
    problems = [f"missing {sorted(set(ours) - set(theirs))}"] if set(ours) - set(theirs) else []
    if set(theirs) - set(ours):
        problems.append(f"unexpected {sorted(set(theirs) - set(ours))}")
    problems += [
        f"{name} has shape {theirs[name]}, this model {shape}"
        for name, shape in ours.items()
        if name in theirs and theirs[name] != shape
    ]
    if problems:
        raise ValueError(f"{path} does not fit this model: {'; '.join(problems)}")


def _architecture(config):
    """The config fields that decide the function a model computes, numbers as float32 (so
    10000 and 10000.0 match); training-only settings (dropout, init, aux-loss weight) left out."""
    if not isinstance(config, ModelConfig):
        return config.to_dict()
    fields = config.replace(d_ff=config.ff_dim, d_head=config.head_dim).to_dict()
    for name in ("dropout", "init_std", "router_aux_loss_coef"):
        del fields[name]
    return {
        name: float(np.float32(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
        for name, v in fields.items()
    }


def _fsync_dir(path):
    """Make a rename or new files in ``path`` durable (where the OS lets a folder be synced)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
