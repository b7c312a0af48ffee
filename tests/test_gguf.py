"""GGUF export, read back with the ``gguf`` package's own reader: the metadata llama.cpp
looks up, every tensor under llama.cpp's name with the bytes gguf's reference quantizers
write, the RoPE reordering of the query and key rows, and the refusals.
(tests/test_gguf_llamacpp.py runs the files in llama.cpp itself, when it is installed.)"""

import numpy as np
import pytest

from tinyllm.cli import main
from tinyllm.models import Transformer, get_preset
from tinyllm.nn.rope import RotaryEmbedding
from tinyllm.quant import formats
from tinyllm.quant.gguf_export import (
    check_type,
    export_gguf,
    gguf_tensors,
    halve_rope_rows,
    interleave_rope_rows,
    stored_model,
    write_gguf,
)
from tinyllm.tokenizer import Tokenizer
from tinyllm.train.checkpoint import save_model

gguf = pytest.importorskip(
    "gguf", reason="the gguf package writes and reads GGUF (the 'dev' extra)"
)
from gguf import GGMLQuantizationType, GGUFReader  # noqa: E402
from gguf.quants import dequantize as gguf_dequantize  # noqa: E402
from gguf.quants import quantize as gguf_quantize  # noqa: E402

TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
TEXT = "To be, or not to be: that is the question. Whether 'tis nobler in the mind to suffer\n" * 8


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXT, vocab_size=300)


def random_model(preset, tokenizer, **changes):
    """A small model with every parameter random (norms too: a swapped norm shows)."""
    vocab_size = changes.pop("vocab_size", tokenizer.vocab_size + 3)  # 3 ids the tokenizer lacks
    end = tokenizer.special_tokens["<|endoftext|>"]
    config = get_preset(
        preset, vocab_size=vocab_size, context_length=32, d_model=64, n_layer=2,
        eos_token_id=end if end < vocab_size else None, **changes,
    )  # fmt: skip
    model = Transformer(config, seed=0)
    rng = np.random.default_rng(1)
    state = {
        k: rng.standard_normal(v.shape).astype(np.float32) * 0.1
        for k, v in model.state_dict().items()
    }
    return model.load_state_dict(state).eval()


MODELS = {
    "llama": dict(preset="tiny-llama", n_head=4, n_kv_head=2, d_ff=96),  # untied output
    "gpt2": dict(preset="tiny", n_head=4),  # tied: llama.cpp reuses token_embd
}


def model_of(arch, tokenizer, **changes):
    spec = dict(MODELS[arch])
    return random_model(spec.pop("preset"), tokenizer, **{**spec, **changes})


def fields(reader):
    return {name: field.contents() for name, field in reader.fields.items()}


