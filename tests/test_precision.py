"""Mixed precision: the compute-dtype policy, bfloat16 / float16 products that sum and return
float32 (matmul and attention, forward and backward), attention through a library's fused
kernel (cuDNN's under JAX on a GPU), float32 master weights and AdamW moments through a
compiled JAX run, dynamic loss scaling, generation's ``dtype`` and the
``--dtype`` flags; NumPy and CuPy refusing what they cannot do.

Tests named ``jax`` run on the CPU, and on a GPU where JAX sees one; those named ``cupy``
need CuPy and a GPU and skip without them.
"""

import re
import types

import numpy as np
import pytest

import tinyllm
from tinyllm.backend import BackendUnavailable, get_backend
from tinyllm.backend.precision import check_compute_dtype
from tinyllm.data import CharVocab, RandomBatches
from tinyllm.functional import attention, scaled_dot_product_attention
from tinyllm.infer import generate
from tinyllm.infer.decoder import CachedDecoder
from tinyllm.models import Transformer, get_preset
from tinyllm.nn import Module, Parameter
from tinyllm.train import TrainConfig, Trainer, language_model_loss, read_metrics
from tinyllm.train import step as step_module
from tinyllm.train.loss_scaling import LossScaler

TOKENS = np.tile(np.arange(16), 250)  # a pattern a small model starts learning at once
SMALL = dict(n_layer=1, d_model=32, n_head=4, n_kv_head=2, context_length=16)


def has_backend(name):
    try:
        get_backend(name)
    except BackendUnavailable:
        return False
    return True


def need(name):
    if not has_backend(name):
        pytest.skip(f"the {name!r} backend cannot run here")


def close(actual, expected, tol):
    """Equal to within ``tol`` of the largest entry of ``expected``: a 16-bit product's error
    is relative to the size of the sums, not of each entry."""
    actual, expected = tinyllm.to_numpy(actual), tinyllm.to_numpy(expected)
    assert actual.dtype == np.float32
    error = np.abs(actual - expected).max() / np.abs(expected).max()
    assert error < tol, f"relative error {error:.2e} >= {tol}"
    return error


def tolerance(dtype):  # bfloat16 keeps 8 significant bits, float16 11
    return {"bfloat16": 2e-2, "float16": 4e-3}[dtype]


# --- the policy -------------------------------------------------------------------------------
def test_the_policy_holds_inside_its_block_only():
    assert tinyllm.compute_dtype() == "float32"
    with tinyllm.precision("bfloat16"):
        assert tinyllm.compute_dtype() == "bfloat16"
        with tinyllm.precision("float16"):
            assert tinyllm.compute_dtype() == "float16"
        assert tinyllm.compute_dtype() == "bfloat16"
    with pytest.raises(RuntimeError), tinyllm.precision("float16"):
        raise RuntimeError("an error inside the block")
    assert tinyllm.compute_dtype() == "float32"
    with pytest.raises(ValueError, match="unknown compute dtype 'bf16'; expected one of float32"):
        tinyllm.precision("bf16").__enter__()


def test_numpy_refuses_16_bit_products_saying_what_it_supports():
    a = tinyllm.Tensor(np.ones((2, 3), np.float32))
    message = "'bfloat16' is not available on the 'numpy' backend, which computes in float32 only"
    with tinyllm.precision("bfloat16"), pytest.raises(ValueError, match=message):
        a @ a.T
    with tinyllm.precision("float32"):  # float32 is NumPy's: unchanged, no copies
        np.testing.assert_array_equal((a @ a.T).numpy(), np.full((2, 2), 3, np.float32))
    model = Transformer(get_preset("tiny", **SMALL), seed=0)
    with pytest.raises(ValueError, match="'float16' is not available on the 'numpy' backend"):
        Trainer(model, TrainConfig(steps=2, dtype="float16"), iter([]))
    with pytest.raises(ValueError, match="'bfloat16' is not available on the 'numpy' backend"):
        generate(model, [[1, 2]], 2, dtype="bfloat16")
    with pytest.raises(ValueError, match="TrainConfig: unknown dtype 'half'; expected one of"):
        TrainConfig(dtype="half")


