"""Reference answers for exercises/ex11_distillation.py: tinyllm's distillation loss.

The exercises work on plain NumPy arrays, so each answer is a thin adapter around the
library's code - the fused ``softmax`` and ``log_softmax`` (tinyllm/functional/softmax.py) and
``kl_loss`` and ``distillation_loss`` of tinyllm/train/distill.py, with tinyllm's autograd
for the gradient - never a second copy of their arithmetic.
"""

import numpy as np

from tinyllm import functional as F
from tinyllm.autograd import Tensor
from tinyllm.train import distill

__all__ = ["distillation_grad", "distillation_loss", "log_soften", "soft_target_loss", "soften"]


def _float(x):
    return np.asarray(x, dtype=np.result_type(np.asarray(x).dtype, np.float32))


def soften(logits, temperature):
    return F.softmax(Tensor(_float(logits)) / temperature).numpy()


def log_soften(logits, temperature):
    return F.log_softmax(Tensor(_float(logits)) / temperature).numpy()


def soft_target_loss(student_logits, teacher_logits, targets, temperature, top_k=None):
    student = Tensor(_float(student_logits))
    kl = distill.kl_loss(student, _float(teacher_logits), np.asarray(targets), temperature, top_k)
    return (kl * temperature**2).item()  # the T^2 that distill.mix applies


def _loss(student_logits, teacher_logits, targets, temperature, alpha, top_k):
    student = Tensor(_float(student_logits), requires_grad=True)
    loss = distill.distillation_loss(
        student, _float(teacher_logits), np.asarray(targets), temperature, alpha, top_k
    )
    return student, loss


def distillation_loss(student_logits, teacher_logits, targets, temperature, alpha, top_k=None):
    return _loss(student_logits, teacher_logits, targets, temperature, alpha, top_k)[1].item()


def distillation_grad(student_logits, teacher_logits, targets, temperature, alpha, top_k=None):
    student, loss = _loss(student_logits, teacher_logits, targets, temperature, alpha, top_k)
    loss.backward()
    return student.grad
