"""Exercises for lesson 10: LoRA. Replace each ``raise NotImplementedError`` with code.

LoRA keeps a layer's weight ``W`` frozen and learns a change to it of rank ``r``, the
product of two thin matrices ``B A``, scaled by ``alpha / r``. The layer's output is the
base layer's plus the update's, computed through the narrow middle (10.1). After training
the update can be folded into ``W`` - one matrix again, nothing extra at inference (10.2) -
and taken back out, to switch adapters or to train on (10.3). What it saves is counted in
parameters: ``r * (in + out)`` per layer instead of ``in * out`` (10.4).

Everything here is plain NumPy, in PyTorch's and PEFT's layout: a weight is (out, in), as
``nn.Linear.weight`` is, ``A`` is ``lora_A.weight`` (r, in) and ``B`` is ``lora_B.weight``
(out, r). (tinyllm's ``Linear`` keeps the transpose, (in, out), and computes ``x @ W``.)

Grade with ``tinyllm grade exercises -k ex10`` (lesson: lessons/10-lora.md).
"""

import numpy as np  # noqa: F401 - you will need it


# --- Exercise 10.1 --------------------------------------------------------------------------
def lora_forward(x, weight, bias, A, B, alpha):
    """The output of a linear layer with a LoRA adapter, dropout off: an array (..., out).

    x:      (..., in) the input; any number of leading dimensions.
    weight: (out, in) the frozen base weight.
    bias:   (out,) the base layer's bias, or None for a layer without one.
    A:      (r, in) the adapter's first matrix, ``lora_A.weight``.
    B:      (out, r) its second, ``lora_B.weight``.
    alpha:  a number > 0: the update is scaled by ``alpha / r``, with r = A.shape[0].

        y = x @ weight.T + bias  +  (x @ A.T) @ B.T * (alpha / r)

    Go through the narrow middle: ``x @ A.T`` is (..., r), and the (out, in) product
    ``B @ A`` never needs to exist. With ``B = 0``, as LoRA starts, ``y`` is the base layer's
    output exactly.

    x [[1, 2]], weight the 2 x 2 identity, no bias, A [[1, 1]], B [[1], [0]], alpha 2:
    base [1, 2]; x @ A.T = [3], @ B.T = [3, 0], times alpha / r = 2: [6, 0]; y = [[7, 2]].
    """
    raise NotImplementedError("Exercise 10.1: the forward of a layer with a LoRA adapter")


# --- Exercise 10.2 --------------------------------------------------------------------------
def lora_merge(weight, A, B, alpha):
    """The base weight with the adapter folded in: a new (out, in) array of weight's dtype.

        merged = weight + (alpha / r) * B @ A

    so that ``x @ merged.T + bias`` is ``lora_forward(x, weight, bias, A, B, alpha)``: one
    matrix product per layer again, as fast as the base model. Leave ``weight`` as it was
    (return a new array), and keep its dtype: a float32 model stays float32.

    weight the 2 x 2 identity, A [[1, 1]], B [[1], [0]], alpha 2: B @ A = [[1, 1], [0, 0]],
    times 2, plus the identity: [[3, 2], [0, 1]]. (And [[1, 2]] @ that.T = [[7, 2]], as in
    10.1.)
    """
    raise NotImplementedError("Exercise 10.2: fold the adapter into the base weight")


# --- Exercise 10.3 --------------------------------------------------------------------------
def lora_unmerge(merged, A, B, alpha):
    """The base weight back from a merged one: a new (out, in) array of merged's dtype.

        weight = merged - (alpha / r) * B @ A

    Unmerging lets one base serve several adapters in turn (unmerge one, merge the next)
    or go on training the adapter. In floating point the round trip is exact only up to
    rounding: ``(W + D) - D`` need not be ``W`` bit for bit, and the error grows with the
    size of ``D``. Leave ``merged`` as it was.

    merged [[3, 2], [0, 1]], A [[1, 1]], B [[1], [0]], alpha 2: the identity again.
    """
    raise NotImplementedError("Exercise 10.3: take the adapter back out of the weight")


# --- Exercise 10.4 --------------------------------------------------------------------------
def lora_parameter_count(shapes, r):
    """How many parameters rank-``r`` adapters add to layers of the given shapes: an int.

    shapes: the (out, in) shapes of the adapted layers' weights, one per layer.
    r:      the adapters' rank (the same for every layer).

    A layer's adapter holds A (r, in) and B (out, r): ``r * (in + out)`` numbers, where the
    weight it adapts holds ``in * out``.

    shapes [(128, 128), (64, 128)], r 4: 4 * 256 + 4 * 192 = 1792.
    """
    raise NotImplementedError("Exercise 10.4: the parameters the adapters add")


def trainable_fraction(base_parameters, shapes, r):
    """The share of a LoRA model's parameters that train: a float in (0, 1).

    base_parameters: how many parameters the model has without adapters (all frozen).
    shapes, r:       the adapted layers' weight shapes and the rank, as above.

    The adapters are the only parameters that train, and they are part of the model: the
    share is ``adapters / (base_parameters + adapters)``, as PEFT's
    ``print_trainable_parameters`` counts it.

    A model of 10,000 parameters with the adapters above: 1792 / 11,792 = 0.151967.
    """
    raise NotImplementedError("Exercise 10.4: the share of the parameters that train")