def test_cupy_refuses_bfloat16_suggesting_float16():
    cupy_like = types.SimpleNamespace(name="cupy")  # the rule alone, without a GPU
    check_compute_dtype(cupy_like, "float16")
    with pytest.raises(ValueError, match="CuPy has no bfloat16 dtype of its own; use float16"):
        check_compute_dtype(cupy_like, "bfloat16")


# --- the products, under JAX --------------------------------------------------------------------
MATMUL_SHAPES = {
    "matrices": ((5, 8), (8, 3)),
    "activations x weight": ((2, 5, 8), (8, 3)),  # the folded (B*T, C) x (C, D) path
    "batched, broadcast": ((2, 1, 5, 8), (3, 8, 4)),
    "vector": ((8,), (8, 3)),
}


def run_matmul(a, b, dtype, seed=0):
    """``a @ b`` under ``dtype`` with a random incoming gradient: (out, grad_a, grad_b)."""
    a = tinyllm.Tensor(a, requires_grad=True)
    b = tinyllm.Tensor(b, requires_grad=True)
    with tinyllm.precision(dtype):
        out = a @ b
    grad = np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32)
    (out * tinyllm.Tensor(grad).to(out.backend.name)).sum().backward()  # backward outside
    return out.data, a.grad, b.grad


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("shapes", MATMUL_SHAPES.values(), ids=MATMUL_SHAPES.keys())
def test_jax_matmul_in_16_bits_matches_float32_and_returns_float32(shapes, dtype):
    pytest.importorskip("jax")
    rng = np.random.default_rng(1)
    a, b = (rng.standard_normal(shape).astype(np.float32) for shape in shapes)
    with tinyllm.use_backend("jax"):
        a, b = tinyllm.Tensor(a).data, tinyllm.Tensor(b).data  # moved to JAX
        low = run_matmul(a, b, dtype)
        full = run_matmul(a, b, "float32")
    errors = [close(x, ref, tolerance(dtype)) for x, ref in zip(low, full)]
    assert max(errors) > 1e-5  # rounded to 16 bits indeed, not float32 in disguise


def test_jax_matmul_keeps_its_16_bit_inputs_for_backward():
    pytest.importorskip("jax")
    with tinyllm.use_backend("jax"):
        a = tinyllm.Tensor(np.ones((4, 8), np.float32), requires_grad=True)
        with tinyllm.precision("bfloat16"):
            out = a @ a.T
        _, ctx, _ = out._node
        assert [str(x.dtype) for x in ctx.saved] == ["bfloat16", "bfloat16"]  # half the memory
        assert str(out.dtype) == "float32"


@pytest.mark.parametrize("dtype, precision", [("float32", "HIGHEST"), ("bfloat16", "DEFAULT")])
def test_jax_asks_full_precision_for_float32_products_only(dtype, precision):
    """float32 products ask XLA for float32 proper (no TF32 on a GPU, ``jax_backend.py``);
    16-bit ones keep the default, so that XLA runs them as 16-bit products."""
    jax = pytest.importorskip("jax")
    with tinyllm.use_backend("jax"):
        a = tinyllm.Tensor(np.ones((4, 8), np.float32)).data

        def product(a):
            with tinyllm.precision(dtype):
                return (tinyllm.Tensor(a) @ tinyllm.Tensor(a.T)).data

        program = jax.jit(product).lower(a).as_text()
    assert re.findall(r"precision = \[(\w+), (\w+)\]", program) == [(precision, precision)]


