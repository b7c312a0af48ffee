"""Activation checkpointing (``nn.recompute``, ``Transformer.gradient_checkpointing``): the
gradients of the plain forward pass, with each block's activations recomputed instead of kept."""

import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor
from tinyllm.data import RowBatches
from tinyllm.models import Transformer, get_preset
from tinyllm.nn import Linear, Module
from tinyllm.nn import recompute as recompute_module
from tinyllm.nn.layers import dropout_key
from tinyllm.nn.lora import apply_lora
from tinyllm.nn.recompute import enable_gradient_checkpointing, peak_training_bytes, recompute
from tinyllm.quant import quantize
from tinyllm.train import TrainConfig, Trainer
from tinyllm.train.metrics import read_metrics


def batch(vocab=50, B=3, T=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (B, T)), rng.integers(0, vocab, (B, T))


def loss_and_grads(model, x, y, checkpointing, **kwargs):
    """The loss and every trainable parameter's gradient, the blocks recomputed or not; the
    dropout masks drawn from one step key either way."""
    model.gradient_checkpointing = checkpointing
    model.zero_grad()
    with dropout_key(model, (1, 2)):
        _, loss = model(x, y, **kwargs)
    loss.backward()
    grads = {n: p.grad.copy() for n, p in model.named_parameters() if p.requires_grad}
    return loss.item(), grads


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama", "tiny-moe"])
def test_recomputed_blocks_give_the_plain_gradients_exactly(preset):
    """GPT-2's shape (learned positions, dropout), Llama's (RoPE, grouped keys) and experts
    (a block returning its load-balancing loss beside its output): the loss and every
    gradient are the plain pass's, bit for bit, dropout masks included."""
    config = get_preset(preset, n_layer=2, dropout=0.1, vocab_size=50, context_length=32)
    model = Transformer(config, seed=0)
    x, y = batch()
    plain, recomputed = (loss_and_grads(model, x, y, c) for c in (False, True))
    assert recomputed[0] == plain[0]
    assert recomputed[1].keys() == plain[1].keys()
    for name, grad in plain[1].items():
        np.testing.assert_array_equal(recomputed[1][name], grad, err_msg=name)


@pytest.mark.parametrize("scheme", [None, "q4_0"])
def test_recomputed_blocks_keep_masks_positions_and_frozen_weights(scheme):
    """Packed documents (a mask and positions, passed to each block by keyword) under LoRA
    (frozen base weights, trained adapters) and QLoRA (the base packed in 4 bits, in
    buffers): the adapters' gradients are the plain pass's."""
    config = get_preset("tiny-llama", n_layer=2, vocab_size=50, context_length=32)
    base = Transformer(config, seed=0)
    model = apply_lora(base if scheme is None else quantize(base, scheme), r=2, alpha=4, seed=1)
    x, y = batch()
    positions = np.concatenate([np.arange(10), np.arange(6)])[None].repeat(3, 0)  # (3, 16)
    document = np.repeat([0, 1], [10, 6])
    mask = (document[:, None] == document[None, :]) & np.tri(16, dtype=bool)  # (16, 16)
    kwargs = dict(mask=mask[None, None], positions=positions)
    plain, recomputed = (loss_and_grads(model, x, y, c, **kwargs) for c in (False, True))
    assert recomputed[0] == plain[0] and len(plain[1]) == 8  # A and B of q and v, 2 layers
    for name, grad in plain[1].items():
        np.testing.assert_array_equal(recomputed[1][name], grad, err_msg=name)


def test_dropout_without_a_step_key_draws_the_same_masks_when_recomputed(monkeypatch):
    """Outside the Trainer a training-mode Dropout draws fresh masks; the recomputation
    must draw the ones the forward pass drew, or the gradients belong to another function."""
    monkeypatch.setattr(recompute_module, "_fresh_seed", lambda: 5)
    config = get_preset("tiny", n_layer=1, dropout=0.5, vocab_size=50, context_length=32)
    block = Transformer(config, seed=0).blocks[0]
    x = Tensor(np.random.default_rng(0).random((2, 8, config.d_model), np.float32), True)

    def grads(call):
        out, _ = call(x)
        (out**2).sum().backward()
        got = [t.grad.copy() for t in (x, *block.parameters())]
        for t in (x, *block.parameters()):
            t.grad = None
        return got

    recomputed = grads(lambda x: recompute(block, x))
    with dropout_key(block, (5,)):  # the key recompute gave the block
        plain = grads(block)
    for got, expected in zip(recomputed, plain):
        np.testing.assert_array_equal(got, expected)


def test_recomputing_keeps_one_block_s_activations_not_every_block_s():
    """The peak memory of a forward and backward pass (NumPy's arrays, as tracemalloc counts
    them): without checkpointing it grows with the depth, block after block of activations;
    with it, each block keeps its input alone and the peak barely moves."""
    x, y = batch(vocab=65, B=8, T=128)
    peaks = {}
    for n_layer in (4, 8):
        config = get_preset("tiny", n_layer=n_layer, vocab_size=65, context_length=128)
        model = Transformer(config, seed=0)
        for checkpointing in (False, True):
            model.gradient_checkpointing = checkpointing
            peaks[n_layer, checkpointing] = peak_training_bytes(model, x, y)
    plain_growth = peaks[8, False] - peaks[4, False]  # four more blocks' activations
    kept_growth = peaks[8, True] - peaks[4, True]  # four more blocks' inputs (and weights)
    assert peaks[8, True] < 0.4 * peaks[8, False]
    assert kept_growth < 0.15 * plain_growth


