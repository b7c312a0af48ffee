"""Knowledge distillation's loss: the formula and its gradient against PyTorch at several
temperatures, weights and top-k cuts, its limits (plain cross-entropy, zero KL), the cached
top-k teacher, the loss_fn in the Trainer (eager and compiled), and named refusals."""

import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor
from tinyllm import functional as F
from tinyllm.data import RowBatches
from tinyllm.data.sft import document_mask, pack, sft_tokens
from tinyllm.models import Transformer, get_preset
from tinyllm.tokenizer import Tokenizer
from tinyllm.train import TrainConfig, Trainer
from tinyllm.train.distill import (
    TopK,
    check_same_vocabulary,
    distill_loss,
    distillation_loss,
    kl_loss,
    teacher_logits,
    teacher_topk,
    top_k_logits,
)
from tinyllm.train.sft import sft_loss

torch = pytest.importorskip("torch")

VOCAB = 12


def logits_case(seed=0):
    """Student and teacher logits (2, 5, VOCAB) in float64 and targets with unscored -100s."""
    rng = np.random.default_rng(seed)
    student, teacher = rng.normal(size=(2, 2, 5, VOCAB)) * 2
    targets = rng.integers(0, VOCAB, size=(2, 5))
    targets[0, :2] = targets[1, 4] = -100
    return student, teacher, targets


def ours(student, teacher, targets, temperature, alpha, top_k):
    logits = Tensor(student, requires_grad=True)
    loss = distillation_loss(logits, teacher, targets, temperature, alpha, top_k)
    loss.backward()
    return loss.item(), logits.grad


def torch_distillation(student, teacher, targets, temperature, alpha, top_k):
    """The same formula in PyTorch: kl_div of the softened distributions (the teacher's top-k
    renormalised, zero elsewhere), times T^2, mixed with cross_entropy on the labels."""
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
    kl = kl.sum(-1)[labels != -100].mean()
    hard = torch.nn.functional.cross_entropy(s.reshape(-1, VOCAB), labels.reshape(-1))
    loss = alpha * temperature**2 * kl + (1 - alpha) * hard
    loss.backward()
    return loss.item(), s.grad.numpy()


@pytest.mark.parametrize(
    "temperature, alpha, top_k",
    [(1.0, 0.5, None), (2.0, 0.9, None), (4.0, 1.0, None), (0.5, 0.3, 3), (2.0, 0.5, 1),
     (3.0, 1.0, VOCAB)],
)  # fmt: skip
def test_the_loss_and_its_gradient_equal_torch(temperature, alpha, top_k):
    case = logits_case()
    loss, grad = ours(*case, temperature, alpha, top_k)
    expected_loss, expected_grad = torch_distillation(*case, temperature, alpha, top_k)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-10)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-8, atol=1e-12)
    assert not grad[0, :2].any()  # unscored positions get no gradient


def test_a_cached_top_k_gives_what_cutting_the_logits_gives():
    student, teacher, targets = logits_case(seed=1)
    top = top_k_logits(teacher, 4)
    assert top.values.shape == top.indices.shape == (2, 5, 4)
    np.testing.assert_array_equal(top.values, -np.sort(-teacher, axis=-1)[..., :4])
    cut, cut_grad = ours(student, teacher, targets, 2.0, 0.7, 4)
    cached, cached_grad = ours(student, top, targets, 2.0, 0.7, None)
    np.testing.assert_allclose(cached, cut, rtol=1e-12)
    np.testing.assert_allclose(cached_grad, cut_grad, rtol=1e-12)