def test_jax_bfloat16_matmul_rounds_its_inputs_as_torch_does():
    """Oracle: torch rounds float32 to bfloat16 the same way (to nearest, ties to even), and
    its bfloat16 matmul is our float32 result rounded once more."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("jax")
    rng = np.random.default_rng(2)
    a = rng.standard_normal((6, 64)).astype(np.float32)
    b = rng.standard_normal((64, 5)).astype(np.float32)
    with tinyllm.use_backend("jax"), tinyllm.precision("bfloat16"):
        ours = np.array(tinyllm.to_numpy((tinyllm.Tensor(a) @ tinyllm.Tensor(b)).data))
    ta, tb = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
    # bf16 x bf16 products are exact in float32: only the order of the sums may differ
    np.testing.assert_allclose(ours, (ta.float() @ tb.float()).numpy(), rtol=1e-5, atol=1e-5)
    torch_bf16 = (ta @ tb).float().numpy()  # torch's own bfloat16 matmul: rounded output
    ours_bf16 = torch.from_numpy(ours).bfloat16().float().numpy()
    ulp = np.abs(torch_bf16) * 2.0**-7  # one unit in bfloat16's last place, at most
    assert np.all(np.abs(ours_bf16 - torch_bf16) <= ulp + 1e-6)


def run_attention(q, k, v, dtype, mask=None, seed=0, grad=None):
    """Attention's output and the gradients of q, k and v, backward from ``grad`` (random
    numbers drawn from ``seed`` unless given)."""
    q, k, v = (tinyllm.Tensor(x, requires_grad=True) for x in (q, k, v))
    with tinyllm.precision(dtype):
        out = scaled_dot_product_attention(q, k, v, mask=mask)
        if grad is None:
            grad = np.random.default_rng(seed).standard_normal(out.shape).astype(np.float32)
            grad = tinyllm.Tensor(grad).to(out.backend.name).data
        (out * tinyllm.Tensor(grad)).sum().backward()
    return out.data, q.grad, k.grad, v.grad


def compiled_attention(q, k, v, grad, dtype):
    """``run_attention`` compiled by ``jax.jit``, and the text of the program it lowers to."""
    import jax

    compiled = jax.jit(lambda q, k, v, grad: run_attention(q, k, v, dtype, grad=grad))
    return compiled(q, k, v, grad), compiled.lower(q, k, v, grad).as_text()


@pytest.mark.parametrize("query_blocks", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_jax_attention_in_16_bits_matches_float32_and_returns_float32(
    dtype, query_blocks, monkeypatch
):
    """With ``query_blocks`` the 6 queries take long causal attention's blocked path."""
    pytest.importorskip("jax")
    if query_blocks:
        monkeypatch.setattr(attention, "MIN_QUERY_BLOCK", 1)
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 4, 6, 16)).astype(np.float32)  # grouped-query: 4 heads over 2
    k, v = (rng.standard_normal((2, 2, 6, 16)).astype(np.float32) for _ in range(2))
    mask = np.ones((2, 1, 1, 6), bool)
    mask[0, ..., 0] = False  # a padded key in row 0
    with tinyllm.use_backend("jax"):
        moved = [tinyllm.Tensor(x).data for x in (q, k, v)]
        low = run_attention(*moved, dtype, mask=mask)
        full = run_attention(*moved, "float32", mask=mask)
    errors = [close(x, ref, tolerance(dtype)) for x, ref in zip(low, full)]
    assert max(errors) > 1e-5


