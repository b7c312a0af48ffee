"""The reward model in Hugging Face form: ``...ForSequenceClassification`` scores equal
``transformers``' both ways, on right-padded batches, and bad folders are named."""

import json

import numpy as np
import pytest

from tinyllm.models import Transformer, get_preset
from tinyllm.models.reward import RewardModel

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SHAPES = dict(vocab_size=50, context_length=16, n_layer=2, d_model=32, n_head=4)
CONFIGS = {
    "gpt2": get_preset("tiny", **SHAPES, dropout=0.1),  # dropout: eval mode must drop it
    "llama": get_preset("tiny-llama", **SHAPES, n_kv_head=2, d_ff=48),
}


def padded_batch(pad_token_id, seed=0):
    """Right-padded rows of several lengths, none ending in the pad id: (ids, lengths)."""
    rng = np.random.default_rng(seed)
    lengths = np.array([9, 3, 12, 1])
    ids = np.full((len(lengths), 12), pad_token_id)
    for row, length in enumerate(lengths):
        real = rng.integers(0, SHAPES["vocab_size"], length)
        real[-1] = (pad_token_id + 1 + real[-1]) % SHAPES["vocab_size"]  # not the pad id
        if row == 0:
            real[2] = pad_token_id  # a pad id inside a row is a token like any other
        ids[row, :length] = real
    return ids, lengths


def shaken(model):
    """``model`` with every parameter moved off its initial value (norms start at 1), so a
    mix-up of names shows; its own forward is then compared with HF's."""
    rng = np.random.default_rng(1)
    state = model.state_dict()
    model.load_state_dict({k: v + 0.1 * rng.standard_normal(v.shape) for k, v in state.items()})
    return model.eval()


def hf_scores(model, ids):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()  # (B, 1)


@pytest.mark.parametrize("family", CONFIGS)
@pytest.mark.parametrize("pad_token_id", [0, 7])
def test_saved_reward_model_scores_the_same_in_transformers(family, pad_token_id, tmp_path):
    ours = shaken(RewardModel(CONFIGS[family], seed=0, pad_token_id=pad_token_id))
    ours.save_pretrained(tmp_path)
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    name = {"gpt2": "GPT2", "llama": "Llama"}[family]
    assert type(theirs).__name__ == f"{name}ForSequenceClassification"
    assert theirs.config.num_labels == 1 and theirs.config.pad_token_id == pad_token_id
    ids, lengths = padded_batch(pad_token_id)
    scores = ours(ids, lengths).numpy()
    np.testing.assert_allclose(hf_scores(theirs, ids)[:, 0], scores, atol=1e-4, rtol=0)
    reloaded = RewardModel.from_pretrained(tmp_path)
    assert reloaded.pad_token_id == pad_token_id and not reloaded.training
    np.testing.assert_allclose(reloaded(ids, lengths).numpy(), scores, atol=1e-6, rtol=0)


def hf_classifier(family, path, **options):
    torch.manual_seed(0)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4,
                                         n_positions=16, **options)  # fmt: skip
        model = transformers.GPT2ForSequenceClassification(config)
    else:
        config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48,
                                          num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, **options)  # fmt: skip
        model = transformers.LlamaForSequenceClassification(config)
    with torch.no_grad():  # norms start at 1 and biases at 0: move them so a mix-up shows
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.eval().save_pretrained(path)
    return model


@pytest.mark.parametrize("family", CONFIGS)
def test_a_transformers_classifier_loads_with_equal_scores(family, tmp_path):
    theirs = hf_classifier(family, tmp_path, num_labels=1, pad_token_id=3)
    ours = RewardModel.from_pretrained(tmp_path)
    assert ours.pad_token_id == 3
    ids, lengths = padded_batch(3)
    np.testing.assert_allclose(
        ours(ids, lengths).numpy(), hf_scores(theirs, ids)[:, 0], atol=1e-4, rtol=0
    )


def test_a_pad_id_outside_the_vocabulary_reads_as_none(tmp_path):
    hf_classifier("gpt2", tmp_path, num_labels=1, pad_token_id=50256)  # GPT-2's own id
    assert json.loads((tmp_path / "config.json").read_text())["pad_token_id"] == 50256
    assert RewardModel.from_pretrained(tmp_path).pad_token_id is None


def test_checkpoints_keep_the_pad_id():
    model = RewardModel(CONFIGS["llama"], pad_token_id=5)
    assert RewardModel.from_description(model.describe()).pad_token_id == 5


def test_bad_folders_and_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"pad_token_id=50 is not a token of the vocabulary"):
        RewardModel(CONFIGS["gpt2"], pad_token_id=50)
    no_family = get_preset("tiny", **SHAPES, position="rope")  # GPT-2's MLP with RoPE
    with pytest.raises(ValueError, match="no Hugging Face architecture has position='rope'"):
        RewardModel(no_family).save_pretrained(tmp_path / "none")
    Transformer(CONFIGS["llama"]).save_pretrained(tmp_path / "lm")
    with pytest.raises(ValueError, match=r"architectures=\['LlamaForCausalLM'\]: expected "
                       r"\['LlamaForSequenceClassification'\]"):  # fmt: skip
        RewardModel.from_pretrained(tmp_path / "lm")
    hf_classifier("llama", tmp_path / "two", num_labels=2, pad_token_id=0)
    with pytest.raises(ValueError, match="the classifier has 2 labels: expected 1"):
        RewardModel.from_pretrained(tmp_path / "two")
