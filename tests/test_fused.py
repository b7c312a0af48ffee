"""The fused elementwise chains (``tinyllm/backend/fused.py``): each equals the unfused
expression it replaces, the ops and AdamW built on them equal their composed forms and
torch, CuPy's compiled kernels equal NumPy's plain functions, and a training step reads
nothing back to the host except at its log intervals."""

import math

import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor
from tinyllm import functional as F
from tinyllm.backend import Backend, NumpyBackend, fused
from tinyllm.backend.numpy_backend import BLOCK
from tinyllm.data import RandomBatches
from tinyllm.models import Transformer, get_preset
from tinyllm.optim import SGD, AdamW
from tinyllm.train import TrainConfig, Trainer, TrainingDiverged
from tinyllm.train.loss_scaling import LossScaler

C, K = math.sqrt(2 / math.pi), 0.044715
SHAPES = [((7,), (7,)), ((3, 5), (3, 1)), ((2, 3, 8), (8,)), ((4, 1, 6), (1, 5, 6))]


def rand(shape, seed, low=-3.0, high=3.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


def close(got, expected, tol=2e-6):
    assert got.dtype == np.float32, got.dtype
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


# --- every chain against its unfused expression, in float64 -----------------------------
@pytest.mark.parametrize("shape, other", SHAPES)
def test_activation_chains_equal_their_unfused_expressions(shape, other):
    a, grad, up = rand(shape, 0), rand(shape, 1), rand(shape, 2)
    a64, grad64, up64 = f64(a, grad, up)
    u = C * (a64 + K * a64**3)
    gelu = 0.5 * a64 * (1 + np.tanh(u))
    dgelu = 0.5 * (1 + np.tanh(u)) + 0.5 * a64 * (1 - np.tanh(u) ** 2) * C * (1 + 3 * K * a64**2)
    y, s = fused.gelu_tanh(np, a)
    close(y, gelu)
    close(fused.gelu_tanh_backward(np, grad, a, s), grad64 * dgelu)

    sig = 1 / (1 + np.exp(-a64))
    y, sig32 = fused.silu(np, a)
    close(y, a64 * sig)
    close(fused.silu_backward(np, grad, a, sig32), grad64 * sig * (1 + a64 * (1 - sig)))
    y, sig32 = fused.swiglu(np, a, up)
    close(y, a64 * sig * up64, 1e-5)
    d_gate, d_up = fused.swiglu_backward(np, grad, a, up, sig32)
    close(d_gate, grad64 * up64 * sig * (1 + a64 * (1 - sig)), 1e-5)
    close(d_up, grad64 * a64 * sig, 1e-5)


@pytest.mark.parametrize("shape, other", SHAPES)
def test_norm_and_softmax_chains_equal_their_unfused_expressions(shape, other):
    x, g, w = rand(shape, 3), rand(shape, 4), rand(other, 5)  # w broadcasts against x
    row = rand(shape[:-1] + (1,), 6, 0.5, 2.0)  # a per-row number, (..., 1)
    row2 = rand(shape[:-1] + (1,), 7)
    x64, g64, w64, row64, row2_64 = f64(x, g, w, row, row2)
    n = shape[-1]
    close(fused.inverse_rms(np, row, n, 1e-5), 1 / np.sqrt(row64 / n + 1e-5))
    close(fused.centre(np, x, row, n), x64 - row64 / n)
    xhat, y = fused.norm_scale(np, x, row, w)
    close(xhat, x64 * row64)
    close(y, x64 * row64 * w64)
    xhat, y = fused.norm_scale_shift(np, x, row, w, row2)
    close(y, x64 * row64 * w64 + row2_64, 1e-5)
    got = fused.norm_backward(np, g, x, row, row2, row, n)
    close(got, row64 * (g64 - row2_64 / n - x64 * (row64 / n)), 1e-5)
    close(fused.norm_backward(np, g, x, row, 0.0, row2, n), row64 * (g64 - x64 * row2_64 / n), 1e-5)

    close(fused.shifted_exp(np, x, row), np.exp(x64 - row64), 1e-5)
    close(fused.softmax_exp(np, x, row), np.exp(x64 - row64), 1e-5)
    close(fused.normalise(np, x, row), x64 / row64)
    close(fused.softmax_backward(np, x, g, row), x64 * (g64 - row64), 1e-5)
    close(fused.cross_entropy_backward(np, x, row2, row), x64 * (row2_64 / row64), 1e-5)


def test_softmax_chains_keep_rows_that_see_nothing_at_zero():
    scores = np.array([[-np.inf, -np.inf], [0.0, 1.0]], np.float32)
    row_max = scores.max(axis=-1, keepdims=True)
    e = fused.softmax_exp(np, scores, row_max)
    probs = fused.normalise(np, e, e.sum(axis=-1, keepdims=True))
    assert probs[0].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(probs[1], [1 / (1 + math.e), math.e / (1 + math.e)], rtol=1e-6)


def test_adamw_chain_equals_the_textbook_update():
    p, g, m, v = (rand((50,), seed) for seed in range(4))
    v = np.abs(v)
    lr, b1, b2, eps, wd, t = 1e-2, 0.9, 0.95, 1e-8, 0.1, 3
    c1, c2 = 1 - b1**t, 1 - b2**t
    update, m_new, v_new = fused.adamw_moments(
        np, g, m, v, b1, b2, lr * math.sqrt(c2) / c1, eps * math.sqrt(c2)
    )
    p_new = fused.decayed_step(np, p, update, 1 - lr * wd)
    p64, g64, m64, v64 = f64(p, g, m, v)
    m_ref, v_ref = b1 * m64 + (1 - b1) * g64, b2 * v64 + (1 - b2) * g64**2
    p_ref = p64 * (1 - lr * wd) - lr * (m_ref / c1) / (np.sqrt(v_ref / c2) + eps)
    close(m_new, m_ref)
    close(v_new, v_ref)
    close(p_new, p_ref)


# --- the backend hook -------------------------------------------------------------------
def test_numpy_update_in_place_by_blocks_equals_the_plain_definition():
    n = 2 * BLOCK + 123  # several blocks and a ragged last one
    for where in (True, np.array(True), np.array(False)):
        args = [rand((n,), s) for s in range(3)]
        args[2] = np.abs(args[2])
        plain = [a.copy() for a in args]
        NumpyBackend().update_in_place(
            fused.adamw_moments, *args, 0.9, 0.99, 0.1, 1e-8, where=where
        )
        Backend().update_in_place(fused.adamw_moments, *plain, 0.9, 0.99, 0.1, 1e-8, where=where)
        for got, expected in zip(args, plain):
            np.testing.assert_array_equal(got, expected)
        if not where:
            np.testing.assert_array_equal(args[0], rand((n,), 0))  # unchanged
    p = rand((2 * BLOCK, 3), 9)[:, ::2]  # not contiguous: one pass over the whole array
    expected = p * 0.5 - 1.0
    NumpyBackend().update_in_place(fused.decayed_step, p, np.float32(1.0), 0.5)
    np.testing.assert_array_equal(p, expected)


def test_ops_on_the_chains_equal_their_composed_forms():
    gate, up = (Tensor(rand((3, 4, 8), s), requires_grad=True) for s in (0, 1))
    F.swiglu(gate, up).sum().backward()
    fused_grads = gate.grad, up.grad
    gate.grad = up.grad = None
    (F.silu(gate) * up).sum().backward()
    np.testing.assert_allclose(fused_grads[0], gate.grad, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(fused_grads[1], up.grad, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"gate of shape \(3, 4, 8\) and up of shape \(8,\)"):
        F.swiglu(gate, Tensor(rand((8,), 2)))


def test_ops_match_torch():
    torch = pytest.importorskip("torch")
    x_np, w_np, b_np = rand((2, 5, 16), 0), rand((16,), 1), rand((16,), 2)
    grad_np = rand((2, 5, 16), 3)
    cases = [
        (lambda x, w, b: F.gelu(x), lambda x, w, b: torch.nn.functional.gelu(x, approximate="tanh")),
        (lambda x, w, b: F.swiglu(x, x * w), lambda x, w, b: torch.nn.functional.silu(x) * (x * w)),
        (lambda x, w, b: F.rms_norm(x, w), lambda x, w, b: torch.nn.functional.rms_norm(x, (16,), w, 1e-5)),
        (lambda x, w, b: F.layer_norm(x, w, b), lambda x, w, b: torch.nn.functional.layer_norm(x, (16,), w, b, 1e-5)),
        (lambda x, w, b: F.softmax(x * w), lambda x, w, b: torch.softmax(x * w, -1)),
    ]  # fmt: skip
    for ours, theirs in cases:
        mine = [Tensor(a, requires_grad=True) for a in (x_np, w_np, b_np)]
        (ours(*mine) * Tensor(grad_np)).sum().backward()
        ref = [torch.tensor(a, requires_grad=True) for a in (x_np, w_np, b_np)]
        (theirs(*ref) * torch.tensor(grad_np)).sum().backward()
        for a, b in zip(mine, ref):
            expected = np.zeros(a.shape, np.float32) if b.grad is None else b.grad.numpy()
            got = np.zeros(a.shape, np.float32) if a.grad is None else a.grad
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    logits, targets = rand((6, 11), 4), np.array([1, 0, 10, -100, 3, 3])
    ours = Tensor(logits, requires_grad=True)
    F.cross_entropy(ours, targets).backward()
    ref = torch.tensor(logits, requires_grad=True)
    torch.nn.functional.cross_entropy(ref, torch.tensor(targets)).backward()
    np.testing.assert_allclose(ours.grad, ref.grad.numpy(), rtol=1e-5, atol=1e-6)


# --- AdamW ------------------------------------------------------------------------------
def textbook_in_place_step(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """AdamW as the optimizer computed it before its chains: a dozen in-place passes."""
    g = g.copy()
    g *= 1 - beta1
    m *= beta1
    m += g
    g *= g
    g *= (1 - beta2) / (1 - beta1) ** 2
    v *= beta2
    v += g
    c1, c2 = 1 - beta1**t, 1 - beta2**t
    update = np.sqrt(v)
    update += eps * math.sqrt(c2)
    update = np.divide(m, update)
    update *= lr * math.sqrt(c2) / c1
    p *= 1 - lr * weight_decay
    p -= update


def test_adamw_equals_its_in_place_passes_and_torch():
    torch = pytest.importorskip("torch")
    shapes, settings = [(4, 3), (5,)], dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    start = [rand(shape, i) for i, shape in enumerate(shapes)]
    ours = [tinyllm.nn.Parameter(a.copy()) for a in start]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in start]
    reference = [a.copy() for a in start]
    moments = [(np.zeros_like(a), np.zeros_like(a)) for a in start]
    opt, torch_opt = AdamW(ours, **settings), torch.optim.AdamW(theirs, **settings)
    for t in range(1, 5):
        grads = [rand(shape, 10 * t + i) for i, shape in enumerate(shapes)]
        for p, q, g, ref, (m, v) in zip(ours, theirs, grads, reference, moments):
            p.grad, q.grad = g, torch.tensor(g)
            textbook_in_place_step(ref, g, m, v, t, settings["lr"], *settings["betas"], 1e-8, 0.1)
        opt.step()
        torch_opt.step()
        for p, q, ref in zip(ours, theirs, reference):
            np.testing.assert_allclose(p.numpy(), ref, rtol=1e-7, atol=1e-7)
            np.testing.assert_allclose(p.numpy(), q.detach().numpy(), rtol=1e-6, atol=1e-6)


def test_a_step_with_only_if_false_changes_nothing_and_does_not_count():
    """A step not taken (a float16 overflow, say) is as if it never happened: the steps
    after it match an AdamW that never saw it, bias corrections included (PyTorch's
    GradScaler skips ``optimizer.step`` the same way), and ``state_dict`` counts only the
    steps taken."""
    w, twin = tinyllm.nn.Parameter(rand((64, 32), 0)), tinyllm.nn.Parameter(rand((64, 32), 0))
    opt, twin_opt = (AdamW([p], lr=0.1, betas=(0.9, 0.99)) for p in (w, twin))
    for i, taken in enumerate([True, False, False, True, True]):
        before = w.numpy().copy()
        w.grad = rand((64, 32), i + 1) if taken else np.full((64, 32), np.nan, np.float32)
        opt.step(only_if=np.array(taken))
        if taken:
            twin.grad = w.grad.copy()
            twin_opt.step()
            np.testing.assert_array_equal(w.numpy(), twin.numpy())  # to the last bit
        else:
            np.testing.assert_array_equal(w.numpy(), before)
    assert opt.state["step"]["0"] == 5 and int(opt.skipped) == 2  # settled by state_dict:
    state, twin_state = opt.state_dict(), twin_opt.state_dict()
    assert state["step"]["0"] == twin_state["step"]["0"] == 3 and opt.skipped is None
    np.testing.assert_array_equal(state["exp_avg"]["0"], twin_state["exp_avg"]["0"])
    other = tinyllm.nn.Parameter(rand((2,), 9))
    both = AdamW([w, other], lr=0.1)
    with pytest.raises(ValueError, match=r"needs a gradient for every parameter; \['1'\]"):
        both.step(only_if=np.array(True))
    sgd = SGD([w], lr=0.1)
    with pytest.raises(TypeError, match="SGD.step cannot skip a step on the device"):
        sgd.step(only_if=np.array(True))


# --- no host read inside a training step ------------------------------------------------
def small_trainer(backend="numpy", preset="tiny", **changes):
    tokens = np.random.default_rng(0).integers(0, 65, 2000)
    preset = get_preset(preset, n_layer=1, d_model=16, n_head=2, context_length=8)
    model = Transformer(preset, seed=0).to(backend)
    config = TrainConfig(
        **{"steps": 7, "batch_size": 2, "warmup_steps": 1, "lr": 1e-2, "eval_interval": 0,
           "log_interval": 3, "checkpoint_interval": 0, "progress": False, **changes}
    )  # fmt: skip
    return Trainer(model, config, RandomBatches(tokens, 2, 8, seed=0))


@pytest.mark.parametrize(
    "backend, preset, dtype, scaled",
    [
        ("numpy", "tiny", "float32", False),
        ("numpy", "tiny", "float32", True),
        ("cupy", "tiny-moe", "float32", False),
        ("cupy", "tiny", "float16", True),
    ],
)
def test_a_training_step_reads_nothing_back_between_log_steps(
    monkeypatch, backend, preset, dtype, scaled
):
    """Nor does loss scaling (its rule does not depend on the dtype), and on CuPy a mixture
    of experts and float16 read nothing back either (CuPy needs a CUDA GPU)."""
    if backend == "cupy":
        cupy_backend()
    trainer = small_trainer(backend, preset, dtype=dtype)
    if scaled and trainer.loss_scaler is None:
        trainer.loss_scaler = LossScaler()
    reads, to_numpy = [], trainer.backend.to_numpy

    def recording(x):
        reads.append(trainer.step)
        return to_numpy(x)

    monkeypatch.setattr(trainer.backend, "to_numpy", recording)
    result = trainer.fit()
    assert reads == [3, 6, 7]  # one transfer per log step (and the last): none in between
    assert result.step == 7 and math.isfinite(result.train_loss)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_compiled_step_reads_nothing_back_between_log_steps(monkeypatch, dtype):
    """The same on JAX, where the whole step is one compiled program: its loss, gradient norm
    and metrics, and under float16 the loss scale's rule, stay on the device. Every read of
    a JAX array to the host (``float()``, ``np.asarray``, ``to_numpy``) goes through
    ``ArrayImpl._value``, which is counted here."""
    pytest.importorskip("jax")
    from jax._src.array import ArrayImpl

    trainer = small_trainer("jax", dtype=dtype)
    reads, value = [], ArrayImpl._value

    def recording(array):
        reads.append(trainer.step)
        return value.fget(array)

    monkeypatch.setattr(ArrayImpl, "_value", property(recording))
    result = trainer.fit()
    assert sorted(set(reads)) == [1, 3, 6, 7]  # the log steps: the first (with its compile
    # time), every third, the last
    assert result.step == 7 and math.isfinite(result.train_loss)
    assert (trainer.loss_scaler is None) == (dtype == "float32")


def test_a_diverged_step_found_at_the_next_read_left_the_weights_as_before_it():
    trainer = small_trainer(log_interval=4)

    def poisoned(model, batch):
        ids, targets = batch
        loss = model(ids, targets)[1]
        return loss * float("nan") if trainer.step == 1 else loss

    trainer.loss_fn = poisoned
    weights = {}
    trainer.optimizer.step = wrap_after(trainer.optimizer.step, lambda: weights.setdefault(
        trainer.step, trainer.model.state_dict()))  # fmt: skip
    with pytest.raises(TrainingDiverged, match=r"stopped at step 2: the loss is nan"):
        trainer.fit()  # found at step 4, the first read
    assert trainer.step == 1 and set(trainer.optimizer.state["step"].values()) == {1}
    now = trainer.model.state_dict()
    assert all(np.array_equal(weights[0][k], now[k]) for k in now)  # after step 1 only


def test_a_diverged_compiled_step_found_at_the_next_read_left_the_weights_as_before_it():
    """The same on JAX: the compiled step carries whether every step so far was finite, so
    the steps after a NaN change nothing either. The NaN rides in on the second batch (the
    step is traced once, so the loss cannot look at the step number)."""
    pytest.importorskip("jax")

    def poisoned(model, batch):
        ids, targets, factor = batch
        return model(ids, targets)[1] * factor[0]

    def trainer_for(steps, poison_at):
        trainer = small_trainer("jax", steps=steps, log_interval=4, schedule="constant")
        plain = trainer.train_batches
        factors = (np.array([np.nan if i == poison_at else 1.0], np.float32) for i in range(99))
        trainer.train_batches = ((*batch, factor) for batch, factor in zip(plain, factors))
        trainer.loss_fn = poisoned
        return trainer

    after_one = trainer_for(1, poison_at=None)
    after_one.fit()
    trainer = trainer_for(7, poison_at=1)
    with pytest.raises(TrainingDiverged, match=r"stopped at step 2: the loss is nan"):
        trainer.fit()  # found at step 4, the first read after the compile step
    assert trainer.step == 1
    assert {int(c) for c in trainer.opt_state["step"].values()} == {1}
    expected, now = after_one.model.state_dict(), trainer.model.state_dict()
    assert all(np.array_equal(expected[k], now[k]) for k in now)  # after step 1 only


def wrap_after(fn, after):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        after()
        return out

    return wrapped


# --- CuPy: the compiled kernels equal NumPy's plain functions -----------------------------
def cupy_backend():
    works, detail = tinyllm.available_backends()["cupy"]
    if not works:
        pytest.skip(f"needs a CUDA GPU with CuPy: {detail}")
    return tinyllm.get_backend("cupy")


CUPY_CASES = {
    "gelu_tanh": ((2, 3, 8),),
    "gelu_tanh_backward": ((2, 3, 8),) * 3,
    "silu": ((5, 7),),
    "silu_backward": ((5, 7),) * 3,
    "swiglu": ((5, 7),) * 2,
    "swiglu_backward": ((5, 7),) * 4,
    "inverse_rms": ((5, 1), 7, 1e-5),
    "centre": ((5, 7), (5, 1), 7),
    "norm_scale": ((5, 7), (5, 1), (7,)),
    "norm_scale_shift": ((5, 7), (5, 1), (7,), (7,)),
    "norm_backward": ((5, 7), (5, 7), (5, 1), (5, 1), (5, 1), 7),
    "shifted_exp": ((4, 9), (4, 1)),
    "softmax_exp": ((4, 9), (4, 1)),
    "normalise": ((4, 9), (4, 1)),
    "softmax_backward": ((4, 9), (4, 9), (4, 1)),
    "cross_entropy_backward": ((4, 9), (4, 1), (4, 1)),
    "adamw_moments": ((100,), (100,), (100,), 0.9, 0.95, 1e-3, 1e-8),
    "decayed_step": ((100,), (100,), 0.99),
}


def chain_args(spec):
    return [rand(a, i, 0.1, 2.0) if isinstance(a, tuple) else a for i, a in enumerate(spec)]


@pytest.mark.parametrize("chain", fused.CHAINS, ids=lambda c: c.__name__)
def test_cupy_fused_kernels_equal_numpy(chain):
    backend = cupy_backend()
    args = chain_args(CUPY_CASES[chain.__name__])
    expected = chain(np, *args)
    got = backend.fused(chain)(
        *(backend.asarray(a) if isinstance(a, np.ndarray) else a for a in args)
    )
    expected, got = (r if isinstance(r, tuple) else (r,) for r in (expected, got))
    for e, g in zip(expected, got):
        assert g.dtype == np.float32
        np.testing.assert_allclose(backend.to_numpy(g), e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "chain", [fused.adamw_moments, fused.decayed_step], ids=lambda c: c.__name__
)
def test_cupy_in_place_kernels_equal_numpy(chain):
    backend = cupy_backend()
    for where in (True, False):
        args = chain_args(CUPY_CASES[chain.__name__])
        on_gpu = [backend.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        NumpyBackend().update_in_place(chain, *args, where=np.array(where))
        backend.update_in_place(chain, *on_gpu, where=backend.asarray(where))
        for a, g in zip(args, on_gpu):
            if isinstance(a, np.ndarray):
                np.testing.assert_allclose(backend.to_numpy(g), a, rtol=1e-5, atol=1e-7)


def test_cupy_training_steps_match_numpy():
    backend = cupy_backend()
    results = {}
    for name in ("numpy", backend.name):
        results[name] = small_trainer(name, steps=4).fit().train_loss
    assert results["cupy"] == pytest.approx(results["numpy"], rel=1e-4)


def test_token_ids_for_cupy_are_checked_on_the_host_not_read_back():
    from tinyllm.backend.cupy_backend import CupyBackend
    from tinyllm.models.transformer import _check_ids_on_host

    assert CupyBackend.reads_values(None, np.zeros(2)) is False  # ops read nothing back there
    assert NumpyBackend().reads_values(np.zeros(2)) is True
    _check_ids_on_host(np.array([[0, -100, 64]]), "targets", 65)  # -100: an ignored target
    with pytest.raises(IndexError, match=r"ids holds 65, outside the vocabulary \[0, 65\)"):
        _check_ids_on_host(np.array([[3, 65]]), "ids", 65)
    with pytest.raises(IndexError, match=r"targets holds -1, outside"):
        _check_ids_on_host(np.array([[-1, 2]]), "targets", 65)