def spy_library_attention(monkeypatch, kernel):
    """Set the JAX backend's attention kernel to ``kernel``; returns the list of the
    implementations ``jax.nn.dot_product_attention`` is then called with."""
    import jax

    calls, library = [], jax.nn.dot_product_attention

    def spy(*args, implementation=None, **kwargs):
        calls.append(implementation)
        return library(*args, implementation=implementation, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    monkeypatch.setattr(get_backend("jax"), "flash_kernel", kernel)
    monkeypatch.setattr(get_backend("jax"), "_kernel_runs", {})  # nothing known yet
    return calls


def grouped_qkv(T=8):
    """q (2, 4, T, 16), k and v (2, 2, T, 16) and a gradient for the output, on JAX."""
    rng = np.random.default_rng(3)
    shapes = [(2, 4, T, 16), (2, 2, T, 16), (2, 2, T, 16), (2, 4, T, 16)]  # grouped-query
    with tinyllm.use_backend("jax"):
        return [tinyllm.Tensor(rng.standard_normal(s).astype(np.float32)).data for s in shapes]


def test_jax_attention_through_the_library_kernel_matches_float32(monkeypatch):
    """The library-kernel path (here jax.nn's XLA kernel, which a CPU has; cuDNN's on a GPU):
    the head layout, grouped-query heads, scale and backward, compiled, against tinyllm's own
    attention in float32. Only unmasked causal self-attention takes it. (bfloat16 only: in
    float16 jax.nn's XLA kernel asks for a float16 product summed in float32, which XLA's CPU
    dot refuses.)"""
    pytest.importorskip("jax")
    dtype = "bfloat16"
    q, k, v, grad = grouped_qkv()
    with tinyllm.use_backend("jax"):
        full = run_attention(q, k, v, "float32", grad=grad)
    calls = spy_library_attention(monkeypatch, "xla")
    with tinyllm.use_backend("jax"):
        low, _ = compiled_attention(q, k, v, grad, dtype)
        assert calls == ["xla", "xla"]  # compiled alone once (does it run?), then in the step
        errors = [close(x, ref, tolerance(dtype)) for x, ref in zip(low, full)]
        assert max(errors) > 1e-5  # it did run in 16 bits
        run_attention(q, k, v, dtype, mask=np.ones((2, 1, 1, 8), bool))  # a mask: its own
        run_attention(q, k, v, "float32")  # float32: its own
    assert calls == ["xla", "xla"]


@pytest.mark.parametrize(
    "kernel, dtype",
    [("cudnn", "bfloat16"), ("xla", "float16")],
    ids=["refused-while-tracing", "refused-while-compiling"],
)
def test_jax_attention_where_the_kernel_cannot_run_says_so_and_computes_it_itself(
    monkeypatch, kernel, dtype
):
    """A CPU has no cuDNN (jax refuses as it traces), and XLA's CPU dot no float16 product
    summed in float32 (XLA refuses as it compiles): either way, a warning and tinyllm's own
    attention, the same numbers as without the kernel."""
    jax = pytest.importorskip("jax")
    if jax.default_backend() == "gpu":
        pytest.skip("JAX sees a GPU here, where both kernels may well run")
    moved = grouped_qkv()[:3]
    with tinyllm.use_backend("jax"):
        own = run_attention(*moved, dtype)
    calls = spy_library_attention(monkeypatch, kernel)
    with tinyllm.use_backend("jax"):
        with pytest.warns(UserWarning, match=f"the '{kernel}' kernel cannot run .* in {dtype}"):
            fallback = run_attention(*moved, dtype)
        assert run_attention(*moved, dtype) is not None  # known now: no second try, no warning
    assert calls == [kernel]
    for x, ref in zip(fallback, own):
        np.testing.assert_array_equal(tinyllm.to_numpy(x), tinyllm.to_numpy(ref))


def test_jax_chooses_cudnn_attention_on_a_gpu_only():
    jax = pytest.importorskip("jax")
    backend = get_backend("jax")
    assert backend.flash_kernel == "auto"
    q, k, v, _ = grouped_qkv()
    taken = backend.flash_attention(q, k, v, 0.25, jax.numpy.bfloat16) is not None
    assert taken == (jax.default_backend() == "gpu")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_jax_gpu_training_attention_runs_cudnn_flash_attention(dtype):
    """On an NVIDIA GPU, a 16-bit step's attention is cuDNN's fused kernel (custom calls to
    ``__cudnn$fmhaSoftmax`` and its backward in the program), and agrees with tinyllm's own
    in float32."""
    jax = pytest.importorskip("jax")
    if jax.default_backend() != "gpu":
        pytest.skip("needs JAX on a GPU (cuDNN's attention kernel)")
    q, k, v, grad = grouped_qkv(T=128)
    with tinyllm.use_backend("jax"):
        full = run_attention(q, k, v, "float32", grad=grad)
        low, program = compiled_attention(q, k, v, grad, dtype)
    assert "__cudnn$fmhaSoftmax" in program and "__cudnn$fmhaSoftmaxBackward" in program
    for x, ref in zip(low, full):
        close(x, ref, tolerance(dtype))


# --- training ------------------------------------------------------------------------------------
def train(out, dtype, backend, loss_fn=language_model_loss):
    """A short run: the trainer and its losses, step by step. (A float32 reference runs on
    NumPy, eagerly: the compiled JAX step is checked against it in test_train.py, and each
    compilation here costs tens of seconds on a busy CPU.)"""
    config = TrainConfig(
        steps=12, batch_size=8, warmup_steps=2, lr=1e-2, eval_interval=0,
        log_interval=1, checkpoint_interval=0, progress=False, dtype=dtype,
    )  # fmt: skip
    with tinyllm.use_backend(backend):
        model = Transformer(get_preset("tiny", **SMALL), seed=0)
        batches = RandomBatches(TOKENS, config.micro_batch_size, 16, seed=0)
        trainer = Trainer(model, config, batches, out_dir=out / dtype, loss_fn=loss_fn)
        trainer.fit()
    rows = read_metrics(out / dtype / "metrics.jsonl")
    return trainer, np.array([row["loss"] for row in rows])


def spy_dtype(seen):
    """A language-model loss that notes the compute dtype in force when it runs (traces)."""

    def loss_fn(model, batch):
        seen.append(tinyllm.compute_dtype())
        return language_model_loss(model, batch)

    return loss_fn


def test_jax_bfloat16_training_follows_float32_with_float32_master_weights(tmp_path):
    pytest.importorskip("jax")
    seen = []
    low, low_losses = train(tmp_path, "bfloat16", "jax", loss_fn=spy_dtype(seen))
    _, full_losses = train(tmp_path, "float32", "numpy")
    assert seen and set(seen) == {"bfloat16"}  # the compiled step was traced under the policy
    assert tinyllm.compute_dtype() == "float32"
    np.testing.assert_allclose(low_losses, full_losses, rtol=0.02)
    assert low_losses[-1] < low_losses[0] - 1.0  # it learns
    assert not np.array_equal(low_losses, full_losses)
    assert {str(p.dtype) for p in low.model.parameters()} == {"float32"}
    moments = [*low.opt_state["exp_avg"].values(), *low.opt_state["exp_avg_sq"].values()]
    assert {str(m.dtype) for m in moments} == {"float32"}
    assert low.loss_scaler is None  # bfloat16 needs no loss scaling


def test_jax_bfloat16_training_through_the_library_kernel_follows_float32(tmp_path, monkeypatch):
    """The compiled step, donated buffers and all, with attention through jax.nn's kernel."""
    pytest.importorskip("jax")
    calls = spy_library_attention(monkeypatch, "xla")
    _, low_losses = train(tmp_path, "bfloat16", "jax")
    _, full_losses = train(tmp_path, "float32", "numpy")
    assert calls and set(calls) == {"xla"}
    np.testing.assert_allclose(low_losses, full_losses, rtol=0.02)
    assert low_losses[-1] < low_losses[0] - 1.0  # it learns


def test_jax_float16_training_scales_its_loss_and_follows_float32(tmp_path):
    pytest.importorskip("jax")
    low, low_losses = train(tmp_path, "float16", "jax")
    _, full_losses = train(tmp_path, "float32", "numpy")
    np.testing.assert_allclose(low_losses, full_losses, rtol=0.02)
    assert isinstance(low.loss_scaler, LossScaler) and low.loss_scaler.scale >= 2.0**15
    assert {str(p.dtype) for p in low.model.parameters()} == {"float32"}


# --- loss scaling -----------------------------------------------------------------------------------
def test_loss_scaler_halves_on_overflow_and_doubles_after_good_steps():
    scaler = LossScaler(growth_interval=3)
    assert scaler.scale == 2.0**16
    assert scaler.update(finite=False) is False and scaler.scale == 2.0**15
    assert [scaler.update(True) for _ in range(2)] == [True, True] and scaler.scale == 2.0**15
    assert scaler.update(True) and scaler.scale == 2.0**16  # the third good step in a row
    scaler.update(True)
    scaler.update(False)  # an overflow resets the count of good steps
    assert scaler.scale == 2.0**15
    scaler.update(True), scaler.update(True)
    assert scaler.scale == 2.0**15
    restored = LossScaler()
    restored.load_state_dict(scaler.state_dict())
    assert (restored.scale, restored.good_steps) == (2.0**15, 2)
    tiny = LossScaler(scale=2.0, min_scale=1.0)
    tiny.update(False)
    with pytest.raises(FloatingPointError, match="overflowed at every loss scale down to 1"):
        tiny.update(False)
    with pytest.raises(ValueError, match="backoff_factor=2 is out of range"):
        LossScaler(backoff_factor=2)


class Spike(Module):
    """A weight w that starts at 0 (see ``spike_loss``)."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(np.zeros(3, np.float32))


def spike_loss(model, batch):
    """Finite, but the gradient of w[0] is 2^50: times a loss scale of 2^78 or more it
    overflows float32 (largest 2^128), as float16's gradients overflow at smaller scales."""
    return ((model.w - 1.0) ** 2).sum() + model.w[0] * 2.0**50


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("backend", ["numpy", "jax", "jax-select"])
def test_trainer_skips_overflowing_steps_and_halves_the_scale(tmp_path, monkeypatch, backend):
    """In float32 (the scaler's rule does not depend on the dtype), an injected overflow: the
    scale falls from 2^80 to 2^77, where the gradient fits; a skipped step leaves w as it was,
    and after two good steps the scale doubles into overflow again. On NumPy the rule runs on
    the host after each step, on JAX inside the compiled step ("jax-select": kept as a GPU
    keeps a skipped step's arrays, by a select rather than the CPU's branch)."""
    if backend.startswith("jax"):
        pytest.importorskip("jax")
    if backend == "jax-select":
        monkeypatch.setattr(step_module, "skips_by_branch", lambda backend: False)
        backend = "jax"
    config = TrainConfig(
        steps=8, batch_size=1, warmup_steps=0, lr=1e-3, schedule="constant", eval_interval=0,
        log_interval=1, checkpoint_interval=0, progress=False, grad_clip=1.0,
    )  # fmt: skip
    model = Spike().to(backend)
    scaler = LossScaler(scale=2.0**80, growth_interval=2)
    trainer = Trainer(
        model, config, iter(lambda: 0, None), out_dir=tmp_path, loss_fn=spike_loss,
        loss_scaler=scaler,
    )  # fmt: skip
    trainer.fit()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [np.log2(row["loss_scale"]) for row in rows] == [80, 79, 78, 77, 77, 78, 77, 77]
    skipped = [not np.isfinite(row["grad_norm"]) for row in rows]
    assert skipped == [True, True, True, False, False, True, False, False]
    assert all(np.isfinite(row["loss"]) for row in rows)
    assert scaler.scale == 2.0**78
    # four steps taken, each moving w[0] by lr against its (clipped, constant) gradient
    np.testing.assert_allclose(model.w.numpy()[0], -4 * config.lr, rtol=1e-3)
    resumed = Trainer(
        Spike().to(backend), config.replace(steps=9), iter(lambda: 0, None), out_dir=tmp_path,
        loss_fn=spike_loss, loss_scaler=LossScaler(),
    )  # fmt: skip
    resumed.load(tmp_path / "checkpoints" / "step-000008")
    assert resumed.loss_scaler.state_dict() == scaler.state_dict()


# --- generation --------------------------------------------------------------------------------------
def test_jax_generation_runs_its_forwards_in_the_dtype_asked_for(monkeypatch):
    pytest.importorskip("jax")
    with tinyllm.use_backend("jax"):
        model = Transformer(get_preset("tiny", **SMALL), seed=0)
    seen = []
    forward = model.forward

    def spied(*args, **kwargs):
        seen.append(tinyllm.compute_dtype())
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", spied)
    out = generate(model, [[1, 2, 3]], 4, temperature=0, dtype="bfloat16")
    assert out.shape == (1, 7) and seen and set(seen) == {"bfloat16"}
    assert tinyllm.compute_dtype() == "float32"  # between and after the steps


def test_jax_decoder_compiles_once_per_dtype():
    """A compiled forward is kept per model and compute dtype: float32 after bfloat16 gets the
    float32 logits, not the program traced under bfloat16."""
    pytest.importorskip("jax")
    with tinyllm.use_backend("jax"):
        model = Transformer(get_preset("tiny", **SMALL), seed=0)
    ids = np.array([[1, 2, 3, 4]])
    full = CachedDecoder(model, 1)(ids)
    with tinyllm.precision("bfloat16"):
        low = CachedDecoder(model, 1)(ids)
    again = CachedDecoder(model, 1)(ids)
    np.testing.assert_array_equal(again, full)
    close(low, full, 2e-2)
    assert not np.array_equal(low, full)


def model_folder(path):
    CharVocab("abcdefgh \n").save(path)
    config = get_preset("tiny", vocab_size=10, n_layer=1, d_model=16, n_head=2)
    Transformer(config, seed=0).save_pretrained(path)
    return path


def test_generate_cli_passes_its_dtype_flag_to_generation(tmp_path, capsys):
    from tinyllm.cli import main

    folder = model_folder(tmp_path)
    args = ["generate", str(folder), "--prompt", "abc", "--tokens", "3", "--dtype"]
    assert main([*args, "float32"]) == 0
    assert capsys.readouterr().out.startswith("abc")
    assert main([*args, "bfloat16"]) == 2  # generation on NumPy refuses it
    assert "'bfloat16' is not available on the 'numpy' backend" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["chat", "serve", "speedrun"])
