"""LoRA fine-tuning as a run: supervised fine-tuning (``sft.py``) with the pretrained model
frozen and only low-rank adapters trained (``tinyllm.nn.lora``).

1. Load the model and its tokenizer, freeze it and give the ``--targets`` layers adapters
   of rank ``--r``: a few percent of the parameters train, and AdamW keeps moments for
   those alone. With ``--quantize q4_0`` (QLoRA) the frozen model's linear layers are first
   stored in that format (``tinyllm.quant``) and dequantized on the fly in every forward
   and backward pass; the adapters stay float32.
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
   folded in, a plain model folder, in ``<out>/merged`` (float32 on a quantized base: the
   dequantized weights plus the update). ``lora.json`` holds SFT's measures and what the
   adapter costs: its parameters and bytes, the share of the model's parameters that
   trained, and the memory the run's weights, gradients and AdamW's moments take against
   LoRA on the float model and full fine-tuning (``memory_report``; printed at the end).

The adapter is the same whether the base was quantized or not: PEFT loads it on the float
model folder. The checkpoints hold the whole adapted model, quantized layers included, and
say which adapters and quantized layers it has, so ``load_model`` rebuilds it from one;
``--resume`` quantizes ``--model`` and builds the same adapters on it (they depend on the
flags alone) and loads the latest checkpoint into them.
"""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..models.adapters import save_adapter
from ..nn import Linear
from ..nn.lora import add_trainable_tokens, apply_lora, lora_summary, merge_and_unload
from ..nn.lora_layer import check_alpha
from ..quant import SCHEMES, QuantizedLinear, quantize
from ..tokenizer.chat import CHAT_SPECIAL_TOKENS
from ..train import TrainConfig
from ..train.sharding import is_main_process, on_host
from .sft import SFTConfig, fine_tune

# LoRA's training defaults: twice SFT's steps at a higher peak learning rate (the adapters
# start at zero and learn slower than the whole model does), and no weight decay (it would
# pull the update back to zero). Measured from the speedrun's earlier model (`tiny`) on the
# default tasks: full SFT 0.58 held-out accuracy in 400 steps; these adapters, 3.8% of the
# parameters, 0.34 in 400 steps and 0.55 in 800 (lr 1e-2 and 2e-2 did worse, alpha 64
# diverged).
TRAIN_DEFAULTS = dict(steps=800, batch_size=8, lr=5e-3, min_lr=5e-4, eval_interval=100,
                      weight_decay=0.0)  # fmt: skip

