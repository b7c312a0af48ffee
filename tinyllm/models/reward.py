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
"""

import numpy as np

from ..nn import Linear, Module
from .config import ModelConfig
from .transformer import Transformer


class RewardModel(Module):
    """``score(hidden state at the last token)``: one number per sequence."""

    def __init__(self, config, *, seed=0):
        self.config = config
        self.body = Transformer(config, seed=seed)
        self.body.lm_head = None  # the scalar head replaces the output layer
        rng = np.random.default_rng([seed, 1])
        self.score = Linear(
            config.d_model, 1, bias=False, std=1.0 / np.sqrt(config.d_model), seed=rng
        )

    @classmethod
    def from_language_model(cls, model, *, seed=0):
        """A reward model whose body starts as ``model`` (a ``Transformer``, usually the
        SFT model); the head starts fresh."""
        reward = cls(model.config, seed=seed)
        weights = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_head.")}
        reward.body.load_state_dict(weights)
        return reward

    def forward(self, ids, lengths):
        """Scores (B,) of ``ids`` (B, T), each row read at position ``lengths[b] - 1``."""
        x, _ = self.body.hidden_states(ids)  # (B, T, d_model)
        lengths = np.asarray(lengths)
        B, T = x.shape[0], x.shape[1]
        if lengths.shape != (B,) or lengths.min() < 1 or lengths.max() > T:
            raise ValueError(
                f"RewardModel: lengths {lengths.tolist()} must be ({B},) values in 1..{T}"
            )
        last = x[np.arange(B), lengths - 1]  # (B, d_model)
        return self.score(last).reshape(B)

    def describe(self):
        return {"config": self.config.to_dict()}

    @classmethod
    def from_description(cls, description):
        return cls(ModelConfig.from_dict(description["config"]))
