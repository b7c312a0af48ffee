"""Gradient accumulation: the gradient of a big batch from several small ones.

A batch too large for memory can be split into ``n`` micro-batches. ``backward`` *adds*
into ``.grad`` (it never overwrites it), so running forward and backward on each
micro-batch sums their gradients; scaling each micro-batch's loss by ``1/n`` turns the sum
into the mean. When the loss is a mean over equally sized micro-batches, that is exactly
the gradient of one batch ``n`` times as large:

    ∇ mean(L_1..L_nb) = (1/n) Σ_k ∇ mean(L over micro-batch k)

>>> import numpy as np, tinyllm
>>> from tinyllm.nn import Parameter
>>> w = Parameter(np.array([1.0], np.float32))
>>> xs = np.array([[1.0], [2.0], [3.0], [4.0]], np.float32)
>>> loss_fn = lambda x: ((tinyllm.Tensor(x) * w) ** 2).mean()
>>> accumulate_gradients(loss_fn, [xs[:2], xs[2:]])      # the mean loss, as a float
7.5
>>> w.grad                                               # d/dw mean(x² w²) = 2 w mean(x²)
array([15.], dtype=float32)

Call ``opt.zero_grad()`` before it and ``opt.step()`` after. With unequal micro-batches,
or a loss averaged over a varying number of tokens (masked padding), weight each
micro-batch by its share of the examples instead of ``1/n``.
"""


def accumulate_gradients(loss_fn, micro_batches):
    """Forward and backward on each micro-batch with its loss scaled by ``1/n``.

    ``loss_fn(batch)`` returns a scalar loss Tensor; a batch that is a tuple is unpacked
    into ``loss_fn(*batch)``. Gradients add into the parameters' ``.grad``. Returns the
    mean of the micro-batch losses as a float.
    """
    micro_batches = list(micro_batches)
    if not micro_batches:
        raise ValueError("accumulate_gradients: got no micro-batches")
    n = len(micro_batches)
    total = 0.0
    for batch in micro_batches:
        loss = loss_fn(*batch) if isinstance(batch, tuple) else loss_fn(batch)
        (loss * (1.0 / n)).backward()
        total += loss.item()
    return total / n