# --- what the file should hold, worked out here from the model --------------------------------
def permute(w, n_head):
    """convert_hf_to_gguf's LlamaModel.permute, as it is written there."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def expected_tensors(model):
    """{gguf name: float32 array in GGUF layout (rows = output features)}."""
    config, state = model.config, model.state_dict()
    llama = config.position == "rope"
    out = {"token_embd.weight": state["token_embedding.weight"]}
    out["output_norm.weight"] = state["final_norm.weight"]
    if not llama:
        out["position_embd.weight"] = state["position_embedding.weight"]
        out["output_norm.bias"] = state["final_norm.bias"]
    if "lm_head.weight" in state:
        out["output.weight"] = state["lm_head.weight"].T
    for i in range(config.n_layer):
        b, g = f"blocks.{i}.", f"blk.{i}."
        linears = {"attention.o_proj": "attn_output", "mlp.up": "ffn_up", "mlp.down": "ffn_down"}
        norms = {"attention_norm": "attn_norm", "mlp_norm": "ffn_norm"}
        if llama:
            linears["mlp.gate"] = "ffn_gate"
            linears["attention.v_proj"] = "attn_v"
            out[g + "attn_q.weight"] = permute(
                state[b + "attention.q_proj.weight"].T, config.n_head
            )
            out[g + "attn_k.weight"] = permute(
                state[b + "attention.k_proj.weight"].T, config.kv_heads
            )
        else:
            qkv = [state[f"{b}attention.{p}_proj.weight"].T for p in "qkv"]
            out[g + "attn_qkv.weight"] = np.concatenate(qkv)
            out[g + "attn_qkv.bias"] = np.concatenate(
                [state[f"{b}attention.{p}_proj.bias"] for p in "qkv"]
            )
        for ours, theirs in linears.items():
            out[f"{g}{theirs}.weight"] = state[f"{b}{ours}.weight"].T
            if not llama:
                out[f"{g}{theirs}.bias"] = state[f"{b}{ours}.bias"]
        for ours, theirs in norms.items():
            out[f"{g}{theirs}.weight"] = state[f"{b}{ours}.weight"]
            if not llama:
                out[f"{g}{theirs}.bias"] = state[f"{b}{ours}.bias"]
    return out


def expected_type(name, array, file_type, tied):
    if array.ndim == 1 or name == "position_embd.weight":
        return "f32"
    output = name == "output.weight" or (tied and name == "token_embd.weight")
    return "q8_0" if output and file_type.startswith("q4") else file_type


# --- tensors ------------------------------------------------------------------------------------
@pytest.mark.parametrize("file_type", TYPES)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_every_tensor_reads_back_as_gguf_would_write_it(arch, file_type, tokenizer, tmp_path):
    model = model_of(arch, tokenizer)
    path = write_gguf(model, tokenizer, tmp_path / "m.gguf", file_type).path
    reader = GGUFReader(path)
    expected = expected_tensors(model)
    read = {t.name: t for t in reader.tensors}
    assert sorted(read) == sorted(expected)
    for name, array in expected.items():
        tensor = read[name]
        fmt = expected_type(name, array, file_type, model.config.tie_embeddings)
        ggml_type = GGMLQuantizationType[fmt.upper()]
        assert tensor.tensor_type == ggml_type, name
        assert list(tensor.shape) == list(reversed(array.shape)), name  # ggml lists ne0 first
        values = gguf_dequantize(tensor.data, ggml_type).reshape(array.shape)
        ours = formats.dequantize(formats.quantize(array, fmt), fmt)
        np.testing.assert_array_equal(values, ours, err_msg=name)
        reference = gguf_quantize(array.astype(np.float32), ggml_type)  # gguf's own bytes
        np.testing.assert_array_equal(np.asarray(tensor.data).reshape(reference.shape), reference)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_metadata_is_what_llama_cpp_looks_up(arch, tokenizer, tmp_path):
    model = model_of(arch, tokenizer)
    config = model.config
    values = fields(GGUFReader(write_gguf(model, tokenizer, tmp_path / "m.gguf", "q8_0").path))
    assert values["general.architecture"] == arch
    assert values["general.file_type"] == 7  # LlamaFileType.MOSTLY_Q8_0
    shapes = {
        "context_length": 32, "embedding_length": 64, "block_count": 2,
        "feed_forward_length": config.ff_dim, "attention.head_count": 4,
        "attention.head_count_kv": config.kv_heads, "vocab_size": tokenizer.vocab_size + 3,
    }  # fmt: skip
    for key, value in shapes.items():
        assert values[f"{arch}.{key}"] == value, key
    if arch == "llama":
        assert values["llama.rope.freq_base"] == config.rope_theta
        assert values["llama.rope.dimension_count"] == 16
        assert values["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(config.norm_eps)
    else:
        assert values["gpt2.attention.layer_norm_epsilon"] == pytest.approx(config.norm_eps)
    assert values["tokenizer.ggml.model"] == "gpt2"
    assert values["tokenizer.ggml.pre"] == "gpt-2"  # tinyllm's default split is GPT-2's regex
    tokens, types = values["tokenizer.ggml.tokens"], values["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == config.vocab_size
    space_the = tokenizer.encode(" the")
    assert len(space_the) == 1 and tokens[space_the[0]] == "Ġthe"  # GPT-2's printable bytes
    end = tokenizer.special_tokens["<|endoftext|>"]
    assert tokens[end] == "<|endoftext|>" and types[end] == 3  # control
    assert tokens[-1] == f"[PAD{config.vocab_size - 1}]" and types[-1] == 5  # unused
    assert types[0] == 1
    merges = values["tokenizer.ggml.merges"]
    assert len(merges) == len(tokenizer.merges) and merges[0].count(" ") == 1
    assert values["tokenizer.ggml.eos_token_id"] == end
    assert values["tokenizer.ggml.add_bos_token"] is False
    assert "<|assistant|>" in values["tokenizer.chat_template"]


def test_gpt4_pattern_is_llama_cpps_dbrx_pre_tokenizer(tmp_path):
    tokenizer = Tokenizer.train(TEXT, vocab_size=300, pattern="gpt4")
    model = model_of("llama", tokenizer)
    values = fields(GGUFReader(write_gguf(model, tokenizer, tmp_path / "m.gguf", "f32").path))
    assert values["tokenizer.ggml.pre"] == "dbrx"


# --- RoPE: llama.cpp rotates neighbours, tinyllm the two halves of a head --------------------------
def rope_adjacent(x, angles):
    """llama.cpp's LLAMA_ROPE_TYPE_NORM: features (2i, 2i + 1) turned by angle i. x (T, D)."""
    even, odd = x[:, 0::2], x[:, 1::2]
    cos, sin = np.cos(angles), np.sin(angles)
    out = np.empty_like(x)
    out[:, 0::2], out[:, 1::2] = even * cos - odd * sin, even * sin + odd * cos
    return out


