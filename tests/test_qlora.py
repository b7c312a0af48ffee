"""QLoRA: adapters on a base whose linear layers stay packed in 4 bits. At step 0 the adapted
model is the quantized one; training moves the adapters and never the packed bytes, and its
loss falls; the gradient reaches the input through the dequantized weight; merging follows
PEFT (requantized, with a warning), merge_and_unload gives the float model with the same
logits; checkpoints rebuild and resume it; and the memory report adds up the model's own
arrays."""

import json

import numpy as np
import pytest

from tinyllm.autograd import Tensor, gradcheck
from tinyllm.cli import main
from tinyllm.data import RandomBatches
from tinyllm.models import Transformer, get_preset
from tinyllm.nn import Linear, Module, Parameter
from tinyllm.nn.lora import (
    LoRALinear,
    add_trainable_tokens,
    apply_lora,
    lora_layers,
    lora_summary,
    merge,
    merge_and_unload,
    unmerge,
)
from tinyllm.optim import AdamW
from tinyllm.quant import QuantizedLinear, formats, quantize
from tinyllm.recipes.lora import LoRAConfig, memory_report, memory_table, quantize_base
from tinyllm.train import TrainConfig, Trainer, latest_checkpoint, read_metrics
from tinyllm.train.checkpoint import load_model

IDS = np.random.default_rng(0).integers(0, 65, (2, 12))
TOKENS = np.tile(np.arange(20), 60)
TARGETS = ("q_proj", "v_proj", "mlp.*")


def model(preset="tiny-llama", **changes):
    shape = dict(n_layer=2, d_model=32, n_head=4) | changes
    return Transformer(get_preset(preset, **shape), seed=0)


def qlora(preset="tiny-llama", scheme="q4_0", **changes):
    return apply_lora(
        quantize(model(preset, **changes), scheme), r=4, alpha=8, target_modules=TARGETS
    )


def logits(m):
    return m.eval()(IDS)[0].numpy()


def randomize(m, seed=1):
    rng = np.random.default_rng(seed)
    for _, layer in lora_layers(m):
        adapter = layer.adapters[layer.active]
        adapter.B.data = (0.2 * rng.standard_normal(adapter.B.shape)).astype(np.float32)
    return m


def train(m, steps=3, out=None, resume=False, lr=2e-2):
    config = TrainConfig(steps=steps, batch_size=4, lr=lr, schedule="constant", eval_interval=0,
                         checkpoint_interval=2, progress=False)  # fmt: skip
    trainer = Trainer(m.train(), config, RandomBatches(TOKENS, 4, 16, seed=0), out_dir=out)
    trainer.fit(resume=resume)
    return trainer


def batch_loss(m):
    x = TOKENS[:64].reshape(4, 16)
    return float(m.eval()(x, np.roll(TOKENS, -1)[:64].reshape(4, 16))[1].numpy())


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_qlora_starts_as_the_quantized_model_and_trains_its_adapters_alone(preset):
    quantized = quantize(model(preset), "q4_0")
    expected, before = logits(quantized), quantized.state_dict()
    adapted = apply_lora(quantized, r=4, alpha=8, target_modules=TARGETS)
    assert all(isinstance(layer.base, QuantizedLinear) for _, layer in lora_layers(adapted))
    np.testing.assert_array_equal(logits(adapted), expected)
    train(adapted, steps=3)
    after = {
        name.replace(".base.", "."): array
        for name, array in adapted.state_dict().items()
        if ".adapters." not in name
    }
    assert set(after) == set(before) and any(".weight.packed" in name for name in before)
    for name, array in before.items():  # the packed bytes, and every float part of the base
        assert after[name].tobytes() == array.tobytes(), name
    B = [layer.adapters["default"].B.numpy() for _, layer in lora_layers(adapted)]
    assert all(np.abs(b).max() > 0 for b in B)
    assert not np.allclose(logits(adapted), expected)


