"""Grading tests for exercises/ex11_distillation.py (lesson 11: knowledge distillation).

Answers come from small cases worked out by hand in the comments, from tinyllm's own
``softmax``, ``log_softmax``, ``kl_loss`` and ``distillation_loss`` (their values and, through
tinyllm's autograd, their gradients), from ``distill_loss`` - the loss the ``Trainer`` runs -
on a real teacher's and student's logits, and, where it is installed, from PyTorch:
``softmax``, ``log_softmax``, ``kl_div``, ``cross_entropy`` and autograd.
"""

import importlib.util
import math

import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor
from tinyllm import functional as F
from tinyllm.data.sft import document_mask, pack, sft_tokens
from tinyllm.data.tasks import task_examples
from tinyllm.models import Transformer, get_preset
from tinyllm.tokenizer import Tokenizer
from tinyllm.train.distill import distill_loss, distillation_loss, kl_loss, teacher_topk

EX = "ex11_distillation"

# The PyTorch case joins the oracles only where it can run. (A skipped case would be graded
# as failed, so without PyTorch the tinyllm cases carry all the points.)
ORACLES = ["tinyllm", "torch"] if importlib.util.find_spec("torch") else ["tinyllm"]

VOCAB = 11
# (temperature, alpha, top_k): the settings the library cases run through
SETTINGS = [(1.0, 0.5, None), (2.0, 0.2, None), (4.0, 1.0, None), (0.5, 0.0, None),
            (2.0, 0.5, 3), (1.0, 0.9, 1), (3.0, 0.5, VOCAB)]  # fmt: skip


def logits_case(seed, scale=3.0):
    """Random float64 student and teacher logits (2, 5, VOCAB) and targets with some -100."""
    rng = np.random.default_rng(seed)
    student, teacher = rng.standard_normal((2, 2, 5, VOCAB)) * scale
    targets = rng.integers(0, VOCAB, size=(2, 5))
    targets[0, :2] = targets[1, 4] = -100
    return student, teacher, targets


# --- 11.1 the softmax at a temperature --------------------------------------------------------
@pytest.mark.exercise("11.1", points=1)
def test_soften_by_hand(exercise):
    """soften and log_soften: small cases worked by hand, huge logits, extreme temperatures"""
    ex = exercise(EX)
    logits = np.array([0.0, math.log(2), math.log(4)])  # probabilities 1 : 2 : 4
    np.testing.assert_allclose(ex.soften(logits, 1.0), np.array([1, 2, 4]) / 7, rtol=1e-12)
    # T = 2 takes the square root of every ratio, T = 0.5 squares it.
    root = np.array([1, math.sqrt(2), 2])
    np.testing.assert_allclose(ex.soften(logits, 2.0), root / root.sum(), rtol=1e-12)
    np.testing.assert_allclose(ex.soften(logits, 0.5), np.array([1, 4, 16]) / 21, rtol=1e-12)
    np.testing.assert_allclose(ex.log_soften(logits, 0.5), np.log(np.array([1, 4, 16]) / 21),
                               rtol=1e-12)  # fmt: skip
    # Rows are softened on their own, along the last axis.
    rows = np.stack([logits, np.zeros(3)])  # (2, 3)
    got = np.asarray(ex.soften(rows, 1.0))
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got[1], [1 / 3] * 3, rtol=1e-12)
    # Huge logits neither overflow nor underflow to -inf; a tiny T is one-hot, a huge one flat.
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        np.testing.assert_allclose(ex.log_soften(np.array([0.0, 1000.0]), 1.0), [-1000.0, 0.0])
        np.testing.assert_allclose(ex.soften(logits + 1e4, 2.0), root / root.sum(), rtol=1e-9)
        np.testing.assert_allclose(ex.soften(logits, 1e-3), [0, 0, 1], atol=1e-12)
        np.testing.assert_allclose(ex.soften(logits, 1e6), [1 / 3] * 3, rtol=1e-5)


