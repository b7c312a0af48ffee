"""Calibrated schemes (awq, gptq) end to end: calibration windows from the training text
only, the errors for bad calibration, llama.cpp's Q4_0 bytes, quantized folders that
round-trip, and ``tinyllm quantize --scheme gptq`` on a model folder."""

import json

import numpy as np
import pytest

from tinyllm.cli import main
from tinyllm.data import CharVocab, train_val_split
from tinyllm.models import Transformer, get_preset
from tinyllm.quant import QuantizedLinear, corpus_calibration, formats, quantize
from tinyllm.quant.calibration import calibration_windows
from tinyllm.train.checkpoint import load_model, load_model_folder, save_model

TEXT = "the quick brown fox jumps over the lazy dog. " * 60  # 2,700 characters


def small_model(preset="tiny-llama"):
    config = get_preset(preset, vocab_size=40, n_layer=2, d_model=64, n_head=4)
    return Transformer(config.replace(context_length=16), seed=0).eval()


IDS = np.random.default_rng(0).integers(0, 40, (6, 16))


def test_calibration_windows_come_from_the_training_split_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "fox.txt"
    corpus.write_text(TEXT)
    vocab = CharVocab.from_text(TEXT)
    ids = corpus_calibration(str(corpus), vocab, n_sequences=10, length=32)
    assert ids.shape == (10, 32) and ids.dtype == np.int64
    train, _ = train_val_split(np.asarray(vocab.encode(TEXT)), 0.1)
    text = vocab.decode(train.tolist())
    assert all(vocab.decode(row.tolist()) in text for row in ids)
    assert ids[-1, -1] == train[-1] and ids[0, 0] == train[0]  # spread over all of it
    with pytest.raises(ValueError, match=r"need 3,200 tokens, got 2,430 .*training split"):
        corpus_calibration(str(corpus), vocab, n_sequences=100, length=32)


def test_calibration_windows_do_not_overlap():
    ids = calibration_windows(np.arange(1000), n_sequences=7, length=100)
    starts = ids[:, 0]
    assert (np.diff(starts) >= 100).all() and (ids == starts[:, None] + np.arange(100)).all()
    with pytest.raises(ValueError, match="n_sequences=0"):
        calibration_windows(np.arange(1000), n_sequences=0, length=10)


def test_calibrated_schemes_need_fitting_calibration_and_rtn_ones_refuse_it():
    with pytest.raises(ValueError, match="'gptq' looks at activations: give calibration="):
        quantize(small_model(), "gptq")
    with pytest.raises(ValueError, match="'q4_0' rounds to nearest and takes no calibration"):
        quantize(small_model(), "q4_0", calibration=IDS)
    with pytest.raises(ValueError, match="32 tokens are longer than the model's context_length"):
        quantize(small_model(), "awq", calibration=np.zeros((2, 32), np.int64))
    with pytest.raises(ValueError, match=r"shape \(16,\)"):
        quantize(small_model(), "awq", calibration=IDS[0])
    model = quantize(small_model(), "gptq", calibration=IDS)
    with pytest.raises(ValueError, match="quantized already"):
        quantize(model, "awq", calibration=IDS)


@pytest.mark.parametrize("scheme", ["awq", "gptq"])
def test_an_included_output_layer_is_quantized_too(scheme):
    config = get_preset("tiny-llama", vocab_size=40, n_layer=1, d_model=64, context_length=16)
    model = Transformer(config, seed=0).eval()
    quantize(model, scheme, include=("lm_head",), calibration=IDS)
    assert isinstance(model.lm_head, QuantizedLinear) and model.lm_head.format == "q4_0"
    if scheme == "awq":  # nothing folded into the final norm: other heads read its output
        assert model.final_norm.weight.numpy().tolist() == [1.0] * 64


def test_calibrated_schemes_need_a_transformer():
    from tinyllm.nn.mlp import SwiGLU

    with pytest.raises(ValueError, match="a SwiGLU has no blocks"):
        quantize(SwiGLU(64, 128, seed=0), "gptq", calibration=IDS)


gguf = pytest.importorskip("gguf", reason="the gguf package is the reference (the 'dev' extra)")


@pytest.mark.parametrize("scheme", ["awq", "gptq"])
@pytest.mark.parametrize("preset", ["tiny-llama", "tiny"])
def test_calibrated_layers_hold_valid_q4_0_bytes(scheme, preset):
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    model = quantize(small_model(preset), scheme, calibration=IDS)
    layers = [m for _, m in model.named_modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.format == "q4_0" for m in layers)
    for layer in layers:
        parts = {k: b.numpy() for k, b in layer.weight.items()}
        data = formats.to_ggml(parts, "q4_0")  # llama.cpp's blocks
        ours = np.asarray(layer.dequantized()).T  # (out, in)
        np.testing.assert_array_equal(gguf_dequantize(data, GGMLQuantizationType.Q4_0), ours)


@pytest.mark.parametrize("scheme", ["awq", "gptq"])
def test_a_calibrated_model_folder_round_trips(tmp_path, scheme):
    model = quantize(small_model(), scheme, calibration=IDS)
    save_model(tmp_path, model)
    assert not list(tmp_path.glob("*.bin")) and (tmp_path / "model.safetensors").is_file()
    description = json.loads((tmp_path / "model.json").read_text())
    assert description["layers"]["blocks.1.mlp.down"]["format"] == "q4_0"
    loaded = load_model(tmp_path)
    ours, theirs = model.state_dict(), loaded.state_dict()
    assert sorted(ours) == sorted(theirs)
    assert all(np.array_equal(theirs[k], ours[k]) for k in ours)
    np.testing.assert_array_equal(loaded(IDS)[0].numpy(), model(IDS)[0].numpy())


def test_cli_quantize_gptq_writes_a_folder_that_eval_measures(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "fox.txt"
    corpus.write_text(TEXT)
    vocab = CharVocab.from_text(TEXT)
    config = get_preset("tiny-llama", vocab_size=vocab.vocab_size, n_layer=1, d_model=64)
    base = tmp_path / "base"
    Transformer(config.replace(context_length=16), seed=0).save_pretrained(base)
    vocab.save(base)
    calibration = ["--calibration", str(corpus), "--calibration-sequences", "8"]
    out = tmp_path / "g"
    assert main(["quantize", str(base), "--scheme", "gptq", "--out", str(out), *calibration]) == 0
    assert "gptq: linear weights" in capsys.readouterr().out
    layers = json.loads((out / "model.json").read_text())["layers"]
    assert {entry["format"] for entry in layers.values()} == {"q4_0"} and len(layers) == 7
    assert type(load_model_folder(out).blocks[0].mlp.down).__name__ == "QuantizedLinear"
    ppl = {}
    for folder in (base, out):
        assert main(["eval", "--model", str(folder), "--data", f"corpus:{corpus}"]) == 0
        ppl[folder] = json.loads((folder / "eval.json").read_text())["val_ppl"]
    assert abs(ppl[out] / ppl[base] - 1) < 0.05  # an untrained model: 4 bits change little
    too_many = ["--calibration", str(corpus), "--calibration-sequences", "1000"]
    assert main(["quantize", str(base), "--scheme", "awq", "--out", str(out), *too_many]) == 2
    assert "1000 sequences of 16 tokens need 16,000 tokens, got 2,430" in capsys.readouterr().err
    assert main(["quantize", str(out), "--scheme", "awq", "--out", str(tmp_path / "x")]) == 2
    assert "quantized already" in capsys.readouterr().err
