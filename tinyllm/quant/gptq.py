"""GPTQ (Frantar et al., 2023): round the weights one input column at a time, and move each
column's rounding error onto the columns not yet rounded, where the inputs can absorb it.

A layer's output error on calibration inputs X (n, in) is ``||X (Q - W)^T||^2`` for the
(out, in) weight W; for each output row it is a quadratic form in the row's error, with
Hessian ``H = 2 X^T X / n``. Optimal Brain Quantization rounds one weight q of a row and
updates the row's remaining weights F by ``-(w - q) / [H_F^-1]_qq * [H_F^-1]_{:,q}``,
which minimises the error given q. GPTQ rounds every row's columns in the same order, so
all rows share the inverse Hessians, and these come from one Cholesky factor:

    H += 1% of mean(diag H) on the diagonal            (dampening; dead inputs: H_ii = 1)
    U = cholesky(H^-1), upper (H^-1 = U^T U)
    for each column j, in order:
        q_j = Q(w_j)                                   a group's scale is set at its first
        e = (w_j - q_j) / U_jj                         column, from the updated weights
        w_k -= e * U_jk   for every k > j              (lazily, a block of 128 at a time)

The grid is Q4_0's exactly (``formats.q4_0_scale``, ``formats.q4_0_round``): groups of 32
along the input, d = the signed largest magnitude / -8 computed when the group's first
column is reached, values round(w / d) + 8 in 0..15, and the error uses the float16 scale
the file stores. So the result packs into llama.cpp's Q4_0 bytes without loss, and with a
diagonal H (no column informs another) it *is* round-to-nearest Q4_0. The columns go in
their natural order: the reference's ``act_order`` (largest diag(H) first) would mix
columns of different groups.

Over a model the layers are done as the reference does with ``--true-sequential``: block
by block, and in each block the layers that read one input together (q, k and v; o; gate
and up; down), each group's inputs computed with the block's earlier layers already
quantized, from the previous blocks' quantized outputs. Rows of the layers in one group
share H and are rounded in one pass.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> w = rng.standard_normal((4, 64)).astype(np.float32)           # (out, in)
>>> x = rng.standard_normal((256, 64)) * np.linspace(0.1, 3, 64)  # inputs of uneven size
>>> parts = gptq_quantize(w, 2 * x.T @ x / len(x))
>>> sorted(parts), parts["packed"].shape, parts["scales"].dtype
(['packed', 'scales'], (4, 32), dtype('float16'))
>>> def error(p):
...     return np.linalg.norm(x @ (formats.dequantize(p, "q4_0") - w).T)
>>> bool(error(parts) < error(formats.quantize(w, "q4_0")))          # less than rounding
True
"""

import numpy as np

from ..autograd import Tensor, no_grad, to_numpy
from . import formats
from .calibration import InputStats, block_inputs, linear_paths, record_inputs, run_block
from .linear import QuantizedLinear, Scheme, register_scheme

FORMAT = "q4_0"
DAMP = 0.01  # of the mean diagonal, added to H's diagonal
LAZY = 128  # columns updated together (the paper's lazy batches)


def inverse_hessian_factor(hessian, damp=DAMP):
    """The upper Cholesky factor U of H^-1 (H^-1 = U^T U), after dampening ``hessian`` (a
    float64 copy); and the dead inputs (zero on H's diagonal), which get H_ii = 1."""
    H = np.array(hessian, dtype=np.float64)
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    H[np.diag_indices_from(H)] += damp * np.mean(np.diag(H))
    return np.linalg.cholesky(np.linalg.inv(H)).T, dead