def test_chat_serve_and_speedrun_refuse_16_bits_on_numpy(command, tmp_path, capsys):
    if command == "serve":
        pytest.importorskip("fastapi")
    from tinyllm.cli import main

    folder = model_folder(tmp_path / "model")
    where = ["--out", str(tmp_path / "run")] if command == "speedrun" else [str(folder)]
    with tinyllm.use_backend("numpy"):  # speedrun: checked before the tokenizer is trained
        assert main([command, *where, "--dtype", "bfloat16"]) == 2
    assert "'bfloat16' is not available on the 'numpy' backend" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):
        main([command, *where, "--dtype", "half"])
    assert "invalid choice: 'half'" in capsys.readouterr().err


def product_dtypes(monkeypatch):
    """The dtypes matmuls cast their inputs to, noted as each product runs (None: float32)."""
    import tinyllm.functional.linalg as linalg

    seen, product_dtype = [], linalg.product_dtype

    def spied(backend):
        dtype = product_dtype(backend)
        seen.append(None if dtype is None else np.dtype(dtype).name)
        return dtype

    monkeypatch.setattr(linalg, "product_dtype", spied)
    return seen


def note_first_logits(engine, logits, key):
    """Keep in ``logits[key]`` the first logits ``engine`` samples from: the prompt's."""
    sample = engine._sample

    def noting(batch, rows):
        logits.setdefault(key, rows)
        return sample(batch, rows)

    engine._sample = noting