@pytest.mark.exercise("11.1", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_soften_matches_the_libraries(exercise, oracle):
    """soften and log_soften: a library's softmax of logits / T on random logits"""
    ex = exercise(EX)
    x = np.random.default_rng(0).standard_normal((3, 4, 7)) * 5
    x[0, 0] += 500.0  # a row far from 0
    for temperature in (0.25, 0.5, 1.0, 2.0, 4.0):
        if oracle == "tinyllm":
            probs = F.softmax(Tensor(x / temperature)).numpy()
            logs = F.log_softmax(Tensor(x / temperature)).numpy()
        else:
            import torch

            probs = torch.softmax(torch.tensor(x) / temperature, dim=-1).numpy()
            logs = torch.log_softmax(torch.tensor(x) / temperature, dim=-1).numpy()
        np.testing.assert_allclose(ex.soften(x, temperature), probs, rtol=1e-10, atol=1e-300)
        np.testing.assert_allclose(ex.log_soften(x, temperature), logs, rtol=1e-10, atol=1e-12)


# --- 11.2 the soft-label term: T^2 KL(teacher || student) ---------------------------------------
@pytest.mark.exercise("11.2", points=1)
def test_soft_target_loss_by_hand(exercise):
    """soft_target_loss: small cases worked by hand, masks, T^2 and the teacher's top k"""
    ex = exercise(EX)
    teacher = np.array([[0.0, 0.0]])  # p = [1/2, 1/2]
    # Student [ln 3, 0]: q = [3/4, 1/4], KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3).
    got = ex.soft_target_loss(np.array([[math.log(3), 0.0]]), teacher, np.array([0]), 1.0)
    assert float(got) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    # Student [2 ln 3, 0] at T = 2: the same q and KL, times T^2 = 4.
    got = ex.soft_target_loss(np.array([[2 * math.log(3), 0.0]]), teacher, np.array([0]), 2.0)
    assert float(got) == pytest.approx(2 * math.log(4 / 3), rel=1e-12)
    # The labels are not used, only where they are -100: a mean over the scored positions.
    student = np.array([[math.log(3), 0.0], [5.0, -5.0], [math.log(3), 0.0]])
    teachers = np.zeros((3, 2))
    got = ex.soft_target_loss(student, teachers, np.array([1, -100, 0]), 1.0)
    assert float(got) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    assert float(ex.soft_target_loss(student, teachers, np.full(3, -100), 1.0)) == 0.0
    # The same distribution: nothing to learn.
    assert float(ex.soft_target_loss(student, student, np.zeros(3, int), 3.0)) == pytest.approx(
        0.0, abs=1e-12
    )
    # The teacher's top 2 of [3, 1, 0, -5]: p = softmax([3, 1]) on tokens 0 and 1, 0 elsewhere;
    # against a uniform student, KL = sum p (log p - log 1/4).
    p = np.exp([3.0, 1.0]) / np.exp([3.0, 1.0]).sum()
    got = ex.soft_target_loss(np.zeros((1, 4)), np.array([[3.0, 1.0, 0.0, -5.0]]), np.array([2]),
                              1.0, top_k=2)  # fmt: skip
    assert float(got) == pytest.approx(float(np.sum(p * (np.log(p) - np.log(0.25)))), rel=1e-12)
    # top_k = 1: p is one-hot on the teacher's favourite token, and the KL is the student's
    # cross-entropy on it, at T: here -log softmax([0, 2, 1] / 2)[2].
    got = ex.soft_target_loss(np.array([[0.0, 2.0, 1.0]]), np.array([[0.0, 1.0, 9.0]]),
                              np.array([0]), 2.0, top_k=1)  # fmt: skip
    want = -math.log(math.exp(0.5) / (1 + math.e + math.exp(0.5)))
    assert float(got) == pytest.approx(4 * want, rel=1e-12)


def torch_distillation(student, teacher, targets, temperature, alpha, top_k):
    """(T^2 KL, the mixed loss, its gradient) in PyTorch: ``kl_div`` of the softened
    distributions (the teacher's top k renormalised, zero elsewhere) and ``cross_entropy``."""
    import torch

    s, t = torch.tensor(student, requires_grad=True), torch.tensor(teacher)
    labels = torch.tensor(targets)
    log_q = torch.log_softmax(s / temperature, dim=-1)
    if top_k is None:
        log_p = torch.log_softmax(t / temperature, dim=-1)
        kl = torch.nn.functional.kl_div(log_q, log_p, reduction="none", log_target=True)
    else:
        values, indices = t.topk(top_k, dim=-1)
        p = torch.zeros_like(t).scatter(-1, indices, torch.softmax(values / temperature, dim=-1))
        kl = torch.nn.functional.kl_div(log_q, p, reduction="none")  # 0 where p is 0
    soft = temperature**2 * kl.sum(-1)[labels != -100].mean()
    hard = torch.nn.functional.cross_entropy(s.reshape(-1, s.shape[-1]), labels.reshape(-1))
    loss = alpha * soft + (1 - alpha) * hard
    loss.backward()
    return soft.item(), loss.item(), s.grad.numpy()


def tinyllm_distillation(student, teacher, targets, temperature, alpha, top_k):
    """The same three from tinyllm: ``kl_loss`` times T^2, ``distillation_loss`` and autograd."""
    soft = kl_loss(Tensor(student), teacher, targets, temperature, top_k).item() * temperature**2
    s = Tensor(student, requires_grad=True)
    loss = distillation_loss(s, teacher, targets, temperature, alpha, top_k)
    loss.backward()
    return soft, loss.item(), s.grad


def library_distillation(oracle, *case):
    return (tinyllm_distillation if oracle == "tinyllm" else torch_distillation)(*case)


@pytest.mark.exercise("11.2", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_soft_target_loss_matches_the_libraries(exercise, oracle):
    """soft_target_loss: a library's T^2 KL on random logits, whole and top-k teachers"""
    ex = exercise(EX)
    for seed, (temperature, alpha, top_k) in enumerate(SETTINGS):
        case = logits_case(seed)
        kept = [array.copy() for array in case]
        want = library_distillation(oracle, *case, temperature, alpha, top_k)[0]
        got = ex.soft_target_loss(*case, temperature, top_k=top_k)
        assert float(got) == pytest.approx(want, rel=1e-10)
        for array, before in zip(case, kept):  # the inputs are left as they were
            np.testing.assert_array_equal(array, before)


# --- 11.3 the mixed loss ------------------------------------------------------------------------
@pytest.mark.exercise("11.3", points=1)
def test_distillation_loss_by_hand(exercise):
    """distillation_loss: alpha weighs the soft term, 1 - alpha the labels' cross-entropy"""
    ex = exercise(EX)
    student, teacher, target = np.array([[math.log(3), 0.0]]), np.zeros((1, 2)), np.array([0])
    hard, soft = -math.log(3 / 4), 0.5 * math.log(4 / 3)
    for alpha, want in (
        (0.0, hard),
        (1.0, soft),
        (0.5, (hard + soft) / 2),
        (0.2, 0.2 * soft + 0.8 * hard),
    ):
        got = ex.distillation_loss(student, teacher, target, 1.0, alpha)
        assert float(got) == pytest.approx(want, rel=1e-12), f"alpha {alpha}"
    # At T = 2 the soft term is T^2 KL of the softened pair; the hard one stays at T = 1.
    student2 = np.array([[2 * math.log(3), 0.0]])  # q_T = [3/4, 1/4], q_1 = [9/10, 1/10]
    got = ex.distillation_loss(student2, teacher, target, 2.0, 0.5)
    assert float(got) == pytest.approx(0.5 * 2 * math.log(4 / 3) - 0.5 * math.log(0.9), rel=1e-12)
    # The hard term is a mean over the scored positions: an unscored one changes nothing.
    two = ex.distillation_loss(np.array([[math.log(3), 0.0], [-9.0, 9.0]]), np.zeros((2, 2)),
                               np.array([0, -100]), 1.0, 0.5)  # fmt: skip
    assert float(two) == pytest.approx((hard + soft) / 2, rel=1e-12)


@pytest.mark.exercise("11.3", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_distillation_loss_matches_the_libraries(exercise, oracle):
    """distillation_loss: a library's loss on random logits at several T, alpha and top k"""
    ex = exercise(EX)
    for seed, (temperature, alpha, top_k) in enumerate(SETTINGS):
        case = logits_case(seed + 10)
        want = library_distillation(oracle, *case, temperature, alpha, top_k)[1]
        got = ex.distillation_loss(*case, temperature, alpha, top_k=top_k)
        assert float(got) == pytest.approx(want, rel=1e-10)


@pytest.fixture(scope="module")
def teacher_and_student():
    """Packed task conversations, a teacher and a smaller student sharing one vocabulary."""
    examples = task_examples(["sort", "add"], 40, seed=0)
    tokenizer = Tokenizer.train("\n".join(f"{e.prompt} {e.answer}" for e in examples), 280)
    rows = pack([sft_tokens(tokenizer, e.messages) for e in examples], 32)
    batch = type(rows)(*(array[:4] for array in rows))  # 4 rows, still PackedRows

    def model(n_layer, d_model, seed):
        config = get_preset("tiny-llama", vocab_size=tokenizer.vocab_size, n_layer=n_layer,
                            d_model=d_model, n_head=2, n_kv_head=1, context_length=32)  # fmt: skip
        return Transformer(config, seed=seed)

    return batch, model(2, 32, seed=1), model(1, 16, seed=2)


@pytest.mark.exercise("11.3", points=1)
def test_distillation_loss_is_what_the_trainer_optimises(exercise, teacher_and_student):
    """distillation_loss: distill_loss's loss on a real teacher's and student's logits, whole
    and through the cached top-k teacher"""
    ex = exercise(EX)
    batch, teacher, student = teacher_and_student
    ids, targets, positions, documents = batch
    with tinyllm.no_grad():
        mask = document_mask(documents)
        student_logits = student(ids, mask=mask, positions=positions)[0].numpy()  # (4, 32, V)
        teacher_logits = teacher(ids, mask=mask, positions=positions)[0].numpy()
        for temperature, alpha, top_k in ((2.0, 0.5, None), (1.0, 0.2, 5), (4.0, 0.8, 20)):
            want = distill_loss(teacher, temperature, alpha, top_k)(student, batch)[0].item()
            got = ex.distillation_loss(student_logits, teacher_logits, targets, temperature,
                                       alpha, top_k=top_k)  # fmt: skip
            assert float(got) == pytest.approx(want, rel=1e-4), (temperature, alpha, top_k)
        # The cache holds the teacher's top 5 logits per position, computed once.
        cached = (*batch, *teacher_topk(teacher, batch, 5))
        want = distill_loss(None, 2.0, 0.5)(student, cached)[0].item()
    got = ex.distillation_loss(student_logits, teacher_logits, targets, 2.0, 0.5, top_k=5)
    assert float(got) == pytest.approx(want, rel=1e-4)


# --- 11.4 the gradient ------------------------------------------------------------------------
@pytest.mark.exercise("11.4", points=1)
def test_distillation_grad_by_hand(exercise):
    """distillation_grad: small cases worked by hand, unscored rows, the high-T limit"""
    ex = exercise(EX)
    # q_T = [3/4, 1/4], p = [1/2, 1/2], q_1 = [9/10, 1/10]:
    # 0.5 * 2 * (q_T - p) + 0.5 * (q_1 - [1, 0]) = [0.25, -0.25] + [-0.05, 0.05].
    student, teacher = np.array([[2 * math.log(3), 0.0]]), np.zeros((1, 2))
    got = np.asarray(ex.distillation_grad(student, teacher, np.array([0]), 2.0, 0.5))
    assert got.shape == (1, 2)
    np.testing.assert_allclose(got, [[0.2, -0.2]], rtol=1e-12)
    # Two scored positions: each gets half; an unscored one gets nothing.
    pair = np.array([student[0], student[0], [7.0, -3.0]])  # (3, 2)
    got = ex.distillation_grad(pair, np.zeros((3, 2)), np.array([0, 0, -100]), 2.0, 0.5)
    np.testing.assert_allclose(got, [[0.1, -0.1], [0.1, -0.1], [0.0, 0.0]], rtol=1e-12, atol=1e-15)
    # alpha 0: the labels' gradient q_1 - y alone, whatever the teacher says.
    got = ex.distillation_grad(student, np.array([[-50.0, 50.0]]), np.array([1]), 2.0, 0.0)
    np.testing.assert_allclose(got, [[0.9, -0.9]], rtol=1e-12)
    # alpha 1 at a high T, logits of mean 0: the gradient nears (student - teacher) / V.
    rng = np.random.default_rng(0)
    s, t = rng.standard_normal((2, 1, 8))
    s, t = s - s.mean(), t - t.mean()
    got = ex.distillation_grad(s, t, np.array([3]), 1000.0, 1.0)
    np.testing.assert_allclose(got, (s - t) / 8, rtol=1e-2, atol=1e-5)


@pytest.mark.exercise("11.4", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_distillation_grad_matches_the_libraries(exercise, oracle):
    """distillation_grad: a library's autograd through the loss, at several T, alpha, top k"""
    ex = exercise(EX)
    for seed, (temperature, alpha, top_k) in enumerate(SETTINGS):
        case = logits_case(seed + 20)
        want = library_distillation(oracle, *case, temperature, alpha, top_k)[2]
        got = np.asarray(ex.distillation_grad(*case, temperature, alpha, top_k=top_k))
        assert got.shape == case[0].shape
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-14)
        assert not got[0, :2].any() and not got[1, 4].any()  # unscored: no gradient
