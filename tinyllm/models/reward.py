"""A reward model: the Transformer with a scalar head, scoring a whole conversation.

The language model's output layer is replaced by ``score``, a linear map from the final
hidden state to one number, read at the conversation's last token (the only position that
has seen all of it). Trained on preference pairs with the Bradley-Terry loss
(``tinyllm.train.preference``), its scores rank responses the way the pairs do; RLHF
optimises a policy against it, and DPO skips it by using the policy's own log-probabilities.

>>> from tinyllm.models import get_preset
>>> model = RewardModel(get_preset("tiny", vocab_size=20, n_layer=1, d_model=16), seed=0)
>>> model([[1, 2, 3, 0], [4, 5, 0, 0]], lengths=[3, 2]).shape   # right padding: ignored
(2,)

In Hugging Face form it is the family's ``...ForSequenceClassification`` with one label
(``LlamaForSequenceClassification``, ``GPT2ForSequenceClassification``): the same body and
weight names as the language model, ``score.weight`` for the head. transformers finds the
last token by itself, as the rightmost one that is not ``pad_token_id``; tinyllm is told
(``lengths``). The two agree on rows padded on the right with ``pad_token_id`` whose last
real token is another id - as ``preference_rows`` pads (id 0 by default) conversations that
end in ``<|end|>``.
"""

import numpy as np

from ..nn import Linear, Module
from .config import ModelConfig
from .hf import (
    FAMILIES,
    config_from_hf,
    config_to_hf,
    family_of,
    in_vocabulary,
    read_config,
    state_from_hf,
    state_to_hf,
    write_pretrained,
)
from .transformer import Transformer
from .weights import load_weights


class RewardModel(Module):
    """``score(hidden state at the last token)``: one number per sequence.

    ``pad_token_id`` is the id its batches are padded with, written to the Hugging Face
    form so that transformers reads each row where tinyllm does (None: transformers then
    scores only unpadded rows, one at a time).
    """

    def __init__(self, config, *, seed=0, pad_token_id=0):
        self.config = config
        self.pad_token_id = _checked_pad(pad_token_id, config.vocab_size)
        self.body = Transformer(config, seed=seed)
        self.body.lm_head = None  # the scalar head replaces the output layer
        rng = np.random.default_rng([seed, 1])
        self.score = Linear(
            config.d_model, 1, bias=False, std=1.0 / np.sqrt(config.d_model), seed=rng
        )

    @classmethod
    def from_language_model(cls, model, *, seed=0, pad_token_id=0):
        """A reward model whose body starts as ``model`` (a ``Transformer``, usually the
        SFT model); the head starts fresh."""
        reward = cls(model.config, seed=seed, pad_token_id=pad_token_id)
        weights = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head.")}
        reward.body.load_state_dict(weights)
        return reward

    def forward(self, ids, lengths):
        """Scores (B,) of ``ids`` (B, T), each row read at position ``lengths[b] - 1``."""
        x, _ = self.body.hidden_states(ids)  # (B, T, d_model)
        backend, (B, T) = x.backend, x.shape[:2]
        if not backend.owns(lengths) or backend.reads_values(lengths):  # (not traced)
            seen = np.asarray(lengths)
            if seen.shape != (B,) or seen.min() < 1 or seen.max() > T:
                raise ValueError(
                    f"RewardModel: lengths {seen.tolist()} must be ({B},) values in 1..{T}"
                )
        lengths = backend.asarray(lengths)  # under the compiled step, traced
        last = x[backend.xp.arange(B), lengths - 1]  # (B, d_model)
        return self.score(last).reshape(B)

    def describe(self):
        return {"config": self.config.to_dict(), "pad_token_id": self.pad_token_id}

    @classmethod
    def from_description(cls, description):
        config = ModelConfig.from_dict(description["config"])
        return cls(config, pad_token_id=description.get("pad_token_id", 0))

    # --- the Hugging Face form ----------------------------------------------------------------
    def has_hf_form(self):
        """Whether ``save_pretrained`` writes this model as it is (its body's family has a
        classifier class in Hugging Face)."""
        return self.body.has_hf_form()

    def save_pretrained(self, directory, dtype="float32"):
        """Write ``config.json`` + ``model.safetensors`` that transformers'
        ``AutoModelForSequenceClassification`` loads, scoring as this model does."""
        family = family_of(self.config)
        hf_config = {
            **config_to_hf(self.config),
            "architectures": [family.classifier],
            "id2label": {"0": "LABEL_0"},  # one label: transformers' num_labels=1
            "label2id": {"LABEL_0": 0},
            "pad_token_id": self.pad_token_id,
        }
        head = self.score.state_dict()["weight"].T  # (1, d_model): torch.nn.Linear's (out, in)
        tensors = {**state_to_hf(self.body, family), "score.weight": head}
        write_pretrained(directory, hf_config, tensors, dtype)

    @classmethod
    def from_pretrained(cls, directory):
        """Load a ``...ForSequenceClassification`` directory with one label (eval mode)."""
        hf_config = read_config(directory)
        config = config_from_hf(hf_config)  # an unknown model_type is an error here
        family = FAMILIES[hf_config["model_type"]]
        _check_classifier(hf_config, family, directory)
        pad_token_id = in_vocabulary(hf_config.get("pad_token_id"), config.vocab_size)
        model = cls(config, pad_token_id=pad_token_id)
        tensors = load_weights(directory)
        if "score.weight" not in tensors:
            raise KeyError(f"{directory}: the weights have no 'score.weight' (the reward head)")
        body = state_from_hf(model.body, family, tensors, directory)
        state = {f"body.{name}": array for name, array in body.items()}
        state["score.weight"] = tensors["score.weight"].astype(np.float32).T  # (d_model, 1)
        return model.load_state_dict(state).eval()


def _checked_pad(pad_token_id, vocab_size):
    """``pad_token_id`` if it is None or a token id of the vocabulary, else a clear error."""
    if pad_token_id is None or (isinstance(pad_token_id, int) and 0 <= pad_token_id < vocab_size):
        return pad_token_id
    raise ValueError(
        f"RewardModel: pad_token_id={pad_token_id!r} is not a token of the vocabulary "
        f"(expected None or an id from 0 to vocab_size - 1 = {vocab_size - 1})"
    )


def _check_classifier(hf_config, family, directory):
    """Raise unless ``hf_config`` is ``family``'s sequence classifier with one label."""
    architectures = hf_config.get("architectures")
    if architectures != [family.classifier]:
        raise ValueError(
            f"{directory}: config.json has architectures={architectures!r}: expected "
            f"[{family.classifier!r}] (a language model folder becomes a reward model through "
            "RewardModel.from_language_model(Transformer.from_pretrained(folder)))"
        )
    labels = (
        len(hf_config["id2label"]) if "id2label" in hf_config else hf_config.get("num_labels", 2)
    )
    if labels != 1:
        raise ValueError(
            f"{directory}: the classifier has {labels} labels: expected 1 (a reward model "
            "gives one score per sequence)"
        )
