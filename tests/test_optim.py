"""Optimizers, schedules, clipping and accumulation, with PyTorch as the outside oracle.

Each optimizer test gives tinyllm and torch the same starting weights and the same
sequence of gradients and learning rates, and compares the weights after every step.
float64 pins the arithmetic down to rounding; float32 (what training runs) agrees to
float32 precision. Skipped where torch is not installed; CI installs it (``dev`` extra).
"""

import math

import numpy as np
import pytest

import tinyllm
import tinyllm.functional as F
from tinyllm.nn import Embedding, Linear, Module, Parameter, RMSNorm
from tinyllm.optim import (
    SGD,
    AdamW,
    accumulate_gradients,
    clip_grad_norm,
    clip_grads,
    constant,
    get_schedule,
    warmup_cosine,
    warmup_linear,
)

# A small transformer's kinds of arrays: matrices (decayed) and vectors (not decayed).
SHAPES = {"embed": (11, 8), "w_in": (8, 16), "b_in": (16,), "norm": (8,), "w_out": (16, 8)}
TOLERANCE = {np.float32: dict(rtol=1e-6, atol=1e-7), np.float64: dict(rtol=1e-12, atol=1e-14)}
# m can be a small difference of gradients near 1: compare it to their rounding, not its own.
MOMENT_TOLERANCE = {
    np.float32: dict(rtol=1e-5, atol=1e-6),
    np.float64: dict(rtol=1e-10, atol=1e-14),
}


class Weights(Module):
    """Parameters of the shapes in SHAPES, drawn from ``seed``."""

    def __init__(self, seed=0, dtype=np.float32):
        rng = np.random.default_rng(seed)
        for name, shape in SHAPES.items():
            setattr(self, name, Parameter(rng.standard_normal(shape).astype(dtype)))


def gradients(n_steps, seed=1, dtype=np.float32, skip=()):
    """``n_steps`` dicts {name: gradient}; a (step, name) in ``skip`` gets None."""
    rng = np.random.default_rng(seed)
    return [
        {
            name: None if (step, name) in skip else rng.standard_normal(shape).astype(dtype)
            for name, shape in SHAPES.items()
        }
        for step in range(n_steps)
    ]


def torch_copy(net, torch):
    """{name: torch leaf} with the same values as ``net``'s parameters."""
    return {n: torch.tensor(p.numpy(), requires_grad=True) for n, p in net.named_parameters()}


def torch_groups(tensors, weight_decay):
    """torch param groups that mirror tinyllm's rule: no weight decay on vectors."""
    return [
        {"params": [t for t in tensors.values() if t.ndim >= 2], "weight_decay": weight_decay},
        {"params": [t for t in tensors.values() if t.ndim < 2], "weight_decay": 0.0},
    ]


def _torch():
    return pytest.importorskip("torch")


def run_both(net, opt, tensors, torch_opt, grads, lrs):
    """One step per entry of ``grads``/``lrs`` in both; assert equal weights after each."""
    tol = TOLERANCE[net.embed.dtype.type]
    for step, (grad, lr) in enumerate(zip(grads, lrs)):
        if isinstance(lr, tuple):  # one per group
            for group, torch_group, rate in zip(opt.param_groups, torch_opt.param_groups, lr):
                group["lr"] = torch_group["lr"] = rate
        else:
            opt.lr = lr
            for group in torch_opt.param_groups:
                group["lr"] = lr
        for name, p in net.named_parameters():
            p.grad = None if grad[name] is None else grad[name].copy()
            tensors[name].grad = None if grad[name] is None else _torch().tensor(grad[name])
        opt.step()
        torch_opt.step()
        for name, p in net.named_parameters():
            expected = tensors[name].detach().numpy()
            np.testing.assert_allclose(p.numpy(), expected, **tol, err_msg=f"{name} {step}")


# --- AdamW ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_torch_over_20_steps_with_a_changing_lr(weight_decay, dtype):
    torch = _torch()
    net = Weights(seed=0, dtype=dtype)
    tensors = torch_copy(net, torch)
    opt = AdamW(net, lr=1e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=weight_decay)
    torch_opt = torch.optim.AdamW(
        torch_groups(tensors, weight_decay), lr=1e-3, betas=(0.8, 0.99), eps=1e-6
    )
    lrs = [1e-2 * (step + 1) / 20 for step in range(20)]  # a warmup, set before every step
    # "norm" gets no gradient on two steps: both skip it, and its own step count lags.
    grads = gradients(20, dtype=dtype, skip={(3, "norm"), (4, "norm")})
    run_both(net, opt, tensors, torch_opt, grads, lrs)
    assert opt.state["step"] == {"embed": 20, "w_in": 20, "b_in": 20, "norm": 18, "w_out": 20}
    for name, t in tensors.items():
        for key in ("exp_avg", "exp_avg_sq"):
            expected = torch_opt.state[t][key].numpy()
            np.testing.assert_allclose(opt.state[key][name], expected, **MOMENT_TOLERANCE[dtype])