def gptq_quantize(weight, hessian, *, damp=DAMP, lazy=LAZY):
    """Q4_0 parts of ``weight`` (out, in) by GPTQ, given ``hessian`` (in, in) of its inputs
    (module doc). ``lazy`` (a multiple of 32) is how many columns are updated together."""
    W = np.array(weight, dtype=np.float64)  # (out, in), updated as columns are rounded
    rows, cols = W.shape
    if cols % formats.BLOCK or lazy % formats.BLOCK:
        raise ValueError(
            f"gptq: rows of {cols} weights and lazy batches of {lazy} must be multiples of "
            f"{formats.BLOCK} (Q4_0's groups)"
        )
    U, dead = inverse_hessian_factor(hessian, damp)
    W[:, dead] = 0  # inputs never seen: their weights do nothing on the calibration text
    values = np.zeros((rows, cols), np.uint8)
    scales = np.zeros((rows, cols // formats.BLOCK), np.float32)
    for i in range(0, cols, lazy):
        end = min(i + lazy, cols)
        errors = np.zeros((rows, end - i))
        for j in range(i, end):
            group = j // formats.BLOCK
            if j % formats.BLOCK == 0:  # the group's scale, from the weights as they are now
                block = W[:, j : j + formats.BLOCK].astype(np.float32)
                scales[:, group] = formats.q4_0_scale(block)[:, 0]
            d = scales[:, group]
            values[:, j] = formats.q4_0_round(W[:, j].astype(np.float32), d)
            rounded = (values[:, j].astype(np.float64) - 8) * d.astype(np.float16)
            error = (W[:, j] - rounded) / U[j, j]  # (out,)
            W[:, j:end] -= np.outer(error, U[j, j:end])  # the rest of this lazy batch
            errors[:, j - i] = error
        W[:, end:] -= errors @ U[i:end, end:]  # the columns after the batch, at once
    packed = formats.pack_nibbles(values.reshape(rows, -1, formats.BLOCK)).reshape(rows, -1)
    return {"scales": scales.astype(np.float16), "packed": packed}


def calibrate(model, ids, paths):
    """The GPTQ scheme's step: quantize the layers at ``paths`` block by block on calibration
    ``ids`` (n, T), each group of layers reading one input at a time (module doc); the
    quantized layers are swapped in as it goes. Returns {path: Q4_0 parts}."""
    chunks = block_inputs(model, ids)
    done = {}
    for index, block in enumerate(model.blocks):
        prefix = f"blocks.{index}."
        pending = [p for p in linear_paths(block) if prefix + p in paths]
        while pending:
            stats, firsts = record_inputs(block, chunks, pending)
            if firsts:  # the layers reading what the first one called reads
                leader = next(iter(firsts.values()))
                group = [p for p, x in firsts.items() if x is leader]
                hessian = stats[group[0]].hessian()
            else:  # never called on this text (an expert no token chose): round to nearest
                group = pending
                hessian = np.eye(stats[group[0]].xtx.shape[0])  # no column informs another
            layers = dict(block.named_modules())
            weights = [to_numpy(layers[p].weight.data).T for p in group]  # (out, in) each
            parts = gptq_quantize(np.concatenate(weights), hessian)
            rows = np.cumsum([0] + [len(w) for w in weights])
            for p, start, end in zip(group, rows[:-1], rows[1:]):
                done[prefix + p] = {k: v[start:end] for k, v in parts.items()}
                block.set_submodule(p, _swapped(layers[p], done[prefix + p]))
            pending = [p for p in pending if p not in group]
        chunks = run_block(block, chunks)
    if "lm_head" in paths:  # the output layer reads the final norm of the last block's output
        done["lm_head"] = _output_layer(model, chunks)
    return done


def _swapped(linear, parts):
    return QuantizedLinear.from_linear(linear, FORMAT, lambda *_: parts)


def _output_layer(model, chunks):
    stats = InputStats(model.lm_head.weight.shape[0])
    with no_grad():
        for x in chunks:
            stats.add(model.final_norm(Tensor(x)).data)
    return gptq_quantize(to_numpy(model.lm_head.weight.data).T, stats.hessian())


GPTQ = register_scheme(Scheme("gptq", FORMAT, calibrate=calibrate))