def test_interleaved_rows_under_llama_cpps_rope_give_tinyllms_attention_scores(tokenizer):
    model = model_of("llama", tokenizer)
    config, attention = model.config, model.blocks[0].attention
    tensors = {t.name: t.array for t in gguf_tensors(model, "f32")}
    T, D = 5, config.head_dim
    x = np.random.default_rng(2).standard_normal((T, config.d_model)).astype(np.float32)
    inv_freq, _ = RotaryEmbedding(D, config.rope_theta).inverse_frequencies(T)
    angles = np.arange(T)[:, None] * inv_freq  # (T, D/2)
    rope = model.blocks[0].attention.rope
    q_ours = (
        (x @ attention.q_proj.weight.numpy()).reshape(1, T, config.n_head, D).transpose(0, 2, 1, 3)
    )
    k_ours = (
        (x @ attention.k_proj.weight.numpy())
        .reshape(1, T, config.kv_heads, D)
        .transpose(0, 2, 1, 3)
    )
    import tinyllm

    q_ours, k_ours = (rope(tinyllm.Tensor(a)).numpy()[0] for a in (q_ours, k_ours))
    q_file = (x @ tensors["blk.0.attn_q.weight"].T).reshape(T, config.n_head, D)
    k_file = (x @ tensors["blk.0.attn_k.weight"].T).reshape(T, config.kv_heads, D)
    group = config.n_head // config.kv_heads
    for h in range(config.n_head):
        ours = q_ours[h] @ k_ours[h // group].T
        theirs = (
            rope_adjacent(q_file[:, h], angles) @ rope_adjacent(k_file[:, h // group], angles).T
        )
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    w = tensors["blk.0.attn_q.weight"]
    np.testing.assert_array_equal(
        halve_rope_rows(w, config.n_head), attention.q_proj.weight.numpy().T
    )
    np.testing.assert_array_equal(interleave_rope_rows(halve_rope_rows(w, 4), 4), w)


# --- the model llama.cpp runs, in tinyllm ------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_stored_model_holds_the_files_values(arch, tokenizer, tmp_path):
    model = model_of(arch, tokenizer)
    ids = [tokenizer.encode("that is the question")]
    same = stored_model(model, "f32")
    np.testing.assert_array_equal(same(ids)[0].numpy(), model(ids)[0].numpy())
    rounded = stored_model(model, "q4_0")
    reader = GGUFReader(write_gguf(model, tokenizer, tmp_path / "m.gguf", "q4_0").path)
    tensor = {t.name: t for t in reader.tensors}["blk.1.ffn_down.weight"]
    values = gguf_dequantize(tensor.data, tensor.tensor_type)
    np.testing.assert_array_equal(rounded.blocks[1].mlp.down.weight.numpy(), values.T)
    assert not np.array_equal(rounded(ids)[0].numpy(), model(ids)[0].numpy())


# --- fallback, refusals, the file and the command ---------------------------------------------
def test_rows_not_a_multiple_of_32_fall_back_to_f16_and_are_named(tokenizer, tmp_path):
    model = model_of("llama", tokenizer, d_ff=40)  # ffn_down's rows are 40 long
    with pytest.warns(UserWarning) as warned:
        export = write_gguf(model, tokenizer, tmp_path / "m.gguf", "q4_1")
    assert [str(w.message) for w in warned] == [f"GGUF export: {m}" for m in export.fallbacks]
    assert len(export.fallbacks) == 2 and export.formats["blk.1.ffn_down.weight"] == "f16"
    assert export.fallbacks[0] == (
        "blk.0.ffn_down.weight has rows of 40 weights, not a multiple of 32, which q4_1 "
        "needs; stored as f16 (as llama.cpp's converter does)"
    )
    types = {t.name: t.tensor_type.name for t in GGUFReader(export.path).tensors}
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "Q4_1"


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(preset="tiny-moe"), "n_expert=4 .* mixture-of-experts"),
        (dict(qk_norm=True), "qk_norm=True .* qwen3"),
        (dict(qkv_bias=True), "qkv_bias=True .* qwen2"),
        (dict(sliding_window=8), "sliding_window=8 .* whole context"),
        (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling type 'dynamic'"),
        (dict(preset="tiny", bias=False), "bias=False .* gpt2 architecture"),
        (dict(position="learned"), "norm='rmsnorm' .* gpt2 architecture .* norm='layernorm'"),
    ],
)
def test_an_architecture_llama_cpp_cannot_run_is_refused_by_name(
    changes, message, tokenizer, tmp_path
):
    preset = changes.pop("preset", "tiny-llama")
    model = random_model(preset, tokenizer, **changes)
    with pytest.raises(ValueError, match=message):
        write_gguf(model, tokenizer, tmp_path / "m.gguf", "f16")
    assert not list(tmp_path.iterdir())


def test_unknown_type_lists_the_known_ones(tokenizer, tmp_path, capsys):
    with pytest.raises(
        ValueError, match="unknown GGUF type 'q5_0': expected one of f32, f16, q8_0, q4_0, q4_1"
    ):
        check_type("q5_0")
    with pytest.raises(SystemExit):
        main(["export-gguf", str(tmp_path), "--type", "q5_0"])
    assert "invalid choice: 'q5_0'" in capsys.readouterr().err


def test_tokenizers_llama_cpp_cannot_use_are_refused(tokenizer, tmp_path):
    import regex

    model = model_of("gpt2", tokenizer)
    custom = Tokenizer(tokenizer.vocab, tokenizer.merges, pattern=regex.compile(r"\w+|\W+"))
    with pytest.raises(ValueError, match="split pattern 'custom' .* no llama.cpp pre-tokenizer"):
        write_gguf(model, custom, tmp_path / "m.gguf")
    small = random_model("tiny", tokenizer, vocab_size=280)
    with pytest.raises(ValueError, match="ids up to 299, past the model's vocab_size of 280"):
        write_gguf(small, tokenizer, tmp_path / "m.gguf")
    from tinyllm.data import CharVocab

    chars = CharVocab(TEXT)
    with pytest.raises(ValueError, match="needs a byte-level BPE tokenizer .* CharVocab"):
        write_gguf(
            random_model("tiny", tokenizer, vocab_size=chars.vocab_size), chars, tmp_path / "m.gguf"
        )
    assert not list(tmp_path.iterdir())


def test_a_failed_write_leaves_no_file_behind(tokenizer, tmp_path, monkeypatch):
    import tinyllm.quant.gguf_export as export

    path = tmp_path / "m.gguf"
    path.write_bytes(b"the old file")
    calls = []

    def fail_on_third(tensor):
        calls.append(tensor.name)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return original(tensor)

    original = export.encode
    monkeypatch.setattr(export, "encode", fail_on_third)
    with pytest.raises(RuntimeError, match="disk full"):
        write_gguf(model_of("llama", tokenizer), tokenizer, path, "q8_0")
    assert [p.name for p in tmp_path.iterdir()] == [
        "m.gguf"
    ] and path.read_bytes() == b"the old file"


def test_the_command_exports_a_model_folder(tokenizer, tmp_path, capsys):
    model = model_of("llama", tokenizer, d_ff=40)
    save_model(tmp_path / "run", model, tokenizer)
    assert main(["export-gguf", str(tmp_path / "run"), "--type", "q4_0"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "run" / "model-q4_0.gguf"
    assert f"wrote {path}" in out and "fallback: blk.0.ffn_down.weight has rows of 40" in out
    reader = GGUFReader(path)
    assert fields(reader)["general.name"] == "run" and len(reader.tensors) == 2 + 9 * 2 + 1
    export = export_gguf(tmp_path / "run", tmp_path / "other.gguf", "f16")
    assert export.formats["output.weight"] == "f16"


def test_the_command_refuses_a_quantized_folder_and_a_char_vocab(tokenizer, tmp_path, capsys):
    from tinyllm.data import CharVocab
    from tinyllm.quant import quantize

    save_model(tmp_path / "q", quantize(model_of("llama", tokenizer), "q8_0"), tokenizer)
    assert main(["export-gguf", str(tmp_path / "q"), "--type", "f16"]) == 2
    assert "quantized layers" in capsys.readouterr().err
    chars = CharVocab(TEXT)
    save_model(tmp_path / "c", random_model("tiny", tokenizer, vocab_size=chars.vocab_size), chars)
    assert (
        main(
            ["export-gguf", str(tmp_path / "c"), "--type", "f16", "--out", str(tmp_path / "c.gguf")]
        )
        == 2
    )
    assert "--tokenizer bpe" in capsys.readouterr().err and not (tmp_path / "c.gguf").exists()


def test_options_llama_cpp_reads_are_in_the_metadata(tokenizer, tmp_path):
    model = model_of("llama", tokenizer, d_head=32, rope_scaling={"type": "linear", "factor": 4.0})
    values = fields(GGUFReader(write_gguf(model, tokenizer, tmp_path / "m.gguf", "f32").path))
    assert values["llama.attention.key_length"] == values["llama.attention.value_length"] == 32
    assert values["llama.rope.dimension_count"] == 32
    assert values["llama.rope.scaling.type"] == "linear"
    assert values["llama.rope.scaling.factor"] == 4.0
    plain = fields(
        GGUFReader(write_gguf(model_of("llama", tokenizer), tokenizer, tmp_path / "p.gguf").path)
    )
    assert "llama.attention.key_length" not in plain and "llama.rope.scaling.type" not in plain


def test_without_the_gguf_package_the_command_says_what_to_install(
    tokenizer, tmp_path, monkeypatch, capsys
):
    import sys

    save_model(tmp_path / "run", model_of("gpt2", tokenizer), tokenizer)
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf now raises ImportError
    assert main(["export-gguf", str(tmp_path / "run"), "--type", "f16"]) == 2
    assert "pip install 'tinyllm[gguf]'" in capsys.readouterr().err
    assert not list((tmp_path / "run").glob("*.gguf"))
