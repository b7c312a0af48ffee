"""LoRA fine-tuning as a run: supervised fine-tuning (``sft.py``) with the pretrained model
frozen and only low-rank adapters trained (``tinyllm.nn.lora``).

1. Load the model and its tokenizer, freeze it and give the ``--targets`` layers adapters
   of rank ``--r``: a few percent of the parameters train, and AdamW keeps moments for
   those alone.
2. Let the embedding rows of some tokens train too (``--tokens``, PEFT's trainable
   tokens): the chat template's, and by default every token of the training data. A
   model pretrained on prose has never read the chat tokens, hardly ever a digit, and
   learned never to predict them, which pushed their rows one way (the speedrun model's
   digits: cosine 0.85 to each other, 0.15 between other tokens). Frozen, those rows
   leave the adapters a model that barely tells ``3`` from ``7``: on the tasks, adapters
   alone stayed at 0% right.
3. Data, training, evaluations and the held-out measures before and after: SFT's own.
4. Write the adapter into the run folder in PEFT's format (``adapter_config.json``,
   ``adapter_model.safetensors``; ``peft.PeftModel.from_pretrained`` reads it on top of the
   model folder in ``transformers``), and with ``--merge`` the model with the adapter
   folded in, a plain model folder, in ``<out>/merged``. ``lora.json`` holds SFT's measures
   and what the adapter costs: its parameters and bytes, and the share of the model's
   parameters that trained.

The checkpoints hold the whole adapted model and say which adapters it has, so
``load_model`` rebuilds it from one; ``--resume`` builds the same adapters on ``--model``
(they depend on the flags alone) and loads the latest checkpoint into them.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..models.adapters import save_adapter
from ..nn.lora import (
    add_trainable_tokens,
    apply_lora,
    check_alpha,
    lora_summary,
    merge_and_unload,
)
from ..tokenizer.chat import CHAT_SPECIAL_TOKENS
from ..train import TrainConfig
from .sft import SFTConfig, fine_tune

# LoRA's training defaults: twice SFT's steps at a higher peak learning rate (the adapters
# start at zero and learn slower than the whole model does), and no weight decay (it would
# pull the update back to zero). Measured from the speedrun model on the default tasks:
# full SFT 0.58 held-out accuracy in 400 steps; these adapters, 3.8% of the parameters,
# 0.34 in 400 steps and 0.55 in 800 (lr 1e-2 and 2e-2 did worse, alpha 64 diverged).
TRAIN_DEFAULTS = dict(steps=800, batch_size=8, lr=5e-3, min_lr=5e-4, eval_interval=100,
                      weight_decay=0.0)  # fmt: skip


TOKEN_CHOICES = ("none", "chat", "data")


@dataclass(frozen=True)
class LoRAConfig(SFTConfig):
    out: str = field(default="runs/lora", metadata={"help": "the run folder"})
    r: int = field(default=8, metadata={"help": "the adapters' rank"})
    alpha: float = field(
        default=16.0, metadata={"help": "the adapters' update is scaled by alpha / r"}
    )
    targets: str = field(
        default="q_proj,k_proj,v_proj,o_proj",
        metadata={
            "help": "the layers adapted, comma-separated ends of their paths, wildcards allowed: "
            "q_proj, k_proj, v_proj, o_proj, mlp.up, mlp.down, mlp.gate, mlp.*, lm_head, "
            "or PEFT's names (c_attn, gate_proj, ...)"
        },
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' input"})
    tokens: str = field(
        default="data",
        metadata={
            "help": "whose embedding rows train too: those of the chat template's tokens, "
            "which a pretrained model has never read (chat), of every token in the training "
            "data (data), or none",
            "choices": TOKEN_CHOICES,
        },
    )
    merge: bool = field(
        default=False, metadata={"help": "also write the model with the adapter merged in"}
    )

    COUNTS = (*SFTConfig.COUNTS, "r")

    def __post_init__(self):
        super().__post_init__()
        check_alpha(self.alpha)
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRAConfig: dropout={self.dropout!r}: expected a number in [0, 1)")
        if not self.target_names:
            raise ValueError(f"LoRAConfig: targets={self.targets!r}: expected layer names")
        if self.tokens not in TOKEN_CHOICES:
            raise ValueError(
                f"LoRAConfig: tokens={self.tokens!r}: expected one of {', '.join(TOKEN_CHOICES)}"
            )

    @property
    def target_names(self):
        """The layer names of the comma-separated ``targets``."""
        return [t.strip() for t in self.targets.split(",") if t.strip()]


class LoRAStep:
    """``fine_tune``'s step for LoRA: adapters on before training, written after."""

    def __init__(self, config):
        self.config = config

    def prepare(self, model, tokenizer, rows):
        c = self.config
        apply_lora(model, c.r, c.alpha, c.target_names, dropout=c.dropout)
        if c.tokens != "none":
            chat = [tokenizer.special_tokens[t] for t in CHAT_SPECIAL_TOKENS]
            data = np.unique(rows.ids[rows.documents >= 0]).tolist()  # the padding left out
            add_trainable_tokens(model, chat if c.tokens == "chat" else chat + data)
        return lora_summary(model)

    def finish(self, model, tokenizer):
        out = Path(self.config.out)
        save_adapter(model, out, base_model=Path(self.config.model).resolve())
        if not self.config.merge:
            return {}
        merged = out / "merged"
        merge_and_unload(model).save_pretrained(merged)
        tokenizer.save(merged, model_max_length=model.config.context_length)
        return {"merged": str(merged)}


def lora(config, train=None):
    """Run the recipe in the module docstring; returns an ``SFTRun`` (its model keeps its
    adapters, or holds them merged with ``merge``)."""
    train = TrainConfig(**TRAIN_DEFAULTS) if train is None else train
    return fine_tune(config, train, "lora", LoRAStep(config))
