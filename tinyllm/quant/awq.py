"""AWQ, activation-aware weight quantization (Lin et al., 2023), stored as Q4_0.

A few input channels of a layer carry much larger activations than the rest, and the
weights that meet them matter most: rounding them costs the most output error. AWQ
protects them by scaling. For any s > 0 per input channel,

    y = x @ W = (x / s) @ (s * W)                       W (in_features, out_features)

so a layer may store ``Q(s * W)`` and read ``x / s``. Rounding ``s * W`` puts the error of a
salient row (large s) on a finer relative grid: the block scale is shared, so a weight
scaled up is rounded with less relative error, and the ``1 / s`` on the input shrinks the
error of what it meets. ``x / s`` costs nothing when the ``1 / s`` is folded into whatever
made ``x``, leaving the float model's function unchanged before rounding:

| layers scaled          | their input                  | 1 / s folded into                          |
|------------------------|------------------------------|--------------------------------------------|
| q, k, v                | the attention norm's output  | the norm's weight (and a LayerNorm's bias) |
| o                      | the values, head by head     | v's output columns (and bias)              |
| gate and up (or up)    | the MLP norm's output        | the norm's weight (and bias)               |
| down, SwiGLU           | silu(gate) * up              | up's output columns: silu(g) * (u / s)     |
| down, GELU (GPT-2)     | gelu(up)                     | none: gelu(u / s) != gelu(u) / s           |
| experts, router (MoE)  | -                            | none                                       |

Layers with nowhere to fold (and ``lm_head``, whose norm's output other heads read too)
are rounded as plain Q4_0. With grouped-query attention a value channel feeds the
``n_head / n_kv_head`` query heads of its group, so o's scales are shared across a group
(one per value channel).

The scales come from a grid, as in the reference code (``llm-awq``'s ``auto_scale``):
``s = mean|x| ** alpha`` for alpha = 0, 0.05, ..., 0.95, divided by ``sqrt(max(s) min(s))``;
each candidate is scored by the mean squared output error of the layers that share the
input, ``tr(D^T X^T X D) / n`` with ``D = Q(s * W) / s - W``, exactly over all calibration
tokens (``calibration.InputStats``); the lowest wins. alpha = 0 is round-to-nearest, so the
error never exceeds it on the calibration inputs. Unlike the reference, the score is the
layers' own outputs, not the whole attention's or MLP's.

Then, as the reference's ``auto_clip``, each group of 32 weights may take a smaller range:
llama.cpp's Q4_0 scale d = max / -8 times a ratio of 1, 0.95, ..., 0.55, the one with the
least output error of the group on the calibration inputs (values past the shrunk range
clip to the grid's ends). Queries and keys are not clipped (the reference skips them too).
A Q4_0 block may hold any float16 scale, so the bytes stay llama.cpp's, and AWQ costs what
round-to-nearest Q4_0 costs: 4.5 bits a weight.

>>> import numpy as np
>>> from tinyllm.models import Transformer, get_preset
>>> model = Transformer(get_preset("tiny-llama", vocab_size=50, n_layer=1), seed=0).eval()
>>> ids = np.random.default_rng(0).integers(0, 50, (4, 16))
>>> before = model(ids)[0].numpy()
>>> scales = fold_scales(model, ids)
>>> len(scales)                  # q, k, v, o, gate, up, down: a Llama block has a fold for each
7
>>> bool(np.abs(model(ids)[0].numpy() - before).max() < 1e-5)     # the function is unchanged
True
"""

from dataclasses import dataclass

import numpy as np

from ..autograd import to_numpy
from ..nn import LayerNorm, Linear, RMSNorm
from ..nn.mlp import MLP, SwiGLU
from . import formats
from .calibration import block_inputs, record_inputs, run_block
from .linear import Scheme, register_scheme

ALPHAS = np.arange(20) / 20  # the grid of llm-awq's auto_scale (n_grid = 20)
CLIP_RATIOS = 1 - np.arange(10) / 20  # 1, 0.95, .., 0.55: llm-awq's auto_clip (shrink <= 0.5)
NO_CLIP = ("q_proj", "k_proj")  # their errors meet in the attention scores (llm-awq skips them)
FORMAT = "q4_0"


