"""Activation checkpointing: keep a block's input, not its activations, and recompute them.

Backpropagation needs what the forward pass computed: every op keeps its inputs (or its
output) until its backward runs. For a Transformer block of width C over B x T tokens that is
a dozen (B, T, C)-sized arrays and, in attention, the (B, H, T, T) probabilities - per layer,
all held from the forward pass until the backward pass reaches the layer. Activation
checkpointing (Chen et al., 2016, "Training Deep Nets with Sublinear Memory Cost"; Hugging
Face's ``gradient_checkpointing_enable``, PyTorch's ``torch.utils.checkpoint``) keeps only each
block's input. The block's forward runs without recording the tape; when the backward pass
reaches the block, its forward runs again, recorded this time, and is backpropagated at once.
The activations of one block are alive at a time, for one more forward pass per step: about a
third more compute (a backward costs about two forwards) for memory that no longer grows with
the depth.

``recompute(module, *args, **kwargs)`` is ``module(*args, **kwargs)`` done that way. Its
gradients are the plain call's: the recomputation draws the same dropout masks (each Dropout's
key is kept with the input) and uses the same weights, even when the backward runs after the
Trainer's ``bind`` has put the parameters back. Under JAX the whole step is one compiled
program, and XLA is free to merge the forward computed twice into one, or to run the
recomputation as early as the first pass - keeping its activations after all either way. So
the recomputation's input and its dropout keys are made to depend on the incoming gradient
(``Backend.after``): it can neither be merged nor run before the backward pass reaches the
block.

>>> import numpy as np
>>> from tinyllm import Tensor
>>> from tinyllm.nn import Linear
>>> layer = Linear(4, 3, seed=0)
>>> x = Tensor(np.ones((2, 4), np.float32), requires_grad=True)
>>> recompute(layer, x).sum().backward()
>>> kept = layer.weight.grad.copy(); layer.weight.grad = None
>>> layer(x).sum().backward()
>>> bool((kept == layer.weight.grad).all())
True
"""

import tracemalloc

import numpy as np

from .. import functional as F
from ..autograd import Function, Tensor, enable_grad, no_grad
from .layers import Dropout, _fresh_seed, dropout_keys
from .module import Buffer, Module, _slots_under


def enable_gradient_checkpointing(model):
    """Set ``gradient_checkpointing`` on every module inside ``model`` that has the switch
    (a ``Transformer``, alone or inside a reward model); returns ``model``. An error when
    none has it: the model would train as before, with no memory saved."""
    switches = [m for _, m in model.named_modules() if hasattr(m, "gradient_checkpointing")]
    if not switches:
        raise ValueError(
            f"gradient checkpointing: {type(model).__name__} has no module with the "
            "gradient_checkpointing switch (tinyllm's Transformer has it)"
        )
    for module in switches:
        module.gradient_checkpointing = True
    return model


def peak_training_bytes(model, ids, targets):
    """The most bytes NumPy held during one forward and backward pass of ``model`` (a
    language model on the NumPy backend) on ``ids`` -> ``targets``, as ``tracemalloc``
    counts NumPy's arrays: weights, gradients and the activations kept in between. The
    gradients are cleared after."""
    tracemalloc.start()
    try:
        _, loss = model(ids, targets)
        loss.backward()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        model.zero_grad()


def recompute(module, *args, **kwargs):
    """``module(*args, **kwargs)``, its activations recomputed in the backward pass rather
    than kept (see the module docstring). Tensors among ``args`` get gradients; ``kwargs``
    (masks, positions) are constants. The result has the call's structure: a Tensor, or a
    tuple of Tensors and other values (a block's ``(x, aux_loss)``)."""
    if not isinstance(module, Module):  # its weights must be found, to be swapped and graded
        raise TypeError(f"recompute: expected a Module, got {type(module).__name__}")
    for name, value in kwargs.items():
        if isinstance(value, Tensor) and value.requires_grad:
            raise ValueError(
                f"recompute: keyword {name!r} is a Tensor that requires gradients; pass it "
                "positionally, so that it gets them"
            )
    call = _Call(module, args, kwargs)
    inputs = [a for a in args if isinstance(a, Tensor)]
    flat = _Recompute.apply(*inputs, *call.weights, call=call)
    return call.unflatten(flat)