def test_qlora_loss_falls_as_lora_on_the_float_model_does():
    quantized, plain = qlora(), apply_lora(model(), r=4, alpha=8, target_modules=TARGETS)
    before = batch_loss(quantized)
    for m in (quantized, plain):
        train(m, steps=30, lr=3e-2)
    assert batch_loss(quantized) < before - 0.4  # from ln 65 = 4.17, a random model's
    assert abs(batch_loss(quantized) - batch_loss(plain)) < 0.05


@pytest.mark.parametrize("scheme", ["q4_0", "q4_1", "q8_0"])
def test_the_gradient_reaches_the_input_through_the_dequantized_weight(scheme):
    rng = np.random.default_rng(0)
    base = QuantizedLinear.from_linear(Linear(64, 8, seed=0), scheme)
    layer = randomize_layer(LoRALinear(base, r=2, alpha=4, seed=0), rng)
    x = Tensor(rng.standard_normal((2, 3, 64)), requires_grad=True)  # float64 for the check
    assert gradcheck(lambda t: layer(t), [x])
    direction = rng.standard_normal((2, 3, 8)).astype(np.float32)
    x32 = Tensor(x.numpy().astype(np.float32), requires_grad=True)
    layer(x32).backward(direction)
    adapter = layer.adapters["default"]
    weight = base.dequantized() + adapter.delta()  # (in, out): what the input sees
    np.testing.assert_allclose(x32.grad, direction @ weight.T, atol=1e-5, rtol=1e-5)
    assert all(part.grad is None for part in base.weight.values())
    assert base.bias.grad is None and adapter.A.grad is not None


def randomize_layer(layer, rng):
    adapter = layer.adapters[layer.active]
    adapter.B.data = (0.2 * rng.standard_normal(adapter.B.shape)).astype(np.float32)
    return layer


def test_merging_into_a_quantized_base_requantizes_with_a_warning():
    m = randomize(qlora("tiny"))
    adapted = logits(m)
    layer = m.blocks[0].attention.q_proj
    expected = formats.dequantize(
        formats.quantize((layer.base.dequantized() + layer.adapters["default"].delta()).T, "q4_0"),
        "q4_0",
    ).T
    with pytest.warns(UserWarning, match="rounds the merged weight to its format again"):
        merge(m)
    assert isinstance(layer.base, QuantizedLinear)
    np.testing.assert_array_equal(layer.base.dequantized(), expected)
    merged = logits(m)
    assert not np.array_equal(merged, adapted)  # rounded, as PEFT's 4-bit merge
    np.testing.assert_allclose(merged, adapted, atol=0.25, rtol=0)
    with pytest.warns(UserWarning, match="rounds"):
        unmerge(m)
    np.testing.assert_allclose(logits(m), adapted, atol=0.25, rtol=0)


def test_a_base_neither_dense_nor_quantized_carries_adapters_but_cannot_merge():
    class Scaled(Module):
        in_features = out_features = 8

        def __init__(self):
            self.scale = Parameter(np.full(8, 2, np.float32))

        def forward(self, x):
            return x * self.scale

    layer = randomize_layer(LoRALinear(Scaled(), r=2, alpha=4, seed=0), np.random.default_rng(0))
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(layer(x).numpy(), 2 * x + layer.adapters["default"](x).numpy())
    with pytest.raises(TypeError, match="Scaled has neither"):
        layer.merge()


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_merge_and_unload_gives_the_float_model_with_the_adapted_logits(preset, tmp_path):
    m = add_trainable_tokens(randomize(qlora(preset)), [3, 5])
    m.token_embedding.values.data = m.token_embedding.values.data + 0.1
    adapted = logits(m)
    plain = merge_and_unload(m)
    kinds = {type(layer) for _, layer in plain.named_modules()}
    assert QuantizedLinear not in kinds and LoRALinear not in kinds and plain.has_hf_form()
    np.testing.assert_allclose(logits(plain), adapted, atol=1e-5, rtol=0)
    plain.save_pretrained(tmp_path)
    np.testing.assert_allclose(
        logits(Transformer.from_pretrained(tmp_path)), adapted, atol=1e-5, rtol=0
    )


