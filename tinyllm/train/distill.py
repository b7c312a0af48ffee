"""Knowledge distillation's loss: a small student learns from a bigger teacher's whole
next-token distribution, not only from the one token the data holds.

Where the data's next token is "7", a teacher may give "7" probability 0.9 and "1" 0.05:
those small probabilities say which mistakes are near ones, and a one-hot label says
nothing of them. Hinton et al. (2015) soften both distributions with a temperature T and
mix their KL divergence with the ordinary cross-entropy on the hard labels:

    p = softmax(teacher / T)      q = softmax(student / T)
    loss = alpha * T^2 * KL(p || q) + (1 - alpha) * cross_entropy(student, targets)
    KL(p || q) = sum_i p_i (log p_i - log q_i)

Both terms are means over the scored positions (``targets != -100``: in packed SFT rows,
the assistant's tokens). The KL term's gradient w.r.t. a student logit is (q - p) / T,
which at high T shrinks like 1 / T^2; the T^2 restores its scale, so that ``alpha`` weighs
the two terms alike at every temperature. ``alpha=0`` is plain fine-tuning on the labels.

**Top-k teacher.** With ``top_k=k`` the teacher keeps its k largest logits at each
position and its distribution is the softmax of those k alone, at temperature T: the
other tokens get probability 0, and the kept ones share all of it. The student keeps its
full softmax over the vocabulary, so the KL is a sum over the k kept tokens, ``sum_{i in
top-k} p_i (log p_i - log q_i)``: a true KL divergence, with p zero elsewhere. That is
what a cache of the teacher holds: k logits and their token ids per position
(``teacher_topk``), computed once for a fixed dataset and carried with the batches, as
DPO carries its reference's log-probabilities.

The teacher never gets gradients: its logits are arrays, computed under ``inference``.

>>> import numpy as np, tinyllm
>>> logits = tinyllm.Tensor([[2.0, 0.0, -1.0]])
>>> kl = kl_loss(logits, np.array([[2.0, 0.0, -1.0]]), np.array([0]), temperature=2.0)
>>> round(kl.item(), 6)   # the same distribution: nothing to learn
0.0
>>> top_k_logits(np.array([[0.5, 3.0, -1.0, 2.0]]), 2)
TopK(values=array([[3., 2.]]), indices=array([[1, 3]]))
"""

from typing import NamedTuple

import numpy as np

from .. import functional as F
from ..autograd import Tensor, no_grad, to_numpy
from ..backend import backend_of
from ..data.sft import IGNORE, document_mask
from ..nn.module import measuring


class TopK(NamedTuple):
    """The teacher's ``k`` largest logits at each position, ``values`` (..., k) in falling
    order, and their token ids ``indices`` (..., k)."""

    values: object
    indices: object


def top_k_logits(logits, k):
    """The ``k`` largest entries of ``logits`` (an array (..., V)) along the last axis, as a
    ``TopK``."""
    vocab = logits.shape[-1]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= vocab:
        raise ValueError(f"top_k={k!r}: expected an integer from 1 to the vocabulary, {vocab}")
    return TopK(*backend_of(logits).top_k(logits, k))  # (..., k) each, largest first


def check_settings(temperature, alpha, top_k=None):
    """Refuse a temperature that is not > 0, an alpha outside [0, 1], a top_k below 1."""
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r}: expected a number > 0 (1 to 4 is usual)")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha!r}: expected a weight from 0 (labels only) to 1")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k={top_k!r}: expected an integer >= 1, or None for all")


def kl_loss(student_logits, teacher_logits, targets, temperature=1.0, top_k=None):
    """KL(softmax(teacher / T) || softmax(student / T)), the mean over the positions whose
    target is not -100: a scalar Tensor, differentiable w.r.t. ``student_logits`` (a Tensor
    (..., V)). ``teacher_logits`` is an array (..., V), cut to its ``top_k`` largest when
    that is given, or a ``TopK`` of arrays (..., k) already cut."""
    vocab = student_logits.shape[-1]
    teacher = _teacher_top(teacher_logits, top_k, vocab)
    backend = student_logits.backend
    xp = backend.xp
    valid = backend.asarray(targets) != IGNORE  # (...)
    if tuple(valid.shape) != student_logits.shape[:-1]:
        raise ValueError(
            f"targets of shape {tuple(valid.shape)} do not match student logits of shape "
            f"{student_logits.shape}"
        )
    student = student_logits.reshape(-1, vocab)  # (N, V)
    log_q = F.log_softmax(student / temperature)  # (N, V)
    if isinstance(teacher, TopK):
        k = teacher.indices.shape[-1]
        rows = xp.arange(student.shape[0])[:, None]  # (N, 1)
        flat = rows * vocab + backend.asarray(teacher.indices).reshape(-1, k)  # (N, k)
        log_q = log_q.reshape(-1)[flat]  # (N, k): the student at the teacher's top k
        teacher = teacher.values
    with no_grad():
        kept = Tensor(backend.asarray(teacher), dtype=student.dtype)
        log_p = F.log_softmax(kept.reshape(log_q.shape) / temperature).data  # (N, V) or (N, k)
    p = xp.exp(log_p)
    entropy = -(p * log_p).sum(axis=-1)  # (N,): the teacher's, a constant
    cross_entropy = -(log_q * p).sum(axis=-1)  # (N,)
    kl_rows = cross_entropy - entropy  # (N,): KL(p || q) = H(p, q) - H(p)
    valid = valid.reshape(-1).astype(student.dtype)  # (N,)
    return (kl_rows * valid).sum() / xp.maximum(valid.sum(), 1)