def test_jax_engine_runs_its_matmuls_in_the_dtype_asked_for(monkeypatch):
    """The serving engine (chat, serve) casts every matmul to bfloat16: its logits follow
    float32's within bfloat16's precision, and differ from them."""
    pytest.importorskip("jax")
    from tinyllm.infer.engine import Engine, SamplingParams

    with tinyllm.use_backend("jax"):
        model = Transformer(get_preset("tiny", **SMALL), seed=0)
    logits, seen = {}, product_dtypes(monkeypatch)
    for dtype in ("float32", "bfloat16"):
        engine = Engine(model, max_batch=1, num_blocks=4, block_size=4, dtype=dtype)
        note_first_logits(engine, logits, dtype)
        seen.clear()
        engine.generate([[1, 2, 3]], SamplingParams(max_tokens=1, temperature=0))  # eager: slow
        assert set(seen) == ({None} if dtype == "float32" else {"bfloat16"})
    close(logits["bfloat16"], logits["float32"], 2e-2)
    assert not np.array_equal(logits["bfloat16"], logits["float32"])
    assert tinyllm.compute_dtype() == "float32"


def test_chat_and_serve_give_their_dtype_flag_to_the_engine(tmp_path, monkeypatch):
    pytest.importorskip("jax")
    import tinyllm.infer.chat as chat
    from tinyllm.cli import main

    folder = model_folder(tmp_path)
    engines = []
    monkeypatch.setattr(chat, "ChatSession", lambda engine, *a, **k: engines.append(engine))
    monkeypatch.setattr(chat, "chat_loop", lambda session: 0)
    with tinyllm.use_backend("jax"):
        assert main(["chat", str(folder), "--dtype", "bfloat16"]) == 0
    if has_fastapi():
        import uvicorn

        monkeypatch.setattr(uvicorn, "run", lambda app, **k: engines.append(app.state.engine))
        with tinyllm.use_backend("jax"):
            assert main(["serve", str(folder), "--dtype", "bfloat16"]) == 0
    assert engines and all(engine.dtype == "bfloat16" for engine in engines)
    assert {engine.model.token_embedding.weight.backend.name for engine in engines} == {"jax"}