def test_a_checkpoint_rebuilds_the_qlora_model_and_the_run_resumes(tmp_path):
    whole = qlora("tiny")
    train(whole, steps=4)
    first = qlora("tiny")
    train(first, steps=2, out=tmp_path)
    rebuilt = load_model(latest_checkpoint(tmp_path))
    assert all(isinstance(layer.base, QuantizedLinear) for _, layer in lora_layers(rebuilt))
    assert isinstance(rebuilt.blocks[0].attention.k_proj, QuantizedLinear)  # not adapted
    np.testing.assert_array_equal(logits(rebuilt), logits(first))
    trainable = lambda m: [n for n, p in m.named_parameters() if p.requires_grad]  # noqa: E731
    assert trainable(rebuilt) == trainable(first)  # a swapped-in layer stays frozen
    resumed = qlora("tiny")
    train(resumed, steps=4, out=tmp_path, resume=True)
    for name, array in whole.state_dict().items():
        np.testing.assert_array_equal(resumed.state_dict()[name], array, err_msg=name)


def nbytes(arrays):
    return sum(np.asarray(a).nbytes for a in arrays)


def one_step(m):
    """``(gradients, optimizer state)``: the bytes of the arrays one AdamW step keeps."""
    optimizer = AdamW(m)
    m.train()(IDS, IDS)[1].backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    optimizer.step()
    state = optimizer.state_dict()
    moments = [a for key, arrays in state.items() if key != "step" for a in arrays.values()]
    return nbytes(grads), nbytes(moments)


def arrays(m):
    """Bytes of ``m``'s frozen parameters, trained ones, quantized weight parts and the
    trainable token ids: the four kinds of array it holds."""
    params = m.parameters()
    parts = [
        b for _, x in m.named_modules() if isinstance(x, QuantizedLinear) for b in x.weight.values()
    ]
    ids = [x.token_ids for _, x in m.named_modules() if hasattr(x, "token_ids")]
    assert len(parts) + len(ids) == len(list(m.named_buffers()))  # nothing else
    frozen = nbytes(p.numpy() for p in params if not p.requires_grad)
    trained = nbytes(p.numpy() for p in params if p.requires_grad)
    return frozen, trained, nbytes(b.numpy() for b in parts), nbytes(t.numpy() for t in ids)


def row(base, adapter, gradients, optimizer):
    return {"base": base, "adapter": adapter, "gradients": gradients, "optimizer": optimizer,
            "total": base + adapter + gradients + optimizer}  # fmt: skip


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_the_memory_report_adds_up_the_models_own_arrays(preset):
    def adapted(m):
        return add_trainable_tokens(apply_lora(m, r=4, alpha=8, target_modules=TARGETS), [3, 5])

    small = adapted(quantize(model(preset), "q4_0"))
    report = memory_report(small)
    assert list(report) == ["qlora", "lora", "full"]
    frozen, trained, parts, ids = arrays(small)
    assert report["qlora"] == row(frozen + parts, trained + ids, *one_step(small))
    float_twin = adapted(model(preset))  # LoRA: the same adapters on the float base
    frozen, trained, parts, ids = arrays(float_twin)
    assert parts == 0 and report["lora"] == row(frozen, trained + ids, *one_step(float_twin))
    assert memory_report(float_twin) == {"lora": report["lora"], "full": report["full"]}
    assert lora_summary(small) == lora_summary(float_twin)  # quantized weights count too
    full = model(preset)  # full fine-tuning: every weight trains
    frozen, trained, parts, ids = arrays(full)
    assert report["full"] == row(trained, 0, *one_step(full))
    assert report["qlora"]["total"] < report["lora"]["total"] < report["full"]["total"]
    table = memory_table(report).splitlines()
    assert table[2].split() == [
        "qlora",
        *(f"{report['qlora'][c] / 1e6:.3f}" for c in report["qlora"]),
    ]


