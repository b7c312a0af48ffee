"""Calibration: the text AWQ and GPTQ look at, and what each linear layer's inputs are like.

Rounding to nearest looks at the weights alone. AWQ and GPTQ also look at the inputs a
layer meets on some *calibration* text, because the error that matters is the layer's
output error ``X @ (W_q - W)``, and that depends on ``X``. Both need only two statistics of
the inputs ``X`` (n tokens, in_features) of each layer:

    X^T X   (in_features, in_features)   GPTQ's Hessian is H = 2 X^T X / n; AWQ scores a
                                         candidate D = W_q - W by tr(D^T X^T X D) / n, which
                                         is the mean squared output error over all n tokens
    |X| summed over tokens (in_features) AWQ's per-channel activation size

The calibration tokens are windows cut evenly from the *training* split of a corpus (the
first 90%, as pretraining splits it): the validation text, on which quantized models are
scored, stays unseen.

The model is run block by block (``block_inputs`` catches the first block's input, and
``run_block`` carries it through a block), so a method can change a block - fold scales,
swap in quantized layers - before the next block's inputs are computed from it.

>>> tokens = np.arange(100)
>>> calibration_windows(tokens, n_sequences=3, length=10)[:, :3]
array([[ 0,  1,  2],
       [45, 46, 47],
       [90, 91, 92]])
>>> calibration_windows(tokens, n_sequences=20, length=10)
Traceback (most recent call last):
...
ValueError: calibration text too short: 20 sequences of 10 tokens need 200 tokens, got 100
"""

from pathlib import Path

import numpy as np

from ..autograd import Tensor, no_grad, to_numpy
from ..data import encode_corpus, load_corpus, train_val_split
from ..nn import Linear, Module

N_SEQUENCES = 256  # calibration windows by default: 32,768 tokens at a context of 128 (the
# papers take 128 sequences of 512 (AWQ) or 2,048 (GPTQ) tokens; short contexts need more windows)
VAL_FRACTION = 0.1  # the held-out end of a corpus, as pretraining splits it
BATCH = 16  # windows run through the model at once


def calibration_windows(tokens, n_sequences, length):
    """``n_sequences`` windows of ``length`` tokens spread evenly over ``tokens``, as an
    int64 array (n_sequences, length); a ValueError when there are not enough tokens."""
    for name, value in (("n_sequences", n_sequences), ("length", length)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"calibration: {name}={value!r}, expected a positive integer")
    need = n_sequences * length
    if len(tokens) < need:
        raise ValueError(
            f"calibration text too short: {n_sequences} sequences of {length} tokens need "
            f"{need:,} tokens, got {len(tokens):,}"
        )
    starts = np.linspace(0, len(tokens) - length, n_sequences).astype(np.int64)  # >= length apart
    return np.stack([np.asarray(tokens[s : s + length]) for s in starts]).astype(np.int64)


def corpus_calibration(corpus, tokenizer, n_sequences=N_SEQUENCES, length=128):
    """Calibration windows from the training split of ``corpus`` (a shipped corpus's name
    or a text file) under ``tokenizer``: (n_sequences, length) token ids."""
    text = load_corpus(corpus)
    tokens = encode_corpus(text, tokenizer, name=_name(corpus))
    train, _ = train_val_split(tokens, VAL_FRACTION)
    try:
        return calibration_windows(train, n_sequences, length)
    except ValueError as error:
        raise ValueError(f"{error} (the training split of {corpus})") from None


def _name(corpus):
    """The name a corpus's cached token file carries (the one evaluation reads too)."""
    return (
        Path(corpus).stem if Path(corpus).is_file() else corpus.replace("/", "_").replace(":", "_")
    )


# --- what a layer's inputs are like -------------------------------------------------------------
class InputStats:
    """Running sums over the inputs ``x`` (..., in_features) a layer has seen: ``count``
    tokens, ``xtx`` = X^T X, ``abs_sum`` = |X| summed over tokens (float64)."""

    def __init__(self, in_features):
        self.count = 0
        self.xtx = np.zeros((in_features, in_features))
        self.abs_sum = np.zeros(in_features)

    def add(self, x):
        x = to_numpy(x).reshape(-1, self.abs_sum.shape[0])  # (tokens, in_features)
        self.count += x.shape[0]
        self.xtx += (x.T @ x).astype(np.float64)  # a float32 product per batch, summed in float64
        self.abs_sum += np.abs(x).sum(axis=0, dtype=np.float64)

    def hessian(self):
        """GPTQ's H = 2 X^T X / n (in_features, in_features)."""
        return 2 * self.xtx / max(self.count, 1)

    def mean_abs(self):
        """AWQ's activation size: the mean |x| of each input channel (in_features,)."""
        return self.abs_sum / max(self.count, 1)


class _Recorder(Module):
    """Stands in for a layer while its inputs are recorded; computes what the layer does."""

    def __init__(self, path, layer, stats, log):
        self.path, self.layer, self.stats, self.log = path, layer, stats, log

    def forward(self, x):
        if self.path not in self.log.firsts:  # in call order; tells which layers share an input
            self.log.firsts[self.path] = x
        self.stats.add(x.data if isinstance(x, Tensor) else x)
        return self.layer(x)


class _FirstInputs:
    """{path: the first input} in call order, shared by the recorders of one pass (a plain
    object: a Module would take a dict attribute for named submodules)."""

    def __init__(self):
        self.firsts = {}


class _Caught(Exception):
    def __init__(self, x):
        self.x = x


class _Catcher(Module):
    """Stands in for the first block: catches its input and stops the forward pass."""

    def forward(self, x, *args, **kwargs):
        raise _Caught(x)


def linear_paths(module):
    """Paths of the ``Linear`` layers inside ``module``, in attribute order."""
    return [path for path, m in module.named_modules() if isinstance(m, Linear)]


def block_inputs(model, ids):
    """The first block's inputs (embeddings, + positions for GPT-2) for calibration ids
    (n, T): a list of arrays (batch, T, d_model), ``BATCH`` windows each."""
    if not getattr(model, "blocks", None):
        raise ValueError(
            f"calibrated quantization runs a Transformer block by block; a "
            f"{type(model).__name__} has no blocks"
        )
    first = model.blocks[0]
    model.set_submodule("blocks.0", _Catcher())
    chunks = []
    try:
        with no_grad():
            for start in range(0, len(ids), BATCH):
                try:
                    model(ids[start : start + BATCH])
                except _Caught as caught:
                    chunks.append(caught.x.data if isinstance(caught.x, Tensor) else caught.x)
    finally:
        model.set_submodule("blocks.0", first)
    return chunks


def run_block(block, chunks):
    """``block``'s outputs for its input chunks (as ``block_inputs`` gives them)."""
    with no_grad():
        return [block(Tensor(x))[0].data for x in chunks]


def record_inputs(block, chunks, paths):
    """Run ``block`` on ``chunks`` with the layers at ``paths`` (inside the block) recording
    their inputs; returns ``({path: InputStats}, {path: first input})``, the second in the
    order the layers were first called, its values telling which layers read one input (the
    same object: q, k and v). A layer never called has count 0 and no first input."""
    layers = dict(block.named_modules())
    log = _FirstInputs()
    recorders = {
        p: _Recorder(p, layers[p], InputStats(layers[p].weight.shape[0]), log) for p in paths
    }
    for path, recorder in recorders.items():
        block.set_submodule(path, recorder)
    try:
        run_block(block, chunks)
    finally:
        for path, recorder in recorders.items():
            block.set_submodule(path, recorder.layer)
    return {p: r.stats for p, r in recorders.items()}, log.firsts
