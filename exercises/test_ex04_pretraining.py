"""Grading tests for exercises/ex04_pretraining.py (lesson 04: pretraining).

Answers come from small cases worked out by hand in the comments, from tinyllm's own
``cross_entropy``, ``AdamW``, ``warmup_cosine`` and ``clip_grad_norm``, and, where it is
installed, from PyTorch: ``cross_entropy``, ``torch.optim.AdamW``, ``LinearLR`` followed
by ``CosineAnnealingLR``, and ``clip_grad_norm_``.
"""

import importlib.util
import math

import numpy as np
import pytest

from tinyllm import Tensor
from tinyllm import functional as F
from tinyllm.nn import Parameter
from tinyllm.optim import AdamW, clip_grad_norm, warmup_cosine

EX = "ex04_pretraining"

# The PyTorch case joins the oracles only where it can run. (A skipped case would be graded
# as failed, so without PyTorch the tinyllm cases carry all the points.)
ORACLES = ["tinyllm", "torch"] if importlib.util.find_spec("torch") else ["tinyllm"]


def masked_batch(seed, B=3, T=7, V=11, ignore_index=-100, scale=3.0):
    """Random float64 logits (B, T, V) and targets (B, T), about a third of them ignored."""
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((B, T, V)) * scale
    targets = rng.integers(0, V, size=(B, T))
    targets[rng.random((B, T)) < 0.35] = ignore_index
    targets[0, 0] = 1 if ignore_index != 1 else 2  # at least one target is kept
    return logits, targets