@dataclass(frozen=True)
class ScaleGroup:
    """Layers that read one input (``consumers``, paths in a block) and the module whose
    output it is (``source``), where ``1 / s`` is folded. ``heads`` = (n_head, n_kv_head,
    head_dim) when the source is v and the consumer o: scales are shared per value channel."""

    source: str
    consumers: tuple
    heads: tuple = None


def scale_groups(block):
    """The ``ScaleGroup``s of a ``Block`` where folding keeps the function (module doc)."""
    attention, mlp = block.attention, block.mlp
    groups = [
        ScaleGroup("attention_norm", ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
        ScaleGroup(
            "attention.v_proj",
            ("attention.o_proj",),
            (attention.n_head, attention.n_kv_head, attention.head_dim),
        ),
    ]
    if isinstance(mlp, SwiGLU):
        groups += [
            ScaleGroup("mlp_norm", ("mlp.gate", "mlp.up")),
            ScaleGroup("mlp.up", ("mlp.down",)),
        ]
    elif isinstance(mlp, MLP):
        groups.append(ScaleGroup("mlp_norm", ("mlp.up",)))
    return groups


def search_scale(weight, stats, heads=None):
    """The AWQ scale s (in_features,) for ``weight`` (in_features, out_features: the
    consumers side by side) whose inputs ``stats`` (``InputStats``) describes, and the
    scores (mean squared output error) of the grid's alphas.

    With ``heads`` = (n_head, n_kv_head, head_dim) the input is o's, and s is searched per
    value channel, each repeated for the query heads of its group."""
    xtx = stats.xtx / max(stats.count, 1)  # (in, in)
    size = stats.mean_abs()  # (in,)
    expand = _per_head(heads) if heads else (lambda s: s)
    if heads:
        n_head, n_kv_head, head_dim = heads
        size = size.reshape(n_kv_head, n_head // n_kv_head, head_dim).mean(axis=1).reshape(-1)
    scores = []
    for alpha in ALPHAS:
        s = expand(_normalized(size**alpha))  # (in,)
        error = rounded(weight, s) - weight  # (in, out)
        scores.append(float(np.sum(error * (xtx @ error))))  # sum over outputs of D^T X^T X D / n
    best = ALPHAS[int(np.argmin(scores))]
    return expand(_normalized(size**best)).astype(np.float32), scores


def _normalized(s):
    s = np.maximum(s, 1e-4)
    return s / np.sqrt(s.max() * s.min())


def _per_head(heads):
    n_head, n_kv_head, head_dim = heads
    group = n_head // n_kv_head

    def expand(s):  # (n_kv_head * head_dim,) -> (n_head * head_dim,), query head h -> h // group
        return np.repeat(s.reshape(n_kv_head, 1, head_dim), group, axis=1).reshape(-1)

    return expand


def rounded(weight, s):
    """What a layer storing Q4_0 of ``s * weight`` and reading ``x / s`` multiplies by:
    ``Q(s * W) / s`` (in_features, out_features), float64."""
    scaled = (weight * s[:, None]).astype(np.float32)
    back = formats.dequantize(formats.quantize(scaled.T, FORMAT), FORMAT).T  # (in, out)
    return back.astype(np.float64) / s[:, None]


def fold_scales(model, ids, paths=None):
    """Search the AWQ scales of ``model``'s blocks on calibration ``ids`` (n, T) and fold them
    in place (module doc); the float model computes the same function after. Only groups
    whose layers are all in ``paths`` (default: all) are scaled. Returns {consumer path: s}."""
    return _fold_scales(model, ids, paths)[0]


def _fold_scales(model, ids, paths):
    """``fold_scales``, also returning the input statistics of every block layer in
    ``paths`` (of the float model's inputs, before the scales)."""
    chunks = block_inputs(model, ids)
    scales, all_stats = {}, {}
    for index, block in enumerate(model.blocks):
        prefix = f"blocks.{index}."
        groups = [
            g
            for g in scale_groups(block)
            if paths is None or all(prefix + c in paths for c in g.consumers)
        ]
        wanted = [g.consumers[0] for g in groups]
        wanted += [p[len(prefix) :] for p in paths or () if p.startswith(prefix)]
        stats, _ = record_inputs(block, chunks, list(dict.fromkeys(wanted)))
        all_stats.update({prefix + p: v for p, v in stats.items()})
        layers = dict(block.named_modules())
        found = []  # search every group on the float block first, then fold
        for group in groups:
            weight = np.concatenate([_weight(layers[c]) for c in group.consumers], axis=1)
            s, _ = search_scale(weight, stats[group.consumers[0]], group.heads)
            found.append((group, s))
        for group, s in found:
            _fold(layers[group.source], layers, group, s)
            scales.update({prefix + c: s for c in group.consumers})
        if index + 1 < len(model.blocks):
            chunks = run_block(block, chunks)
    return scales, all_stats


def _weight(linear):
    return to_numpy(linear.weight.data).astype(np.float64)  # (in, out)


def _set(parameter, value):
    parameter.data = parameter.backend.asarray(value.astype(np.float32))


def _fold(source, layers, group, s):
    """Consumers' weight rows times s; the source's output divided by s (per value channel
    for v, whose output is o's input grouped by query heads)."""
    for name in group.consumers:
        _set(layers[name].weight, _weight(layers[name]) * s[:, None])
    if group.heads:
        n_head, n_kv_head, head_dim = group.heads
        s = s.reshape(n_kv_head, n_head // n_kv_head, head_dim)[:, 0].reshape(-1)
    if isinstance(source, Linear):  # its output channels: the weight's columns
        _set(source.weight, _weight(source) / s)
    elif isinstance(source, (RMSNorm, LayerNorm)):
        _set(source.weight, to_numpy(source.weight.data) / s)
    else:
        raise TypeError(f"AWQ cannot fold scales into a {type(source).__name__}")
    if getattr(source, "bias", None) is not None:
        _set(source.bias, to_numpy(source.bias.data) / s)


# --- clipping: a smaller scale for a group, when its output error is lower --------------------
def clipped_q4_0(weight, xtx):
    """Q4_0 parts of ``weight`` (out, in) whose group scales are llama.cpp's d = max / -8 times
    the ratio in ``CLIP_RATIOS`` that gives the group the least output error ``e^T G e`` on
    the calibration inputs (``G``: the group's block of ``xtx`` = X^T X / n, (in, in)).
    Values past a shrunk range clip to 0 or 15; ratio 1 is round-to-nearest Q4_0, kept on a tie.
    """
    rows, cols = weight.shape
    blocks = np.asarray(weight, np.float32).reshape(rows, -1, formats.BLOCK)  # (rows, ng, 32)
    groups = np.arange(cols).reshape(-1, formats.BLOCK)  # (ng, 32) input channels
    G = xtx[groups[:, :, None], groups[:, None, :]]  # (ng, 32, 32) diagonal blocks
    top = formats.q4_0_scale(blocks)  # (rows, ng, 1)
    best, best_score = top, np.full(blocks.shape[:2], np.inf)
    for ratio in CLIP_RATIOS:
        d = top * np.float32(ratio)
        q = formats.q4_0_round(blocks, d)
        error = (q - 8.0) * d.astype(np.float16) - blocks  # (rows, ng, 32), float64
        score = np.einsum("rgi,gij,rgj->rg", error, G, error)
        better = score < best_score
        best = np.where(better[..., None], d, best)
        best_score = np.where(better, score, best_score)
    q = formats.q4_0_round(blocks, best)
    return {
        "scales": best[..., 0].astype(np.float16),
        "packed": formats.pack_nibbles(q).reshape(rows, -1),
    }


def calibrate(model, ids, paths, *, clip=True):
    """The AWQ scheme's step: fold the scales, then round the layers at ``paths`` to Q4_0,
    with ``clip`` each group's range shrunk where that lowers its output error (all layers
    but q and k, as llm-awq's ``auto_clip``). Returns {path: Q4_0 parts}."""
    scales, stats = _fold_scales(model, ids, paths)
    layers = dict(model.named_modules())
    parts = {}
    for path in paths:
        weight = to_numpy(layers[path].weight.data).T  # (out, in), the scales folded in
        if clip and path in stats and not path.endswith(NO_CLIP):
            s = scales.get(path, np.ones(weight.shape[1]))
            xtx = stats[path].xtx / max(stats[path].count, 1) / np.outer(s, s)  # of x / s
            parts[path] = clipped_q4_0(weight, xtx)
        else:
            parts[path] = formats.quantize(weight, FORMAT)
    return parts


AWQ = register_scheme(Scheme("awq", FORMAT, calibrate=calibrate))
