"""Exercises for lesson 04: pretraining. Replace each ``raise NotImplementedError`` with code.

One training step is: the next-token loss and its gradient (4.1), gradient clipping (4.4),
a learning rate from the schedule (4.3), and an AdamW update (4.2). Everything here is
plain NumPy: a batch is ``B`` windows of ``T`` tokens over a vocabulary of ``V``, and a
parameter is one array of any shape.

Grade with ``tinyllm grade exercises -k ex04`` (lesson: lessons/04-pretraining.md).
"""

import math  # noqa: F401 - you will need it

import numpy as np  # noqa: F401 - you will need it


# --- Exercise 4.1 ---------------------------------------------------------------------------
def cross_entropy_batch(logits, targets, ignore_index=-100):
    """The mean next-token cross-entropy of a batch, as a float.

    logits:  (B, T, V) the model's scores; ``logits[b, t]`` predicts the token after position t.
    targets: (B, T) integer token ids (the inputs shifted one to the left); a target equal to
             ``ignore_index`` (padding, or a prompt token in fine-tuning) is skipped.

        loss[b, t] = -log softmax(logits[b, t])[targets[b, t]]
                   = logsumexp(logits[b, t]) - logits[b, t, targets[b, t]]
        result     = mean of loss[b, t] over the positions whose target is not ignored

    Divide by the number of positions kept, not by B * T. If every target is ignored,
    return 0.0 (there is nothing to average; tinyllm's convention, where PyTorch gives nan).
    Stay finite for huge logits: ``logsumexp(z) = max(z) + log(sum(exp(z - max(z))))``.

    logits [[[2, 0, 0], [0, 0, 0]]], targets [[0, -100]]: only the first position counts,
    loss = log(e^2 + 1 + 1) - 2 = 0.2395. Uniform logits over V tokens give log(V) (a
    perplexity of V): what an untrained model should score at step 0.
    """
    raise NotImplementedError("Exercise 4.1: the mean cross-entropy over the kept targets")


def cross_entropy_grad(logits, targets, ignore_index=-100):
    """d(cross_entropy_batch)/d(logits), shape (B, T, V).

    At a kept position the gradient of ``-log softmax(z)[y]`` is ``softmax(z) - onehot(y)``;
    the mean divides it by the number of kept positions, n. An ignored position, taking no
    part in the loss, gets a row of zeros (and so does everything when n == 0).

    For the example above (n = 1): row 0 is softmax([2, 0, 0]) - [1, 0, 0]
    = [0.7870 - 1, 0.1065, 0.1065] = [-0.2130, 0.1065, 0.1065]; row 1 is [0, 0, 0].
    """
    raise NotImplementedError("Exercise 4.1: the gradient of the loss with respect to logits")


# --- Exercise 4.2 ---------------------------------------------------------------------------
def adamw_update(
    param, grad, exp_avg, exp_avg_sq, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01
):
    """One AdamW step for one parameter array; return ``(param, exp_avg, exp_avg_sq)``, new.

    param, grad, exp_avg (m), exp_avg_sq (v): arrays of one shape; m and v start at zeros.
    step: this update's number t, 1 for the first update (PyTorch's ``state["step"]``).
    Return new arrays and leave the inputs as they are.

        p ← p · (1 - lr·weight_decay)             decoupled weight decay, on p itself
        m ← β1·m + (1 - β1)·g                     running mean of the gradient
        v ← β2·v + (1 - β2)·g²                    running mean of its square
        m̂ = m / (1 - β1^t),  v̂ = v / (1 - β2^t)   bias correction (m and v start at 0)
        p ← p - lr · m̂ / (√v̂ + ε)                 ε outside the square root

    The decay is *not* added to the gradient (that is L2 regularization, Adam's
    ``weight_decay``, which the division by √v̂ would then rescale entry by entry).

    First step, t = 1, p = [1.0, -2.0], g = [0.5, -3.0], lr = 0.1, no decay:
    m = [0.05, -0.3], v = [0.00025, 0.009], m̂ = g, v̂ = g², so p moves by lr against
    the sign of g: p ≈ [0.9, -1.9]. With weight_decay = 0.5 it is first scaled by 0.95:
    p ≈ [0.85, -1.8].
    """
    raise NotImplementedError("Exercise 4.2: one AdamW update with bias correction")


# --- Exercise 4.3 ---------------------------------------------------------------------------
def cosine_lr(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
    """The learning rate at ``step`` (0, 1, 2, ...): linear warmup, then half a cosine.

        step < warmup_steps:   max_lr · (step + 1) / (warmup_steps + 1)
        otherwise, while step < total_steps, with progress = (step - warmup_steps)
                               / (total_steps - warmup_steps), going 0 -> 1:
                               min_lr + 0.5 · (1 + cos(π · progress)) · (max_lr - min_lr)
        step >= total_steps:   min_lr  (but max_lr when step == warmup_steps == total_steps)

    The warmup never gives 0 (step 0 still learns) and reaches ``max_lr`` exactly at
    ``step == warmup_steps``, where the cosine starts. Return a float.

    max_lr = 1, warmup_steps = 2, total_steps = 6, steps 0..7:
    [0.333, 0.667, 1.0, 0.854, 0.5, 0.146, 0.0, 0.0]
    """
    raise NotImplementedError("Exercise 4.3: linear warmup, then cosine decay")


# --- Exercise 4.4 ---------------------------------------------------------------------------
def clip_by_global_norm(grads, max_norm):
    """Scale every gradient by one factor so that their global norm is at most ``max_norm``.

    grads: a list of arrays of any shapes. Return ``(clipped, norm)``: a list of new arrays
    in the same order, and ``norm``, the global norm *before* clipping, as a float.

        norm  = √(Σ over every array, every entry, of g²)    one norm for all, not one each
        scale = max_norm / (norm + 1e-6)
        g ← g · scale   only where scale < 1; otherwise the gradients are left unchanged

    (``torch.nn.utils.clip_grad_norm_``'s formula; the 1e-6 keeps it finite for norm 0.)
    One scale for every array keeps the direction of the step; only its length is bounded.

    grads [[3, 0], [4]], max_norm = 1: norm = 5, scale ≈ 0.2, clipped ≈ [[0.6, 0], [0.8]].
    With max_norm = 10 the gradients come back unchanged, and the norm is still 5.
    """
    raise NotImplementedError("Exercise 4.4: clip the gradients by their global norm")