def distillation_loss(student_logits, teacher_logits, targets, temperature=1.0, alpha=0.5,
                      top_k=None):  # fmt: skip
    """``alpha * T^2 * kl_loss + (1 - alpha) * cross_entropy`` over the scored positions of
    ``targets`` (-100: not scored); see the module docstring."""
    check_settings(temperature, alpha, top_k)
    kl = kl_loss(student_logits, teacher_logits, targets, temperature, top_k)
    vocab = student_logits.shape[-1]
    targets = student_logits.backend.asarray(targets).reshape(-1)  # (N,)
    hard = F.cross_entropy(student_logits.reshape(-1, vocab), targets)
    return mix(kl, hard, temperature, alpha)


def mix(kl, hard, temperature, alpha):
    """The distillation loss from its two terms."""
    return kl * (alpha * temperature**2) + hard * (1 - alpha)


def _teacher_top(teacher_logits, top_k, vocab):
    """The teacher's logits as given, cut to ``top_k``, or its ``TopK``, checked against
    the student's vocabulary size."""
    if isinstance(teacher_logits, TopK):
        indices = teacher_logits.indices
        if not backend_of(indices).is_traced(indices) and int(indices.max()) >= vocab:
            raise ValueError(
                f"the teacher's top-k holds token id {int(indices.max())}, outside the "
                f"student's vocabulary of {vocab}: teacher and student must share one vocabulary"
            )
        return teacher_logits
    if teacher_logits.shape[-1] != vocab:
        raise ValueError(
            f"the teacher's logits have {teacher_logits.shape[-1]} entries per position and "
            f"the student's {vocab}: teacher and student must share one vocabulary"
        )
    return teacher_logits if top_k is None else top_k_logits(teacher_logits, top_k)


def check_same_vocabulary(teacher, student, teacher_tokenizer=None, student_tokenizer=None):
    """Refuse a teacher and student (``Transformer``s) whose vocabularies differ in size, or
    whose tokenizers differ: distillation compares their probabilities of the same ids."""
    ours, theirs = student.config.vocab_size, teacher.config.vocab_size
    if ours != theirs:
        raise ValueError(
            f"the teacher's vocabulary has {theirs} tokens and the student's {ours}: "
            "distillation compares their probabilities of each token, so they must share "
            "one vocabulary and tokenizer"
        )
    if teacher_tokenizer is not None and student_tokenizer is not None:
        if teacher_tokenizer.to_json() != student_tokenizer.to_json():
            raise ValueError(
                "the teacher's and the student's tokenizers differ: the same token ids would "
                "be different text to each"
            )


def packed_logits(model, ids, positions, documents):
    """The logits (B, T, V) of packed rows, each conversation seeing its own keys only."""
    return model(ids, mask=document_mask(documents), positions=positions)[0]


# the teacher's logits, an array (see ``measuring``: no gradients, no dropout, compiled on JAX)
teacher_logits = measuring(packed_logits)


def teacher_topk(teacher, rows, k, batch_size=16):
    """The teacher's ``TopK`` (N, T, k) for packed SFT rows (``PackedRows``), computed once:
    float32 logits and int32 token ids, on the host, to travel with the rows' batches."""
    values, indices = [], []
    for start in range(0, len(rows.ids), batch_size):
        ids, _, positions, documents = (array[start : start + batch_size] for array in rows)
        top = top_k_logits(teacher_logits(teacher, ids, positions, documents), k)
        values.append(to_numpy(top.values).astype(np.float32))
        indices.append(to_numpy(top.indices).astype(np.int32))
    return TopK(np.concatenate(values), np.concatenate(indices))


def distill_loss(teacher, temperature=2.0, alpha=0.5, top_k=None):
    """A ``loss_fn`` for the student on packed SFT batches: the distillation loss, with the
    KL term (``kl``) and the cross-entropy on the labels (``hard_loss``) as metrics.

    ``teacher`` (a ``Transformer``) runs on each batch; or it is None, and each batch
    carries the teacher's cached top-k after the packed rows (``(*rows, values, indices)``,
    from ``teacher_topk``), ``top_k`` then being what the cache holds."""
    check_settings(temperature, alpha, top_k)

    def loss_fn(student, batch):
        ids, targets, positions, documents, *cached = batch
        if teacher is None:
            if len(cached) != 2:
                raise ValueError(
                    "distill_loss(teacher=None): each batch must carry the teacher's top-k "
                    f"values and indices after the packed rows (teacher_topk), got {len(batch)} "
                    "arrays instead of 6"
                )
            given = TopK(*cached)
        else:
            check_same_vocabulary(teacher, student)
            given = teacher_logits(teacher, ids, positions, documents)
        logits, hard = student(ids, targets, mask=document_mask(documents), positions=positions)
        kl = kl_loss(logits, given, targets, temperature, None if teacher is None else top_k)
        metrics = {"kl": kl.data, "hard_loss": hard.data, "tokens": int(np.size(ids))}
        return mix(kl, hard, temperature, alpha), metrics

    return loss_fn