# --- 4.1 cross-entropy ------------------------------------------------------------------------
@pytest.mark.exercise("4.1", points=1)
def test_cross_entropy_by_hand(exercise):
    """cross_entropy_batch: small cases worked by hand"""
    ex = exercise(EX)
    logits = np.array([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # (1, 2, 3)
    # Only the first position counts: log(e² + 2) - 2. (Counting the ignored row as a zero
    # loss but still dividing by 2 would give half that.)
    loss = ex.cross_entropy_batch(logits, np.array([[0, -100]]))
    assert np.ndim(loss) == 0
    assert float(loss) == pytest.approx(math.log(math.exp(2) + 2) - 2, rel=1e-10)
    # Both kept: the mean of that and log 3 (uniform logits give log V).
    both = ex.cross_entropy_batch(logits, np.array([[0, 2]]))
    assert float(both) == pytest.approx((math.log(math.exp(2) + 2) - 2 + math.log(3)) / 2)
    uniform = ex.cross_entropy_batch(np.zeros((2, 4, 65)), np.arange(8).reshape(2, 4))
    assert float(uniform) == pytest.approx(math.log(65))  # perplexity 65 at step 0
    # Every target ignored: nothing to average, 0.0 by tinyllm's convention.
    assert float(ex.cross_entropy_batch(logits, np.array([[-100, -100]]))) == 0.0
    # Huge logits must not overflow: the loss is unchanged by adding a constant to a row.
    with np.errstate(over="raise", invalid="raise"):
        shifted = ex.cross_entropy_batch(logits + 1000.0, np.array([[0, -100]]))
    assert float(shifted) == pytest.approx(math.log(math.exp(2) + 2) - 2, rel=1e-9)


def library_cross_entropy(oracle, logits, targets, ignore_index):
    """(loss, d loss / d logits) from tinyllm's fused cross-entropy or PyTorch's."""
    if oracle == "tinyllm":
        t = Tensor(logits, requires_grad=True)
        loss = F.cross_entropy(t, targets, ignore_index=ignore_index)
        loss.backward()
        return loss.item(), t.grad
    import torch

    V = logits.shape[-1]
    t = torch.tensor(logits, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(
        t.reshape(-1, V), torch.from_numpy(targets).reshape(-1), ignore_index=ignore_index
    )
    loss.backward()
    return loss.item(), t.grad.numpy()


CE_CASES = [(0, -100, {}), (1, -100, {"B": 2, "T": 16, "V": 50}), (2, 0, {"scale": 10.0})]


@pytest.mark.exercise("4.1", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_cross_entropy_matches_the_libraries(exercise, oracle):
    """cross_entropy_batch: a library's cross-entropy on masked batches"""
    ex = exercise(EX)
    for seed, ignore_index, shape in CE_CASES:
        logits, targets = masked_batch(seed, ignore_index=ignore_index, **shape)
        want, _ = library_cross_entropy(oracle, logits, targets, ignore_index)
        got = ex.cross_entropy_batch(logits, targets, ignore_index=ignore_index)
        assert float(got) == pytest.approx(want, rel=1e-10)


@pytest.mark.exercise("4.1", points=1)
def test_cross_entropy_grad_by_hand(exercise):
    """cross_entropy_grad: softmax minus one-hot, over the kept count"""
    ex = exercise(EX)
    logits = np.array([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])
    p = math.exp(2) / (math.exp(2) + 2)  # softmax([2, 0, 0])[0]
    grad = np.asarray(ex.cross_entropy_grad(logits, np.array([[0, -100]])))
    assert grad.shape == (1, 2, 3)
    np.testing.assert_allclose(grad[0, 0], [p - 1, (1 - p) / 2, (1 - p) / 2], rtol=1e-10)
    np.testing.assert_array_equal(grad[0, 1], 0.0)  # the ignored position
    # Both kept: each row is softmax - onehot, divided by 2.
    grad = np.asarray(ex.cross_entropy_grad(logits, np.array([[0, 2]])))
    np.testing.assert_allclose(grad[0, 1], [1 / 6, 1 / 6, -1 / 3], rtol=1e-10)
    np.testing.assert_array_equal(ex.cross_entropy_grad(logits, np.array([[-100, -100]])), 0.0)


@pytest.mark.exercise("4.1", points=1)
@pytest.mark.parametrize("oracle", ORACLES)
def test_cross_entropy_grad_matches_autograd(exercise, oracle):
    """cross_entropy_grad: the gradient a library's autograd computes"""
    ex = exercise(EX)
    for seed, ignore_index, shape in CE_CASES:
        logits, targets = masked_batch(seed, ignore_index=ignore_index, **shape)
        _, want = library_cross_entropy(oracle, logits, targets, ignore_index)
        got = np.asarray(ex.cross_entropy_grad(logits, targets, ignore_index=ignore_index))
        assert got.shape == logits.shape
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


# --- 4.2 AdamW --------------------------------------------------------------------------------
@pytest.mark.exercise("4.2", points=1)
def test_adamw_update_by_hand(exercise):
    """adamw_update: first steps worked by hand"""
    ex = exercise(EX)
    p, g, zeros = np.array([1.0, -2.0]), np.array([0.5, -3.0]), np.zeros(2)
    kept = [a.copy() for a in (p, g, zeros)]
    # Step 1: m = 0.1·g, v = 0.001·g², and bias correction gives back m̂ = g, v̂ = g², so
    # each entry moves by lr against the sign of its gradient, whatever the gradient's size.
    p1, m1, v1 = ex.adamw_update(p, g, zeros, zeros, step=1, lr=0.1, weight_decay=0.0)
    np.testing.assert_allclose(m1, [0.05, -0.3], rtol=1e-12)
    np.testing.assert_allclose(v1, [0.00025, 0.009], rtol=1e-12)
    np.testing.assert_allclose(p1, [0.9, -1.9], rtol=1e-7)
    # Step 2 with the same gradient: m = 0.19·g, v = 0.001999·g², bias-corrected to g and g²
    # again, so the same step of lr. (Without the correction it would be 0.19/√0.001999 ≈ 4.2
    # times as large.)
    p2, m2, v2 = ex.adamw_update(p1, g, m1, v1, step=2, lr=0.1, weight_decay=0.0)
    np.testing.assert_allclose(m2, 0.19 * g, rtol=1e-12)
    np.testing.assert_allclose(v2, 0.001999 * g**2, rtol=1e-12)
    np.testing.assert_allclose(p2, [0.8, -1.8], rtol=1e-7)
    # Decoupled decay: p is first scaled by 1 - lr·λ = 0.95, then moved by lr·sign(g).
    # (As L2 added to g, the decay would vanish in m̂/√v̂ ≈ sign(g + λp) = sign(g) here.)
    p1, _, _ = ex.adamw_update(p, g, zeros, zeros, step=1, lr=0.1, weight_decay=0.5)
    np.testing.assert_allclose(p1, [0.85, -1.8], rtol=1e-7)
    for a, b in zip((p, g, zeros), kept):  # new arrays; the inputs are left as they were
        np.testing.assert_array_equal(a, b)


class LibraryAdamW:
    """One parameter driven by tinyllm's AdamW or torch.optim.AdamW, eagerly."""

    def __init__(self, oracle, param, betas, eps, weight_decay):
        self.oracle = oracle
        if oracle == "tinyllm":
            self.p = Parameter(param.copy())
            self.opt = AdamW([self.p], lr=0.0, betas=betas, eps=eps, weight_decay=weight_decay)
        else:
            import torch

            self.p = torch.nn.Parameter(torch.tensor(param))
            self.opt = torch.optim.AdamW(
                [self.p], lr=0.0, betas=betas, eps=eps, weight_decay=weight_decay
            )

    def step(self, grad, lr):
        """Take a step; return (param, exp_avg, exp_avg_sq) as NumPy arrays."""
        if self.oracle == "tinyllm":
            self.opt.lr = lr
            self.p.grad = grad.copy()
            self.opt.step()
            state = self.opt.state
            return self.p.numpy(), state["exp_avg"]["0"], state["exp_avg_sq"]["0"]
        import torch

        self.opt.param_groups[0]["lr"] = lr
        self.p.grad = torch.tensor(grad)
        self.opt.step()
        state = self.opt.state[self.p]
        return tuple(a.detach().numpy() for a in (self.p, state["exp_avg"], state["exp_avg_sq"]))


@pytest.mark.exercise("4.2", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_adamw_update_matches_the_libraries(exercise, oracle):
    """adamw_update: a library's AdamW over many steps"""
    ex = exercise(EX)
    configs = [  # (betas, eps, weight_decay)
        ((0.9, 0.95), 1e-8, 0.1),  # GPT-style pretraining
        ((0.9, 0.999), 1e-8, 0.01),  # PyTorch's defaults
        ((0.8, 0.99), 1e-3, 0.5),  # a large eps and decay, so both show
    ]
    for seed, (betas, eps, weight_decay) in enumerate(configs):
        rng = np.random.default_rng(seed)
        param = rng.standard_normal((4, 5))
        library = LibraryAdamW(oracle, param, betas, eps, weight_decay)
        m, v = np.zeros_like(param), np.zeros_like(param)
        for step in range(1, 16):
            grad = rng.standard_normal((4, 5)) * rng.uniform(0.01, 10)
            lr = warmup_cosine(step - 1, 0.05, warmup_steps=3, total_steps=15, min_lr=0.005)
            want = library.step(grad, lr)
            param, m, v = ex.adamw_update(
                param, grad, m, v, step, lr, betas=betas, eps=eps, weight_decay=weight_decay
            )
            for got, expected in zip((param, m, v), want):
                np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-13)


# --- 4.3 the learning-rate schedule ---------------------------------------------------------
@pytest.mark.exercise("4.3", points=1)
def test_cosine_lr_by_hand(exercise):
    """cosine_lr: warmup and cosine worked by hand"""
    ex = exercise(EX)
    # warmup 2, total 6: (0+1)/3, (1+1)/3, then cos over 4 steps: 1, (1+cos(π/4))/2, 1/2, ...
    c = (1 + math.cos(math.pi / 4)) / 2
    want = [1 / 3, 2 / 3, 1.0, c, 0.5, 1 - c, 0.0, 0.0]
    got = [ex.cosine_lr(s, 1.0, warmup_steps=2, total_steps=6) for s in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    # Step 0 is never 0 (nanoGPT-style max_lr·step/warmup would be); max_lr at step == warmup.
    assert ex.cosine_lr(0, 6e-4, warmup_steps=100, total_steps=1000) == pytest.approx(6e-4 / 101)
    assert ex.cosine_lr(100, 6e-4, warmup_steps=100, total_steps=1000) == pytest.approx(6e-4)
    # The cosine runs from warmup to total (not from 0): halfway is the mean of max and min.
    assert ex.cosine_lr(550, 6e-4, 100, 1000, min_lr=6e-5) == pytest.approx(3.3e-4)
    assert ex.cosine_lr(5000, 6e-4, 100, 1000, min_lr=6e-5) == pytest.approx(6e-5)  # floor
    # No warmup: start at max_lr. Warmup filling the run: end at max_lr, then the floor.
    assert ex.cosine_lr(0, 0.1, warmup_steps=0, total_steps=10) == pytest.approx(0.1)
    assert ex.cosine_lr(4, 0.1, warmup_steps=4, total_steps=4) == pytest.approx(0.1)
    assert ex.cosine_lr(5, 0.1, warmup_steps=4, total_steps=4, min_lr=0.01) == pytest.approx(0.01)


def torch_warmup_cosine(max_lr, warmup_steps, total_steps, min_lr):
    """The learning rates of steps 0..total_steps from PyTorch's own schedulers.

    ``LinearLR`` from 1/(warmup+1) to 1 over the warmup steps gives max_lr·(step+1)/(warmup+1);
    ``CosineAnnealingLR`` over the remaining steps takes over at step == warmup_steps.
    """
    import torch

    schedulers = torch.optim.lr_scheduler
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=max_lr)
    decay = schedulers.CosineAnnealingLR(opt, T_max=total_steps - warmup_steps, eta_min=min_lr)
    schedule = decay
    if warmup_steps:
        warmup = schedulers.LinearLR(
            opt, start_factor=1 / (warmup_steps + 1), end_factor=1.0, total_iters=warmup_steps
        )
        schedule = schedulers.SequentialLR(opt, [warmup, decay], milestones=[warmup_steps])
    rates = []
    for _ in range(total_steps + 1):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return rates


@pytest.mark.exercise("4.3", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_cosine_lr_matches_the_libraries(exercise, oracle):
    """cosine_lr: a library's warmup + cosine schedule, step by step"""
    ex = exercise(EX)
    configs = [  # (max_lr, warmup_steps, total_steps, min_lr)
        (6e-4, 10, 100, 6e-5),
        (1.0, 0, 7, 0.0),
        (1e-3, 1, 2, 1e-4),
        (0.1, 3, 50, 0.01),
    ]
    if oracle == "tinyllm":
        configs.append((3e-4, 5, 5, 1e-5))  # all warmup (PyTorch's cosine needs T_max > 0)
    for max_lr, warmup_steps, total_steps, min_lr in configs:
        if oracle == "tinyllm":
            steps = range(total_steps + 10)  # and on past the end, at min_lr
            want = [warmup_cosine(s, max_lr, warmup_steps, total_steps, min_lr) for s in steps]
        else:
            want = torch_warmup_cosine(max_lr, warmup_steps, total_steps, min_lr)
        got = [ex.cosine_lr(s, max_lr, warmup_steps, total_steps, min_lr) for s in range(len(want))]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-18)


# --- 4.4 gradient clipping ------------------------------------------------------------------
@pytest.mark.exercise("4.4", points=1)
def test_clip_by_global_norm_by_hand(exercise):
    """clip_by_global_norm: small cases worked by hand"""
    ex = exercise(EX)
    grads = [np.array([3.0, 0.0]), np.array([4.0])]
    kept = [g.copy() for g in grads]
    # One norm for both: √(9 + 16) = 5, so scale ≈ 1/5. (Clipping each array on its own
    # would give [1, 0] and [1].)
    clipped, norm = ex.clip_by_global_norm(grads, max_norm=1.0)
    assert float(norm) == pytest.approx(5.0, rel=1e-12)  # the norm *before* clipping
    np.testing.assert_allclose(clipped[0], [0.6, 0.0], rtol=1e-5)
    np.testing.assert_allclose(clipped[1], [0.8], rtol=1e-5)
    for g, k in zip(grads, kept):  # new arrays; the inputs are left as they were
        np.testing.assert_array_equal(g, k)
    # Under the limit nothing changes: the scale 10/5 = 2 must not stretch them.
    clipped, norm = ex.clip_by_global_norm(grads, max_norm=10.0)
    assert float(norm) == pytest.approx(5.0, rel=1e-12)
    np.testing.assert_array_equal(clipped[0], grads[0])
    np.testing.assert_array_equal(clipped[1], grads[1])
    # All-zero gradients stay zero and finite.
    with np.errstate(divide="raise", invalid="raise"):
        clipped, norm = ex.clip_by_global_norm([np.zeros((2, 2))], max_norm=1.0)
    assert float(norm) == 0.0
    np.testing.assert_array_equal(clipped[0], 0.0)


def library_clip(oracle, grads, max_norm):
    """(clipped grads, norm) from tinyllm's clip_grad_norm or PyTorch's clip_grad_norm_."""
    if oracle == "tinyllm":
        params = [Parameter(np.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.copy()
        norm = clip_grad_norm(params, max_norm)
        return [p.grad for p in params], float(norm)
    import torch

    params = [torch.nn.Parameter(torch.zeros(g.shape, dtype=torch.float64)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = torch.tensor(g)
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    return [p.grad.numpy() for p in params], float(norm)


@pytest.mark.exercise("4.4", points=2)
@pytest.mark.parametrize("oracle", ORACLES)
def test_clip_by_global_norm_matches_the_libraries(exercise, oracle):
    """clip_by_global_norm: a library's clip_grad_norm"""
    ex = exercise(EX)
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(shape) for shape in [(4, 5), (5,), (3, 2, 2), (1,)]]
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
    for max_norm in [0.5 * norm, 0.999 * norm, 1.5 * norm, 1.0, 1e-3]:
        want, want_norm = library_clip(oracle, grads, max_norm)
        clipped, got_norm = ex.clip_by_global_norm(grads, max_norm)
        assert float(got_norm) == pytest.approx(want_norm, rel=1e-12)
        assert len(clipped) == len(grads)
        for got, expected in zip(clipped, want):
            np.testing.assert_allclose(got, expected, rtol=1e-12)