def test_quantize_base_names_the_layers_that_fall_back_or_stay_float(capsys):
    m = model("tiny-llama", d_model=48, tie_embeddings=False)  # rows of 48: no 32-blocks
    with pytest.warns(UserWarning, match="not a multiple of 32"):
        facts = quantize_base(m, "q4_0")
    assert facts["float"] == ["lm_head"] and set(facts["layers"]) == {"q4_0", "int8"}
    assert sum(facts["layers"].values()) == sum(
        isinstance(x, QuantizedLinear) for _, x in m.named_modules()
    )
    printed = capsys.readouterr().out
    assert "in int8" in printed and "in float32: ['lm_head']" in printed


PRETRAIN = ["--steps", "2", "--batch-size", "4", "--eval-batches", "1", "--samples", "0",
            "--context-length", "48", "--no-progress", "--tokenizer", "bpe", "--vocab-size", "300"]  # fmt: skip
SFT = ["--steps", "4", "--batch-size", "4", "--examples", "40", "--eval-examples", "5",
       "--eval-interval", "2", "--log-interval", "1", "--no-progress", "--tasks", "add,sort"]  # fmt: skip


def test_cli_lora_quantize_trains_on_a_4_bit_base_rebuilds_resumes_and_reports_memory(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "base"
    assert main(["pretrain", "--out", str(base), *PRETRAIN]) == 0
    out = tmp_path / "qlora"
    args = ["lora", "--model", str(base), "--out", str(out), "--r", "2", "--alpha", "4",
            "--targets", "q_proj,v_proj,mlp.*", "--quantize", "q4_0", "--merge"]  # fmt: skip
    capsys.readouterr()
    assert main([*args, *SFT]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "lora.json").read_text())
    linears = [
        m for _, m in Transformer.from_pretrained(base).named_modules() if isinstance(m, Linear)
    ]
    assert report["quantized"] == {"scheme": "q4_0", "layers": {"q4_0": len(linears)}, "float": []}
    memory = report["memory"]
    assert (
        list(memory) == ["qlora", "lora", "full"]
        and memory["qlora"]["base"] < memory["lora"]["base"]
    )
    assert memory_table(memory) in printed and f"layers: {len(linears)} in q4_0" in printed
    rebuilt = load_model(latest_checkpoint(out))  # the checkpoint holds the packed base
    assert isinstance(rebuilt.blocks[0].attention.q_proj.base, QuantizedLinear)
    quantized = quantize(Transformer.from_pretrained(base), "q4_0").state_dict()
    state = {name.replace(".base.", "."): array for name, array in rebuilt.state_dict().items()}
    for name, array in quantized.items():  # the base as quantized at the start, untouched
        assert state[name].tobytes() == array.tobytes(), name
    ids = np.random.default_rng(0).integers(0, 300, (1, 16))
    merged = Transformer.from_pretrained(out / "merged")  # float: dequantized + the update
    np.testing.assert_allclose(merged(ids)[0].numpy(), rebuilt(ids)[0].numpy(), atol=1e-4, rtol=0)
    assert main([*args, "--resume", *SFT[2:], "--steps", "6"]) == 0
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")][-2:] == [5, 6]
    capsys.readouterr()
    with pytest.raises(SystemExit):  # argparse: exit status 2
        main([*args[:-3], "--quantize", "q3_k"])
    assert (
        "invalid choice 'q3_k'; expected one of none, f16, bf16, int8, q8_0"
        in capsys.readouterr().err
    )
    with pytest.raises(
        ValueError, match="quantize='q3_k': expected none or a quantization scheme that needs no"
    ):
        LoRAConfig(quantize="q3_k")
    with pytest.raises(ValueError, match="quantize='gptq'.*calibration text: f16, .*q4_0$"):
        LoRAConfig(quantize="gptq")  # AWQ and GPTQ fit on calibration text: not offered here


def test_qlora_trains_the_same_under_compiled_jax():
    pytest.importorskip("jax")
    from tinyllm.backend import use_backend

    trained = {}
    for backend in ("numpy", "jax"):
        with use_backend(backend):
            m = qlora(n_layer=1).to(backend)
            train(m, steps=3)
            trained[backend] = logits(m)
    np.testing.assert_allclose(trained["jax"], trained["numpy"], atol=1e-5, rtol=0)
