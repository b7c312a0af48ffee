"""Choosing a backend, what happens when one can't run, and compiled steps under JAX."""

import contextvars
import os
import subprocess
import sys

import numpy as np
import pytest

import tinyllm
import tinyllm.functional as F
from tinyllm import Tensor
from tinyllm.backend import backend_of
from tinyllm.functional import attention


def in_fresh_context(fn):
    """Run ``fn`` in a copy of the current context, so set_backend cannot leak out."""
    return contextvars.copy_context().run(fn)


def test_numpy_is_the_default_and_use_backend_restores_the_previous_choice():
    assert tinyllm.get_backend().name == "numpy"
    with tinyllm.use_backend("numpy") as b:
        assert b.name == "numpy"
    assert tinyllm.get_backend().name == "numpy"


def test_set_backend_and_the_environment_variable(monkeypatch):
    pytest.importorskip("jax")
    monkeypatch.setenv("TINYLLM_BACKEND", "jax")
    assert in_fresh_context(lambda: tinyllm.get_backend().name) == "jax"
    monkeypatch.setenv("TINYLLM_BACKEND", "numpy")

    def choose():
        tinyllm.set_backend("jax")
        return tinyllm.get_backend().name, Tensor([1.0]).backend.name

    assert in_fresh_context(choose) == ("jax", "jax")
    assert tinyllm.get_backend().name == "numpy"  # the choice stayed in its context


def test_unknown_backend_names_list_the_choices(monkeypatch):
    with pytest.raises(
        ValueError, match="unknown backend 'torch'; expected one of numpy, cupy, jax"
    ):
        tinyllm.set_backend("torch")
    monkeypatch.setenv("TINYLLM_BACKEND", "tpu")
    with pytest.raises(ValueError, match="TINYLLM_BACKEND='tpu' names no backend"):
        in_fresh_context(tinyllm.get_backend)


def test_unavailable_cupy_says_why_without_a_deep_traceback():
    works, detail = tinyllm.available_backends()["cupy"]
    if works:
        pytest.skip(f"CuPy works here: {detail}")
    assert "CuPy" in detail and ("not installed" in detail or "CUDA" in detail)
    with pytest.raises(tinyllm.BackendUnavailable) as err:
        tinyllm.use_backend("cupy").__enter__()
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_cli_info_reports_every_backend():
    out = subprocess.run(
        [sys.executable, "-m", "tinyllm.cli", "info"],
        capture_output=True,
        text=True,
        timeout=600,  # a hang guard, generous: importing every backend is slow on a busy machine
        check=True,
    ).stdout
    assert f"tinyllm {tinyllm.__version__}" in out
    for name, (works, detail) in tinyllm.available_backends().items():
        assert f"{name:6s} {'yes' if works else 'no ':3s}  {detail}" in out


def test_tensor_places_numpy_input_on_the_active_backend_and_to_numpy_brings_it_back():
    jax = pytest.importorskip("jax")
    host = np.arange(4, dtype=np.float32)
    with tinyllm.use_backend("jax"):
        t = Tensor(host)
    assert isinstance(t.data, jax.Array) and t.backend.name == "jax"
    np.testing.assert_array_equal(tinyllm.to_numpy(t), host)
    np.testing.assert_array_equal(tinyllm.to_numpy(t.data), host)
    np.testing.assert_array_equal(t.to("numpy").data, host)


def test_mixing_backends_in_one_op_says_so():
    pytest.importorskip("jax")
    a = Tensor([1.0, 2.0])
    with tinyllm.use_backend("jax"):
        b = Tensor([1.0, 2.0])
    with pytest.raises(TypeError, match="Mul: cannot mix arrays of the 'numpy' and 'jax' backends"):
        a * b
    y = Tensor([1.0, 2.0], requires_grad=True) * 2.0
    with pytest.raises(
        TypeError, match="gradient is on the 'jax' backend but the tensor is on 'numpy'"
    ):
        y.backward(b)