def test_adamw_on_a_plain_list_decays_every_parameter_like_torch():
    torch = _torch()
    net = Weights(seed=2)
    tensors = torch_copy(net, torch)
    opt = AdamW(net.parameters(), lr=1e-2, weight_decay=0.5)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["names"] == ["0", "1", "2", "3", "4"]
    torch_opt = torch.optim.AdamW(list(tensors.values()), lr=1e-2, weight_decay=0.5)
    run_both(net, opt, tensors, torch_opt, gradients(20, seed=3), [1e-2] * 20)


def test_adamw_param_groups_with_their_own_settings_match_torch():
    torch = _torch()
    net = Weights(seed=4)
    tensors = torch_copy(net, torch)
    named = dict(net.named_parameters())
    opt = AdamW(
        [
            {"params": [(n, named[n]) for n in ("embed", "w_in")], "betas": (0.5, 0.9)},
            {"params": [(n, named[n]) for n in ("b_in", "norm", "w_out")], "eps": 1e-3},
        ],
        lr=3e-3,
        weight_decay=0.2,
    )
    torch_opt = torch.optim.AdamW(
        [
            {"params": [tensors["embed"], tensors["w_in"]], "betas": (0.5, 0.9)},
            {"params": [tensors[n] for n in ("b_in", "norm", "w_out")], "eps": 1e-3},
        ],
        lr=3e-3,
        weight_decay=0.2,
    )
    lrs = [(3e-3, 1e-2 / (1 + step)) for step in range(10)]
    run_both(net, opt, tensors, torch_opt, gradients(10, seed=5), lrs)


def test_in_place_step_equals_the_pure_update():
    """The flat in-place passes and the plain-array definition compute the same step."""
    net = Weights(seed=6)
    opt = AdamW(net, lr=1e-2, weight_decay=0.1)
    params = {n: p.numpy().copy() for n, p in net.named_parameters()}
    state = opt.init_state(params)
    for grad in gradients(5, seed=7):
        for name, p in net.named_parameters():
            p.grad = grad[name]
        opt.step()
        params, state = opt.update(params, grad, state)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.numpy(), params[name], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(
            opt.state["exp_avg_sq"][name], state["exp_avg_sq"][name], rtol=1e-5
        )
    assert state["step"] == opt.state["step"]


# --- SGD --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings",
    [
        dict(momentum=0.0),
        dict(momentum=0.9),
        dict(momentum=0.9, nesterov=True, weight_decay=0.1),
        dict(momentum=0.5, dampening=0.3, weight_decay=0.05),
    ],
)
def test_sgd_matches_torch_over_20_steps(settings):
    torch = _torch()
    net = Weights(seed=8)
    tensors = torch_copy(net, torch)
    opt = SGD(net, lr=0.1, **settings)
    groups = torch_groups(tensors, settings.get("weight_decay", 0.0))
    other = {k: v for k, v in settings.items() if k != "weight_decay"}
    torch_opt = torch.optim.SGD(groups, lr=0.1, **other)
    grads = gradients(20, seed=9, skip={(0, "w_out"), (6, "b_in")})
    run_both(net, opt, tensors, torch_opt, grads, [0.1 / (1 + s) for s in range(20)])


# --- under JAX --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda net: AdamW(net, lr=0.0, weight_decay=0.1),
        lambda net: SGD(net, lr=0.0, momentum=0.9, weight_decay=0.1),
    ],
)
def test_jitted_pure_update_under_jax_equals_the_eager_numpy_step(make):
    jax = pytest.importorskip("jax")
    grads = gradients(8, seed=10)
    lrs = [1e-2 * (s + 1) / 8 for s in range(8)]
    net = Weights(seed=11)
    opt = make(net)
    for grad, lr in zip(grads, lrs):
        opt.lr = lr
        for name, p in net.named_parameters():
            p.grad = grad[name]
        opt.step()
    with tinyllm.use_backend("jax"):
        jax_net = Weights(seed=11)
        jax_opt = make(jax_net)
        params = {n: p.data for n, p in jax_net.named_parameters()}
        state = jax_opt.init_state(params)
        update = jax.jit(jax_opt.update)
        for grad, lr in zip(grads, lrs):
            jax_grad = {n: jax.numpy.asarray(g) for n, g in grad.items()}
            params, state = update(params, jax_grad, state, lr)
    assert isinstance(params["embed"], jax.Array)
    for name, p in net.named_parameters():
        np.testing.assert_allclose(np.asarray(params[name]), p.numpy(), rtol=1e-6, atol=1e-7)
    assert jax_opt.state_dict(state)["step"] == opt.state["step"]