def test_a_module_returning_several_tensors_gets_each_one_s_gradient():
    class Two(Module):
        def __init__(self):
            self.a, self.b = Linear(4, 3, seed=0), Linear(4, 2, seed=1)

        def forward(self, x, scale=1.0):
            return self.a(x) * scale, "label", self.b(x).sum()

    module, x = Two(), Tensor(np.random.default_rng(0).random((5, 4), np.float32), True)
    first, label, second = recompute(module, x, scale=2.0)
    assert label == "label" and first.shape == (5, 3) and second.shape == ()
    ((first**2).sum() + 3 * second).backward()
    kept = [t.grad.copy() for t in (x, module.a.weight, module.b.weight)]
    for t in (x, module.a.weight, module.b.weight):
        t.grad = None
    first, _, second = module(x, scale=2.0)
    ((first**2).sum() + 3 * second).backward()
    for got, t in zip(kept, (x, module.a.weight, module.b.weight)):
        np.testing.assert_allclose(got, t.grad, rtol=1e-6)


def test_a_keyword_that_needs_a_gradient_or_a_plain_function_is_refused():
    """A keyword Tensor would get no gradient, and a function's weights cannot be found."""
    layer, x = Linear(4, 3, seed=0), np.ones((2, 4), np.float32)
    scale = Tensor(np.ones(3, np.float32), requires_grad=True)
    with pytest.raises(ValueError, match="keyword 'scale'.*pass it positionally"):
        recompute(layer, x, scale=scale)
    with pytest.raises(TypeError, match="expected a Module, got function"):
        recompute(lambda x: layer(x), x)


def test_the_trainer_switch_needs_a_model_that_has_it():
    class Plain(Module):
        def __init__(self):
            self.layer = Linear(4, 4, seed=0)

    with pytest.raises(ValueError, match="Plain has no module with the gradient_checkpointing"):
        enable_gradient_checkpointing(Plain())


def run(backend, checkpointing, out):
    """Losses of a short run with two micro-batches a step, dropout on."""
    config = get_preset("tiny", n_layer=2, vocab_size=50, context_length=16, dropout=0.1)
    with tinyllm.use_backend(backend):
        model = Transformer(config, seed=0)
    x, y = batch(B=8, T=16, seed=3)
    train = TrainConfig(
        steps=4, batch_size=8, grad_accum=2, warmup_steps=1, lr=1e-2, eval_interval=0,
        log_interval=1, checkpoint_interval=0, progress=False,
        gradient_checkpointing=checkpointing,
    )  # fmt: skip
    Trainer(model, train, RowBatches((x, y), 4, seed=0), out_dir=out).fit()
    return [row["loss"] for row in read_metrics(out / "metrics.jsonl")]


def test_the_trainer_recomputes_when_told_with_the_same_losses(tmp_path):
    plain, recomputed = run("numpy", False, tmp_path / "a"), run("numpy", True, tmp_path / "b")
    assert len(plain) == 4 and recomputed == plain


def test_the_compiled_jax_step_recomputes_with_the_plain_losses(tmp_path):
    """Under JAX the whole step is one program: its losses are the plain step's, to float32
    noise (the two programs differ)."""
    pytest.importorskip("jax")
    plain, recomputed = run("jax", False, tmp_path / "a"), run("jax", True, tmp_path / "b")
    np.testing.assert_allclose(recomputed, plain, rtol=1e-5)


def compiled_temp_bytes(n_layer, checkpointing, dropout):
    """XLA's temporary bytes for one compiled training step (B 8, T 128, width 128)."""
    config = get_preset("tiny", n_layer=n_layer, vocab_size=65, context_length=128, dropout=dropout)
    with tinyllm.use_backend("jax"):
        model = Transformer(config, seed=0)
    train = TrainConfig(
        steps=1, batch_size=8, warmup_steps=0, eval_interval=0, checkpoint_interval=0,
        progress=False, gradient_checkpointing=checkpointing,
    )  # fmt: skip
    trainer = Trainer(model, train, iter([batch(vocab=65, B=8, T=128)]))
    trainer.fit()
    return trainer.step_program.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_compiled_jax_step_keeps_less_memory_when_recomputing(dropout):
    """XLA's own accounting of the compiled step (on whichever device JAX runs: the CPU here,
    a GPU in gpu_checks.sh): recomputing, its temporary buffers shrink and barely grow with
    the depth. Without the recomputation's input waiting on the gradient (Backend.after), XLA
    merges or hoists it and the figure does not move, as with jax.checkpoint on XLA:CPU; with
    dropout, without its keys waiting too, each layer's masks are kept from the first pass."""
    pytest.importorskip("jax")
    temp = {(n, c): compiled_temp_bytes(n, c, dropout) for n in (4, 8) for c in (False, True)}
    assert temp[8, True] < 0.5 * temp[8, False], temp
    assert temp[8, True] - temp[4, True] < 0.1 * (temp[8, False] - temp[4, False]), temp