def has_fastapi():
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        return False
    return True


def test_speedrun_trains_every_stage_and_samples_in_its_dtype(tmp_path, monkeypatch):
    """Every stage's TrainConfig carries --dtype, and pretraining's samples use it: the
    recipes are stood in for (the training itself in bfloat16 is tested above)."""
    pytest.importorskip("jax")
    from importlib import import_module

    from tinyllm.cli import main

    # (the modules: tinyllm.recipes names its functions after them)
    pretrain_recipe = import_module("tinyllm.recipes.pretrain")
    speedrun = import_module("tinyllm.recipes.speedrun")

    trained, sampled = {}, []

    def stage(name):
        def recipe(config, train):
            trained[name] = train.dtype
            result = types.SimpleNamespace(stopped_by=None)
            return types.SimpleNamespace(result=result, out=tmp_path / name)

        return recipe

    for name in ("pretrain", "sft", "dpo"):
        monkeypatch.setattr(speedrun, name, stage(name))
    monkeypatch.setattr(speedrun, "write_report", lambda *a: tmp_path / "report.md")
    args = ["speedrun", "--out", str(tmp_path), "--backend", "jax", "--steps", "1"]
    assert main([*args, "--dtype", "bfloat16", "--no-progress"]) == 0
    assert trained == {"pretrain": "bfloat16", "sft": "bfloat16", "dpo": "bfloat16"}

    class Trainer:  # pretraining's samples: sample_fn as the Trainer calls it
        def __init__(self, model, train, batches, *, sample_fn, **kw):
            self.model, self.sample_fn = model, sample_fn

        def fit(self, resume):
            self.sample_fn(self.model)
            return types.SimpleNamespace(samples=[], step=0, steps_this_session=0)

    def generate(model, prompt, n, **kw):
        sampled.append(kw["dtype"])
        return np.asarray(prompt)

    monkeypatch.setattr(pretrain_recipe, "Trainer", Trainer)
    monkeypatch.setattr(pretrain_recipe, "generate", generate)
    pretrain_recipe.pretrain(
        pretrain_recipe.PretrainConfig(out=str(tmp_path / "pre"), samples=2),
        TrainConfig(steps=1, dtype="bfloat16"),
    )
    assert sampled == ["bfloat16", "bfloat16"]