def test_temperature_one_and_alpha_zero_is_plain_cross_entropy():
    student, teacher, targets = logits_case(seed=2)
    loss, grad = ours(student, teacher, targets, 1.0, 0.0, None)
    logits = Tensor(student, requires_grad=True)
    plain = F.cross_entropy(logits, targets)
    plain.backward()
    np.testing.assert_allclose(loss, plain.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, logits.grad, rtol=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_a_student_equal_to_its_teacher_has_nothing_to_learn(temperature):
    student, _, targets = logits_case(seed=3)
    logits = Tensor(student, requires_grad=True)
    kl = kl_loss(logits, student.copy(), targets, temperature)
    kl.backward()
    assert abs(kl.item()) < 1e-12 and np.abs(logits.grad).max() < 1e-12
    assert kl_loss(Tensor(student), student + 1.0, targets).item() < 1e-12  # shifts cancel
    assert kl_loss(Tensor(student), student * 2, targets).item() > 0.01


def test_bad_settings_and_vocabularies_are_named():
    student, teacher, targets = logits_case()
    with pytest.raises(ValueError, match="teacher's logits have 10 entries per position and "
                                         "the student's 12: teacher and student must share"):  # fmt: skip
        distillation_loss(Tensor(student), teacher[..., :10], targets)
    far = TopK(teacher[..., :2], np.full((2, 5, 2), VOCAB))
    with pytest.raises(ValueError, match="token id 12, outside the student's vocabulary of 12"):
        kl_loss(Tensor(student), far, targets)
    with pytest.raises(ValueError, match=r"targets of shape \(5,\) do not match"):
        kl_loss(Tensor(student), teacher, targets[0])
    for settings, message in [
        ((0.0, 0.5, None), "temperature=0.0: expected a number > 0"),
        ((1.0, 1.5, None), "alpha=1.5: expected a weight from 0"),
        ((1.0, 0.5, 0), "top_k=0: expected an integer >= 1"),
    ]:
        with pytest.raises(ValueError, match=message):
            distillation_loss(Tensor(student), teacher, targets, *settings)
    with pytest.raises(
        ValueError, match="top_k=13: expected an integer from 1 to the vocabulary, 12"
    ):
        top_k_logits(teacher, 13)


# --- on models and packed rows ----------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(
        "add: 12 + 34 = 46 sort: 3 1 2 the quick brown fox " * 20, vocab_size=300
    )


CHATS = [
    [{"role": "user", "content": "add: 1 + 2"}, {"role": "assistant", "content": "3"}],
    [{"role": "user", "content": "sort: 3 1 2"}, {"role": "assistant", "content": "1 2 3"}],
    [{"role": "user", "content": "fox?"}, {"role": "assistant", "content": "the quick fox"}],
    [{"role": "user", "content": "add: 12 + 34"}, {"role": "assistant", "content": "46"}],
]  # fmt: skip


def lm(tokenizer, width, seed, vocab_size=None):
    config = get_preset("tiny-llama", vocab_size=vocab_size or tokenizer.vocab_size, n_layer=1,
                        d_model=width, n_head=2, context_length=32)  # fmt: skip
    return Transformer(config, seed=seed)


@pytest.fixture(scope="module")
def rows(tokenizer):
    return pack([sft_tokens(tokenizer, chat, context_length=32) for chat in CHATS], 32)


def test_the_loss_fn_mixes_the_kl_with_the_sft_loss(tokenizer, rows):
    teacher, student = lm(tokenizer, 32, seed=1), lm(tokenizer, 16, seed=2)
    batch = tuple(rows)
    loss, metrics = distill_loss(teacher, temperature=2.0, alpha=0.25)(student, batch)
    hard, _ = sft_loss(student, batch)
    np.testing.assert_allclose(metrics["hard_loss"], hard.item(), rtol=1e-6)
    with tinyllm.no_grad():
        logits, _ = student(rows.ids, mask=document_mask(rows.documents), positions=rows.positions)
    expected = kl_loss(logits, teacher_logits(teacher, rows.ids, rows.positions, rows.documents),
                       rows.targets, 2.0).item()  # fmt: skip
    np.testing.assert_allclose(metrics["kl"], expected, rtol=1e-5)
    np.testing.assert_allclose(loss.item(), 0.25 * 4 * expected + 0.75 * hard.item(), rtol=1e-5)
    assert metrics["tokens"] == rows.ids.size
    alone, _ = distill_loss(teacher, alpha=0.0)(student, batch)
    np.testing.assert_allclose(alone.item(), hard.item(), rtol=1e-6)