def test_eager_step_on_the_jax_backend_equals_numpy():
    jax = pytest.importorskip("jax")
    grads = gradients(5, seed=12, skip={(1, "b_in")})
    results = {}
    for backend in ("numpy", "jax"):
        with tinyllm.use_backend(backend):
            net = Weights(seed=13)
            opt = AdamW(net, lr=1e-2)
            for grad in grads:
                for name, p in net.named_parameters():
                    p.grad = None if grad[name] is None else net.embed.backend.asarray(grad[name])
                opt.step()
            results[backend] = {n: p.numpy() for n, p in net.named_parameters()}
            results[backend + " state"] = opt.state_dict()
    assert isinstance(net.embed.data, jax.Array)
    for name in SHAPES:
        np.testing.assert_allclose(
            results["jax"][name], results["numpy"][name], rtol=1e-6, atol=1e-7
        )
    assert results["jax state"]["step"] == results["numpy state"]["step"]


# --- checkpoints ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [lambda net: AdamW(net, lr=1e-2, weight_decay=0.1), lambda net: SGD(net, lr=0.1, momentum=0.9)],
)
def test_state_dict_round_trip_continues_exactly(make):
    grads = gradients(10, seed=14, skip={(2, "norm")})

    def steps(net, opt, grads):
        for grad in grads:
            for name, p in net.named_parameters():
                p.grad = grad[name]
            opt.step()

    straight = Weights(seed=15)
    steps(straight, make(straight), grads)

    first = Weights(seed=15)
    opt = make(first)
    steps(first, opt, grads[:5])
    saved_weights = {n: p.numpy().copy() for n, p in first.named_parameters()}
    saved = opt.state_dict()
    steps(first, opt, grads[5:6])  # the saved copy must not change with later steps
    assert all(isinstance(s, int) for s in saved["step"].values())

    resumed = Weights(seed=99).load_state_dict(saved_weights)
    resumed_opt = make(resumed).load_state_dict(saved)
    steps(resumed, resumed_opt, grads[5:])
    for name, p in straight.named_parameters():
        np.testing.assert_array_equal(dict(resumed.named_parameters())[name].numpy(), p.numpy())


def test_load_state_dict_names_what_does_not_match():
    net = Weights()
    opt = AdamW(net)
    good = opt.state_dict()
    with pytest.raises(KeyError, match=r"keys missing \['exp_avg_sq'\], unexpected \['momentum"):
        opt.load_state_dict(
            {"step": good["step"], "exp_avg": good["exp_avg"], "momentum_buffer": {}}
        )
    bad = {**good, "exp_avg": {**good["exp_avg"], "extra": np.zeros(3)}}
    del bad["exp_avg"]["norm"]
    with pytest.raises(
        KeyError, match=r"'exp_avg' names missing \['norm'\], unexpected \['extra'\]"
    ):
        opt.load_state_dict(bad)
    bad = {**good, "exp_avg_sq": {**good["exp_avg_sq"], "w_in": np.zeros((16, 8))}}
    with pytest.raises(
        ValueError, match=r"exp_avg_sq of w_in has shape \(16, 8\), expected \(8, 16\)"
    ):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"step of embed is -1, expected an int >= 0"):
        opt.load_state_dict({**good, "step": {**good["step"], "embed": -1}})
    opt.load_state_dict(good)  # the failed loads changed nothing