def transformer_like_loss(params, ids, targets):
    """Embedding -> RMSNorm -> causal attention -> output projection -> cross-entropy."""
    x = F.embedding(params["embed"], ids)  # (B, T, C)
    x = F.rms_norm(x, params["norm"])
    B, T, C = x.shape
    heads = x.reshape(B, T, 2, C // 2).transpose(0, 2, 1, 3)  # (B, 2, T, C/2)
    y = F.scaled_dot_product_attention(heads, heads, heads)
    y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
    logits = F.gelu(y @ params["out"])  # (B, T, V)
    return F.cross_entropy(logits, targets)


def make_problem():
    rng = np.random.default_rng(0)
    vocab, dim = 11, 8
    params = {
        "embed": rng.normal(size=(vocab, dim)).astype(np.float32),
        "norm": np.ones(dim, np.float32),
        "out": (rng.normal(size=(dim, vocab)) * 0.3).astype(np.float32),
    }
    ids = rng.integers(0, vocab, size=(2, 5))
    targets = np.where(rng.random((2, 5)) < 0.2, -100, rng.integers(0, vocab, size=(2, 5)))
    return params, ids, targets


def test_jitted_loss_and_gradients_equal_eager_ones():
    jax = pytest.importorskip("jax")
    params, ids, targets = make_problem()
    step = tinyllm.value_and_grad(transformer_like_loss)
    eager_loss, eager_grads = step(params, Tensor(ids), Tensor(targets))  # NumPy, eager

    with tinyllm.use_backend("jax"):
        jnp = tinyllm.get_backend().xp
        jparams = {k: jnp.asarray(v) for k, v in params.items()}
        compiled = tinyllm.jit(lambda p, i, t: step(p, Tensor(i), Tensor(t)))
        loss, grads = compiled(jparams, jnp.asarray(ids), jnp.asarray(targets))
        jax_eager_loss, _ = step(jparams, Tensor(ids), Tensor(targets))

    assert isinstance(loss, jax.Array)
    np.testing.assert_allclose(float(loss), float(eager_loss), rtol=1e-5)
    np.testing.assert_allclose(float(jax_eager_loss), float(eager_loss), rtol=1e-5)
    for name in params:
        np.testing.assert_allclose(np.asarray(grads[name]), eager_grads[name], rtol=1e-4, atol=1e-5)


def test_jit_is_the_identity_on_numpy_and_compiles_under_jax():
    def f(x):
        return x * 2

    assert tinyllm.jit(f) is f
    assert tinyllm.jit(f, donate_argnums=(0,)) is f  # eager: nothing to donate, accepted
    jax = pytest.importorskip("jax")
    with tinyllm.use_backend("jax"):
        compiled = tinyllm.jit(f)
    assert compiled is not f and hasattr(compiled, "lower")
    assert float(compiled(jax.numpy.ones(()))) == 2.0


@pytest.mark.parametrize(
    "chosen, expected", [(None, "highest"), ("tensorfloat32", "tensorfloat32")]
)
def test_jax_multiplies_float32_in_full_float32_unless_told_otherwise(chosen, expected):
    """JAX's own default on a recent NVIDIA GPU is TF32; creating the backend asks for float32,
    and leaves a precision the user chose alone. (A fresh process: the setting is global.)"""
    pytest.importorskip("jax")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_DEFAULT_MATMUL_PRECISION", None)
    if chosen is not None:
        env["JAX_DEFAULT_MATMUL_PRECISION"] = chosen
    code = (
        "import jax, tinyllm; tinyllm.get_backend('jax'); "
        "print(jax.config.jax_default_matmul_precision)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_jax_float32_products_on_a_gpu_are_not_rounded_through_tf32():
    """Runs where JAX sees a GPU: a float32 product agrees with float64's to float32's accuracy
    (TF32's 10-bit mantissa would be off by about 1e-3)."""
    jax = pytest.importorskip("jax")
    if jax.default_backend() != "gpu":
        pytest.skip(f"JAX runs on {jax.default_backend()!r}, not a GPU")
    a, b = np.random.default_rng(0).standard_normal((2, 512, 512)).astype(np.float32)
    with tinyllm.use_backend("jax") as backend:
        product = np.asarray(backend.asarray(a) @ backend.asarray(b))
    exact = a.astype(np.float64) @ b.astype(np.float64)
    assert np.max(np.abs(product - exact)) / np.max(np.abs(exact)) < 1e-5


@pytest.mark.parametrize("name", ["numpy", "cupy", "jax"])
def test_to_floats_reads_arrays_and_numbers_in_one_go(name):
    works, detail = tinyllm.available_backends()[name]
    if not works:
        pytest.skip(detail)
    backend = tinyllm.get_backend(name)
    xp = backend.xp
    values = [xp.asarray(1.5, dtype=xp.float32), 2, xp.asarray(3, dtype=xp.int32), 0.25]
    floats = backend.to_floats(values)
    assert floats == [1.5, 2.0, 3.0, 0.25] and all(type(f) is float for f in floats)


@pytest.mark.parametrize("name", ["numpy", "cupy", "jax"])
def test_constants_are_made_once_per_key_and_only_the_last_few_kept(name, monkeypatch):
    """``Backend.constant``: an op's mask is built once per shape, the backend holds it (JAX:
    the NumPy array, a literal of the program under jit), and old shapes are let go."""
    works, detail = tinyllm.available_backends()[name]
    if not works:
        pytest.skip(detail)
    from tinyllm.backend import base

    backend = type(tinyllm.get_backend(name))()  # a fresh one: nothing kept yet
    monkeypatch.setattr(base, "KEPT_CONSTANTS", 3)
    made = []

    def make(n):
        made.append(n)
        return np.full(2, n, np.float32)

    first = backend.constant(("n", 1), lambda: make(1))
    assert tinyllm.to_numpy(first).tolist() == [1.0, 1.0]
    if name == "jax":  # the NumPy array, made while tracing: under jit, a literal of the program
        assert isinstance(first, np.ndarray)
        return
    assert isinstance(first, backend.xp.ndarray)
    assert backend.constant(("n", 1), lambda: make(1)) is first and made == [1]
    for n in (2, 3, 4):  # the fourth key lets the oldest go
        backend.constant(("n", n), lambda n=n: make(n))
    backend.constant(("n", 1), lambda: make(1))
    assert made == [1, 2, 3, 4, 1]


@pytest.mark.parametrize("name", ["numpy", "cupy", "jax"])
def test_top_k_is_torch_topk_largest_first(name):
    """``Backend.top_k`` (distillation's cached teacher): values and indices as
    ``torch.topk`` gives them, for every k up to the whole axis."""
    torch = pytest.importorskip("torch")
    works, detail = tinyllm.available_backends()[name]
    if not works:
        pytest.skip(detail)
    backend = tinyllm.get_backend(name)
    x = np.random.default_rng(0).standard_normal((3, 4, 37)).astype(np.float32)
    for k in (1, 5, 36, 37):
        values, indices = backend.top_k(backend.xp.asarray(x), k)
        expected = torch.topk(torch.from_numpy(x), k, dim=-1)
        np.testing.assert_array_equal(tinyllm.to_numpy(indices), expected.indices.numpy())
        np.testing.assert_array_equal(tinyllm.to_numpy(values), expected.values.numpy())


def test_backend_of_tells_arrays_apart_without_importing_gpu_libraries():
    assert backend_of(np.zeros(2)).name == "numpy"
    assert backend_of(3.0) is None
    with pytest.raises(TypeError, match="expected a NumPy, CuPy or JAX array.*got str"):
        backend_of("text")
    code = (
        "import sys, tinyllm; tinyllm.Tensor([1.0]); "
        "print('cupy' in sys.modules, 'jax' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("query_blocks", [False, True])
@pytest.mark.parametrize("name", ["cupy", "jax"])
def test_gpu_backends_match_numpy_on_a_training_step(name, query_blocks, monkeypatch):
    """Runs where the backend works (CuPy needs a CUDA GPU; JAX runs on CPU or GPU). With
    ``query_blocks`` the 5 queries take long causal attention's blocked path."""
    works, detail = tinyllm.available_backends()[name]
    if not works:
        pytest.skip(detail)
    if query_blocks:
        monkeypatch.setattr(attention, "MIN_QUERY_BLOCK", 1)
    params, ids, targets = make_problem()
    step = tinyllm.value_and_grad(transformer_like_loss)
    expected_loss, expected_grads = step(params, Tensor(ids), Tensor(targets))
    with tinyllm.use_backend(name) as backend:
        moved = {k: backend.asarray(v) for k, v in params.items()}
        loss, grads = step(moved, Tensor(ids), Tensor(targets))
    np.testing.assert_allclose(float(tinyllm.to_numpy(loss)), float(expected_loss), rtol=1e-5)
    for k in params:
        np.testing.assert_allclose(
            tinyllm.to_numpy(grads[k]), expected_grads[k], rtol=1e-4, atol=1e-5
        )


def test_numpy_backend_reductions_equal_their_plain_definitions():
    from tinyllm.backend import Backend, NumpyBackend

    fast, plain = NumpyBackend(), Backend()
    rng = np.random.default_rng(0)
    for shape in [(7,), (3, 1), (2, 3, 64), (5, 257), (4, 2, 3, 384)]:
        x = rng.standard_normal(shape, dtype=np.float32)
        y = rng.standard_normal(shape, dtype=np.float32)
        for strided in (x, np.swapaxes(x, 0, -1)):  # rows contiguous, and strided in memory
            np.testing.assert_array_equal(fast.max_last(strided), plain.max_last(strided))
            np.testing.assert_allclose(fast.sum_last(strided), plain.sum_last(strided), 1e-5, 1e-5)
        np.testing.assert_allclose(fast.dot_last(x, y), plain.dot_last(x, y), 1e-5, 1e-5)
        rows = x.reshape(-1, shape[-1])
        np.testing.assert_allclose(fast.sum_first(rows), plain.sum_first(rows), 1e-5, 1e-5)
        assert fast.sum_last(x).dtype == fast.sum_first(rows).dtype == np.float32
    index = np.array([[0, 3], [3, 1]])  # repeated rows, as an embedding's backward sees
    values = rng.standard_normal((2, 2, 5), dtype=np.float32)
    got = fast.scatter_add(np.zeros((4, 5), np.float32), index, values)
    np.testing.assert_allclose(got, plain.scatter_add(np.zeros((4, 5), np.float32), index, values))
    assert type(tinyllm.get_backend("numpy")) is NumpyBackend


def test_gpu_backends_keep_the_plain_reductions():
    """CuPy and JAX override only what their array library spells differently."""
    from tinyllm.backend import Backend
    from tinyllm.backend.cupy_backend import CupyBackend
    from tinyllm.backend.jax_backend import JaxBackend

    for cls in (CupyBackend, JaxBackend):
        for method in ("sum_last", "max_last", "dot_last", "sum_first"):
            assert getattr(cls, method) is getattr(Backend, method), (cls.__name__, method)