def test_the_cached_teacher_top_k_travels_with_the_batches(tokenizer, rows):
    teacher, student = lm(tokenizer, 32, seed=1), lm(tokenizer, 16, seed=2)
    cache = teacher_topk(teacher, rows, 8, batch_size=1)
    assert cache.values.dtype == np.float32 and cache.indices.dtype == np.int32
    assert cache.values.shape == (*rows.ids.shape, 8)
    full = teacher_logits(teacher, rows.ids, rows.positions, rows.documents)
    np.testing.assert_allclose(cache.values, top_k_logits(full, 8).values, rtol=1e-5)
    online, _ = distill_loss(teacher, temperature=2.0, top_k=8)(student, tuple(rows))
    cached, _ = distill_loss(None, temperature=2.0)(student, (*rows, *cache))
    np.testing.assert_allclose(cached.item(), online.item(), rtol=1e-5)
    with pytest.raises(ValueError, match="must carry the teacher's top-k values and indices"):
        distill_loss(None)(student, tuple(rows))


def test_a_student_trained_on_the_teacher_comes_closer_to_it(tokenizer, rows):
    teacher, student = lm(tokenizer, 32, seed=1), lm(tokenizer, 16, seed=2)
    batches = (*rows, *teacher_topk(teacher, rows, 16))
    loss_fn = distill_loss(None, temperature=1.0, alpha=1.0)
    _, before = loss_fn(student, batches)
    config = TrainConfig(steps=30, batch_size=1, lr=1e-2, warmup_steps=0, eval_interval=0,
                         log_interval=30, progress=False)  # fmt: skip
    result = Trainer(student, config, RowBatches(batches, 1, seed=0), loss_fn=loss_fn).fit()
    _, after = loss_fn(student, batches)
    assert after["kl"] < 0.5 * before["kl"], (before["kl"], after["kl"])
    assert result.metrics.keys() == {"kl", "hard_loss"}


def test_the_compiled_jax_step_computes_the_eager_loss(tokenizer, rows):
    pytest.importorskip("jax")
    losses = {}
    for name in ("numpy", "jax"):
        with tinyllm.use_backend(name):
            teacher, student = lm(tokenizer, 32, seed=1), lm(tokenizer, 16, seed=2)
            config = TrainConfig(steps=3, batch_size=2, lr=1e-2, warmup_steps=0, eval_interval=0,
                                 log_interval=1, progress=False)  # fmt: skip
            trainer = Trainer(student, config, RowBatches(tuple(rows), 2, seed=0),
                              loss_fn=distill_loss(teacher, temperature=2.0, top_k=5))  # fmt: skip
            assert trainer.compiled == (name == "jax")
            result = trainer.fit()
            losses[name] = (result.train_loss, result.metrics["kl"])
    np.testing.assert_allclose(losses["jax"], losses["numpy"], rtol=2e-4)


def test_teacher_and_student_must_share_vocabulary_and_tokenizer(tokenizer):
    teacher, student = lm(tokenizer, 32, seed=1), lm(tokenizer, 16, seed=2, vocab_size=280)
    size = tokenizer.vocab_size
    with pytest.raises(
        ValueError, match=f"teacher's vocabulary has {size} tokens and the student's 280"
    ):
        check_same_vocabulary(teacher, student)
    retrained = Tokenizer.train(["sort: 1 2 3"] * 20, vocab_size=tokenizer.vocab_size)
    same_size = lm(tokenizer, 16, seed=2)
    check_same_vocabulary(teacher, same_size, tokenizer, tokenizer)
    with pytest.raises(ValueError, match="the teacher's and the student's tokenizers differ"):
        check_same_vocabulary(teacher, same_size, tokenizer, retrained)
    with pytest.raises(ValueError, match=f"vocabulary has {size} tokens and the student's 280"):
        distill_loss(teacher)(student, (np.zeros((1, 4), np.int64),) * 4)