# --- bad settings -----------------------------------------------------------------------
def test_bad_settings_name_the_bad_value():
    net = Weights()
    with pytest.raises(ValueError, match=r"AdamW: lr must be a number >= 0, got -0.1"):
        AdamW(net, lr=-0.1)
    with pytest.raises(
        ValueError, match=r"betas must be two numbers in \[0, 1\), got \(0.9, 1.0\)"
    ):
        AdamW(net, betas=(0.9, 1.0))
    with pytest.raises(
        ValueError, match=r"betas must be two numbers in \[0, 1\), got \(-0.1, 0.9\)"
    ):
        AdamW(net, betas=(-0.1, 0.9))
    with pytest.raises(ValueError, match=r"eps must be a number >= 0, got -1"):
        AdamW(net, eps=-1)
    with pytest.raises(ValueError, match=r"param group 0 has unknown keys \['momentum'\]"):
        AdamW([{"params": [net.embed], "momentum": 0.9}])
    with pytest.raises(ValueError, match=r"param group 1 has unknown keys none and no params"):
        AdamW([{"params": [net.embed]}, {"lr": 0.1}])
    with pytest.raises(ValueError, match=r"parameter 1 appears more than once"):
        AdamW([net.embed, net.embed])
    with pytest.raises(TypeError, match=r"got a list of ndarray"):
        AdamW([np.zeros(3)])
    with pytest.raises(ValueError, match=r"SGD: nesterov in param group 0 needs momentum > 0"):
        SGD(net, nesterov=True)
    opt = AdamW(net)
    with pytest.raises(ValueError, match=r"lr must be a number >= 0, got nan"):
        opt.lr = float("nan")
    opt.param_groups[1]["lr"] = "fast"
    with pytest.raises(ValueError, match=r"lr in param group 1 must be a number >= 0, got 'fast'"):
        opt.step()
    opt.param_groups[1]["lr"] = 0.5
    with pytest.raises(ValueError, match=r"different learning rates \[0.001, 0.5\]"):
        _ = opt.lr
    sgd = SGD(net, lr=0.1)
    sgd.param_groups[0]["momentum"] = 0.9
    with pytest.raises(ValueError, match=r"momentum=0.9, but the optimizer was made with none"):
        sgd.step()
    opt.param_groups[1]["lr"] = 0.1
    net.norm.grad = np.ones(3, np.float32)
    with pytest.raises(
        ValueError, match=r"AdamW.step: the gradient of norm has shape \(3,\), expected \(8,\)"
    ):
        opt.step()
    with pytest.raises(KeyError, match=r"update: no parameters named \['head'\]"):
        opt.update({"head": np.zeros(2)}, {"head": np.zeros(2)}, {})


def test_frozen_parameters_are_left_out_and_tied_ones_counted_once():
    class Tied(Module):
        def __init__(self):
            self.embed = Embedding(5, 4, seed=0)
            self.norm = RMSNorm(4)
            self.proj = Linear(4, 4, seed=1)
            self.head = self.embed.weight

    net = Tied()
    net.proj.freeze()
    opt = AdamW(net)
    assert [g["names"] for g in opt.param_groups] == [["embed.weight"], ["norm.weight"]]
    assert set(opt.state["exp_avg"]) == {"embed.weight", "norm.weight"}
    with pytest.raises(ValueError, match=r"got no parameters to optimize \(frozen ones"):
        AdamW(net.proj)


def test_a_step_without_gradients_changes_nothing_and_zero_grad_clears_them():
    net = Weights()
    before = {n: p.numpy().copy() for n, p in net.named_parameters()}
    opt = AdamW(net, lr=1.0)
    opt.step()
    assert opt.state["step"] == dict.fromkeys(SHAPES, 0)
    for name, p in net.named_parameters():
        np.testing.assert_array_equal(p.numpy(), before[name])
        p.grad = np.ones(p.shape, np.float32)
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    assert "AdamW(" in repr(opt) and "weight_decay=0.0" in repr(opt)


# --- gradient clipping ------------------------------------------------------------------
@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clips, and leaves the gradients alone
def test_clip_grad_norm_matches_torch(max_norm):
    torch = _torch()
    net = Weights()
    tensors = torch_copy(net, torch)
    for name, grad in gradients(1, seed=16, skip={(0, "norm")})[0].items():
        dict(net.named_parameters())[name].grad = grad
        tensors[name].grad = None if grad is None else torch.tensor(grad)
    norm = clip_grad_norm(net, max_norm)
    expected = torch.nn.utils.clip_grad_norm_(list(tensors.values()), max_norm)
    assert float(norm) == pytest.approx(float(expected), rel=1e-6)
    for name, p in net.named_parameters():
        if p.grad is None:
            assert tensors[name].grad is None
            continue
        np.testing.assert_allclose(p.grad, tensors[name].grad.numpy(), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r"max_norm must be a number > 0, got 0"):
        clip_grad_norm(net, 0)