class _Recompute(Function):
    """The node that stands for the whole call on the tape: its inputs are the call's Tensor
    arguments and the module's weights, its output every Tensor the call returned, raveled
    and joined (one array, so that one backward gets all their gradients at once)."""

    @staticmethod
    def forward(ctx, *arrays, call):
        ctx.call = call
        ctx.save_for_backward(*arrays)
        with no_grad():
            return call.run([Tensor._wrap(a, requires_grad=False) for a in arrays]).data

    @staticmethod
    def backward(ctx, grad):
        after = ctx.backend.after  # the input and the dropout keys wait for the gradient
        arrays = [after(ctx.saved[0], grad), *ctx.saved[1:]]
        keys = {d: (after(key[0], grad), *key[1:]) for d, key in ctx.call.keys.items()}
        leaves = [Tensor._wrap(a, requires_grad=n) for a, n in zip(arrays, ctx.needs_grad)]
        with enable_grad():
            flat = ctx.call.run(leaves, keys)
        if flat.requires_grad:  # else nothing in the call reaches a leaf that wants a gradient
            flat.backward(grad)
        return tuple(leaf.grad if n else None for leaf, n in zip(leaves, ctx.needs_grad))


class _Call:
    """One call of ``module``: its arguments, where its weights sit, the key each Dropout
    draws its masks from, and the structure of what it returned."""

    def __init__(self, module, args, kwargs):
        self.module, self.args, self.kwargs = module, args, kwargs
        self.n_inputs = sum(isinstance(a, Tensor) for a in args)
        slots = list(_weight_slots(module))
        self.weights = list({id(t): t for _, t in slots}.values())  # a tied weight once
        index = {id(t): i for i, t in enumerate(self.weights)}
        self.slot_weight = {path: index[id(t)] for path, t in slots}
        dropouts = [m for _, m in module.named_modules() if isinstance(m, Dropout)]
        self.keys = {d: (_fresh_seed(),) if d.key is None else d.key for d in dropouts}
        self.layout = None  # (a tuple?, [(a Tensor?, its shape or the value)]), set by run

    def run(self, values, keys=None):
        """The call on ``values`` (Tensors: the inputs, then the weights), its Tensor
        results raveled and joined into one; the Dropout layers draw from ``keys`` (by
        default the call's own)."""
        inputs, weights = iter(values[: self.n_inputs]), values[self.n_inputs :]
        args = [next(inputs) if isinstance(a, Tensor) else a for a in self.args]
        by_path = {path: weights[i] for path, i in self.slot_weight.items()}
        with (
            self.module.swapped(lambda path, _: by_path.get(path)),
            dropout_keys(keys or self.keys),
        ):
            out = self.module(*args, **self.kwargs)
        results = out if isinstance(out, tuple) else (out,)
        if self.layout is None:  # shapes, not the first pass's Tensors, which would stay alive
            entries = [(True, r.shape) if isinstance(r, Tensor) else (False, r) for r in results]
            self.layout = (isinstance(out, tuple), entries)
        raveled = [r.reshape(-1) for r in results if isinstance(r, Tensor)]
        return raveled[0] if len(raveled) == 1 else F.concat(raveled)

    def unflatten(self, flat):
        """``flat`` (the node's output) cut back into the call's structure."""
        is_tuple, entries = self.layout
        pieces, start = [], 0
        for is_tensor, entry in entries:  # a Tensor's shape, or a value as the call gave it
            if is_tensor:
                size = int(np.prod(entry))
                pieces.append(flat[start : start + size].reshape(entry))
                start += size
            else:
                pieces.append(entry)
        return tuple(pieces) if is_tuple else pieces[0]


def _weight_slots(module):
    """(path, tensor) of each weight inside ``module``: every Tensor that is not a Buffer (a
    Parameter, or the Tensor ``bind`` put in its place)."""
    for _, _, path, item in _slots_under(module):
        if isinstance(item, Tensor) and not isinstance(item, Buffer):
            yield path, item