def test_train_config_dtype_is_a_pretrain_flag(capsys):
    from tinyllm.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--dtype DTYPE the dtype of matmuls and attention" in text
    assert "one of: float32, bfloat16, float16" in text


# --- CuPy, on a GPU -------------------------------------------------------------------------------------
def test_cupy_float16_matmul_and_attention_match_float32():
    need("cupy")
    rng = np.random.default_rng(4)
    with tinyllm.use_backend("cupy"):
        for shapes in MATMUL_SHAPES.values():
            a, b = (tinyllm.Tensor(rng.standard_normal(s).astype(np.float32)).data for s in shapes)
            low, full = run_matmul(a, b, "float16"), run_matmul(a, b, "float32")
            for x, ref in zip(low, full):
                close(x, ref, tolerance("float16"))
        q = tinyllm.Tensor(rng.standard_normal((2, 4, 6, 16)).astype(np.float32)).data
        k, v = (tinyllm.Tensor(rng.standard_normal((2, 2, 6, 16)).astype(np.float32)).data
                for _ in range(2))  # fmt: skip
        for x, ref in zip(run_attention(q, k, v, "float16"), run_attention(q, k, v, "float32")):
            close(x, ref, tolerance("float16"))
        a = tinyllm.Tensor(np.ones((2, 2), np.float32))
        with tinyllm.precision("bfloat16"), pytest.raises(ValueError, match="use float16"):
            a @ a


def test_cupy_float16_training_follows_float32_with_loss_scaling(tmp_path):
    need("cupy")
    low, low_losses = train(tmp_path, "float16", "cupy")
    _, full_losses = train(tmp_path, "float32", "cupy")
    np.testing.assert_allclose(low_losses, full_losses, rtol=0.02)
    assert low.loss_scaler.scale >= 2.0**15
    assert {str(p.dtype) for p in low.model.parameters()} == {"float32"}
    state = low.optimizer.state
    assert all(str(a.dtype) == "float32" for key in ("exp_avg", "exp_avg_sq")
               for a in state[key].values())  # fmt: skip


def test_cupy_float16_generation():
    need("cupy")
    with tinyllm.use_backend("cupy"):
        model = Transformer(get_preset("tiny", **SMALL), seed=0)
    out = generate(model, [[1, 2, 3]], 4, temperature=0, dtype="float16")
    assert out.shape == (1, 7)