def test_clip_grads_is_pure_and_traces_under_jax():
    jax = pytest.importorskip("jax")
    grads = {n: g for n, g in gradients(1, seed=17)[0].items()}
    clipped, norm = clip_grads(grads, 1.0)
    total = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    assert float(norm) == pytest.approx(total, rel=1e-6)
    clipped_norm = np.sqrt(sum((c**2).sum() for c in clipped.values()))
    assert float(clipped_norm) == pytest.approx(1.0, rel=1e-5)
    jax_grads = {n: jax.numpy.asarray(g) for n, g in grads.items()}
    jax_clipped, jax_norm = jax.jit(clip_grads, static_argnums=1)(jax_grads, 1.0)
    assert float(jax_norm) == pytest.approx(total, rel=1e-6)
    for name in grads:
        np.testing.assert_allclose(np.asarray(jax_clipped[name]), clipped[name], rtol=1e-6)


# --- schedules --------------------------------------------------------------------------
def reference_cosine(step, max_lr, warmup, total, min_lr):
    """nanoGPT's get_lr, with the warmup written as max_lr * (step + 1) / (warmup + 1)."""
    if step < warmup:
        return max_lr * (step + 1) / (warmup + 1)
    if step > total:
        return min_lr
    ratio = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def test_schedules_warm_up_to_max_lr_and_decay_to_min_lr():
    max_lr, min_lr, warmup, total = 6e-4, 6e-5, 10, 100
    for schedule in (warmup_cosine, warmup_linear):
        lrs = [schedule(s, max_lr, warmup, total, min_lr) for s in range(total + 20)]
        assert lrs[warmup] == max_lr and lrs[total] == pytest.approx(min_lr)
        assert all(a < b for a, b in zip(lrs[: warmup + 1], lrs[1 : warmup + 1]))  # rises
        assert all(a > b for a, b in zip(lrs[warmup:total], lrs[warmup + 1 : total + 1]))  # falls
        assert set(lrs[total + 1 :]) == {min_lr} and lrs[0] > 0
    for s in range(total + 20):
        expected = reference_cosine(s, max_lr, warmup, total, min_lr)
        assert warmup_cosine(s, max_lr, warmup, total, min_lr) == pytest.approx(expected, rel=1e-12)
    assert warmup_linear(55, 1.0, 10, 100) == pytest.approx(0.5)
    assert [constant(s, 1.0, warmup_steps=3) for s in (0, 3, 10_000)] == [0.25, 1.0, 1.0]
    assert warmup_cosine(5, 1.0, 5, 5) == 1.0  # warmup only: max_lr at the end
    assert get_schedule("linear") is warmup_linear


def test_schedules_reject_bad_arguments_by_name():
    with pytest.raises(ValueError, match=r"warmup_steps=200 is more than total_steps=100"):
        warmup_cosine(0, 1e-3, warmup_steps=200, total_steps=100)
    with pytest.raises(ValueError, match=r"warmup_linear: step must be an int >= 0, got -1"):
        warmup_linear(-1, 1e-3, 10, 100)
    with pytest.raises(ValueError, match=r"min_lr=0.1 is above max_lr=0.01"):
        warmup_cosine(0, 0.01, 10, 100, min_lr=0.1)
    with pytest.raises(ValueError, match=r"max_lr must be a number >= 0, got -1"):
        constant(0, -1)
    with pytest.raises(ValueError, match=r"unknown schedule 'step'; expected one of cosine"):
        get_schedule("step")


# --- gradient accumulation --------------------------------------------------------------
def test_micro_batches_give_the_same_update_as_one_big_batch():
    rng = np.random.default_rng(18)
    x = rng.standard_normal((8, 5)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    results = []
    for micro in (1, 4):  # one batch of 8, then 4 micro-batches of 2
        model = Linear(5, 3, seed=19)
        opt = AdamW(model, lr=1e-2)
        for _ in range(3):
            opt.zero_grad()
            size = 8 // micro
            batches = [(x[i : i + size], y[i : i + size]) for i in range(0, 8, size)]
            loss = accumulate_gradients(
                lambda xb, yb, model=model: F.cross_entropy(model(xb), yb), batches
            )
            opt.step()
        grads = [p.grad.copy() for p in model.parameters()]
        results.append((loss, grads, [p.numpy() for p in model.parameters()]))
    (loss_a, grads_a, weights_a), (loss_b, grads_b, weights_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-6)
    for a, b in zip(grads_a + weights_a, grads_b + weights_b):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