# The schemes a frozen base can take here: those that round without calibration text
ROUNDED = tuple(name for name, scheme in SCHEMES.items() if scheme.calibrate is None)


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
    quantize: str = field(
        default="none",
        metadata={
            "help": "store the frozen model's linear layers in this format before adding the "
            "adapters (QLoRA: q4_0), dequantized on the fly; the output layer stays float32",
            "choices": ("none", *ROUNDED),
        },
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
        if self.quantize != "none" and self.quantize not in ROUNDED:
            raise ValueError(
                f"LoRAConfig: quantize={self.quantize!r}: expected none or a quantization "
                f"scheme that needs no calibration text: {', '.join(ROUNDED)}"
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
        facts = {} if c.quantize == "none" else {"quantized": quantize_base(model, c.quantize)}
        apply_lora(model, c.r, c.alpha, c.target_names, dropout=c.dropout)
        if c.tokens != "none":
            chat = [tokenizer.special_tokens[t] for t in CHAT_SPECIAL_TOKENS]
            data = np.unique(rows.ids[rows.documents >= 0]).tolist()  # the padding left out
            add_trainable_tokens(model, chat if c.tokens == "chat" else chat + data)
        return facts | lora_summary(model)

    def finish(self, model, tokenizer):
        out = Path(self.config.out)
        memory = memory_report(model)
        print(memory_table(memory))
        merged = out / "merged" if self.config.merge else None
        with on_host(model.parameters()):  # over several processes: all gather, 0 writes
            if is_main_process():
                save_adapter(model, out, base_model=Path(self.config.model).resolve())
                if merged is not None:
                    merge_and_unload(model).save_pretrained(merged)
                    tokenizer.save(merged, model_max_length=model.config.context_length)
        return {"memory": memory} | ({} if merged is None else {"merged": str(merged)})


def quantize_base(model, scheme):
    """Quantize ``model``'s linear layers with ``scheme`` in place and say what became of
    each: ``{"scheme": .., "layers": {format: count}, "float": [paths]}``, printed too. A layer
    whose rows a block format cannot hold falls back to int8 (``quantize`` warns); the
    output layer stays float32."""
    quantize(model, scheme)
    counts, kept = {}, []
    for path, layer in model.named_modules():
        if isinstance(layer, QuantizedLinear):
            counts[layer.format] = counts.get(layer.format, 0) + 1
        elif isinstance(layer, Linear):
            kept.append(path)
    told = ", ".join(f"{n} in {f}" for f, n in counts.items())
    print(f"quantized the frozen model's linear layers: {told}; in float32: {kept or 'none'}")
    return {"scheme": scheme, "layers": counts, "float": kept}


def memory_report(model):
    """Bytes a fine-tuning run keeps for ``model`` (adapted, its base quantized or not),
    activations aside: ``{run: {"base", "adapter", "gradients", "optimizer", "total"}}``.

    ``base`` is the model's own weights as stored, ``adapter`` what was added to train
    (adapters, trainable token rows and their ids), ``gradients`` one float per trained number and
    ``optimizer`` AdamW's two moments per trained number. The runs: ``qlora`` (this model,
    where its base is quantized), ``lora`` (the same adapters on the float base: each
    quantized weight as float32) and ``full`` (the float model, every weight trained).

    >>> from tinyllm.models import Transformer, get_preset
    >>> model = apply_lora(Transformer(get_preset("tiny", n_layer=1, d_model=32, n_head=2)), r=2)
    >>> report = memory_report(model)
    >>> report["lora"]["optimizer"] == 2 * report["lora"]["adapter"]    # m and v per number
    True
    >>> report["full"]["adapter"], report["full"]["gradients"] == report["full"]["base"]
    (0, True)
    """
    trained = sum(_bytes(p) for p in model.parameters() if p.requires_grad)
    frozen = sum(_bytes(p) for p in model.parameters() if not p.requires_grad)
    packed = unpacked = 0  # the quantized weights: as stored, and as float32
    for _, layer in model.named_modules():
        if isinstance(layer, QuantizedLinear):
            packed += sum(_bytes(part) for part in layer.weight.values())
            unpacked += layer.in_features * layer.out_features * np.dtype(np.float32).itemsize
    added = sum(_bytes(b) for _, b in model.named_buffers()) - packed  # trainable token ids
    runs = {"qlora": (frozen + packed, trained + added)} if packed else {}  # (base, adapter)
    runs["lora"] = (frozen + unpacked, trained + added)
    runs["full"] = (frozen + unpacked, 0)
    report = {}
    for run, (base, adapter) in runs.items():
        learned = base if run == "full" else trained  # full: every weight trains
        row = {"base": base, "adapter": adapter, "gradients": learned, "optimizer": 2 * learned}
        report[run] = {**row, "total": sum(row.values())}
    return report


def memory_table(report):
    """``memory_report`` as a table, in MB."""
    columns = ("base", "adapter", "gradients", "optimizer", "total")
    lines = ["memory to fine-tune, MB (weights, gradients, AdamW's moments; activations aside):",
             f"  {'':6}" + "".join(f"{c:>11}" for c in columns)]  # fmt: skip
    for run, row in report.items():
        lines.append(f"  {run:6}" + "".join(f"{row[c] / 1e6:>11.3f}" for c in columns))
    return "\n".join(lines)


def _bytes(tensor):
    return tensor.size * tensor.dtype.itemsize


def lora(config, train=None):
    """Run the recipe in the module docstring; returns an ``SFTRun`` (its model keeps its
    adapters, or holds them merged with ``merge``)."""
    train = TrainConfig(**TRAIN_DEFAULTS) if train is None else train
    return fine_tune(config, train, "lora", LoRAStep(config))
