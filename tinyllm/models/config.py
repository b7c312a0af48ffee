"""``ModelConfig``: every shape and option of a decoder-only transformer, in one dataclass.

Three families differ in a handful of switches, and the presets name them:

| switch         | GPT-2        | Llama / Mistral / Qwen  | Mixtral            |
|----------------|--------------|-------------------------|--------------------|
| `position`     | `"learned"`  | `"rope"`                | `"rope"`           |
| `norm`         | `"layernorm"`| `"rmsnorm"`             | `"rmsnorm"`        |
| `mlp`          | `"gelu"`     | `"swiglu"`              | `"swiglu"` experts |
| `n_kv_head`    | `= n_head`   | fewer (grouped-query)   | fewer              |
| `qk_norm`      | False        | Qwen3: True             | False              |
| `n_expert`     | 0            | 0                       | 8, `top_k` 2       |

>>> config = get_preset("tiny")
>>> config.d_model, config.n_head, config.head_dim
(128, 4, 32)
>>> ModelConfig(d_model=100, n_head=3)
Traceback (most recent call last):
...
ValueError: ModelConfig: d_model=100 is not divisible by n_head=3; each head gets d_model / n_head features (or set d_head)
"""

import dataclasses

from ..config import Config

ROPE_SCALINGS = ("linear", "dynamic", "yarn", "llama3")


@dataclasses.dataclass(frozen=True)
class ModelConfig(Config):
    vocab_size: int = 65
    context_length: int = 64  # the longest sequence the model accepts
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: as many as n_head (multi-head); 1: multi-query
    d_head: int | None = None  # features per head; None: d_model / n_head (Mistral NeMo: 128)
    d_ff: int | None = None  # hidden width of the MLP; None: 4 * d_model (GELU) or Llama's 8/3
    mlp: str = "gelu"  # "gelu" (two matrices) or "swiglu" (gate, up, down)
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    norm_eps: float = 1e-5
    position: str = "learned"  # "learned" absolute positions or "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"type": "linear"|"dynamic"|"yarn"|"llama3", "factor": ..}
    sliding_window: int | None = None  # each query sees at most this many keys (Mistral)
    bias: bool = True  # biases in the attention output and MLP projections
    qkv_bias: bool = True  # biases in the query/key/value projections (GPT-2, Qwen2)
    qk_norm: bool = False  # RMSNorm over each query and key head before RoPE (Qwen3)
    tie_embeddings: bool = True  # the output layer reuses the token embedding matrix
    dropout: float = 0.0
    n_expert: int = 0  # 0: a dense MLP in every block; else a mixture of this many experts
    top_k: int = 2  # experts each token is routed to
    norm_top_k: bool = True  # gates: the chosen probabilities renormalized (Mixtral) or as they are
    router_aux_loss_coef: float = 0.01  # weight of the load-balancing loss in the total loss
    init_std: float = 0.02
    # the ids that begin and end a text, written to config.json; None: the model has none.
    # The tokenizer decides them: eos_token_id=tokenizer.special_tokens["<|endoftext|>"]
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None  # Llama 3 ends on any of several

    def __post_init__(self):
        def fail(message):
            raise ValueError(f"ModelConfig: {message}")

        for name in ("vocab_size", "context_length", "d_model", "n_layer", "n_head"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                fail(f"{name}={getattr(self, name)!r} must be a positive integer")
        if self.d_head is not None and (not isinstance(self.d_head, int) or self.d_head < 1):
            fail(f"d_head={self.d_head!r} must be a positive integer or None (d_model / n_head)")
        if self.d_head is None and self.d_model % self.n_head:
            fail(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}; "
                "each head gets d_model / n_head features (or set d_head)"
            )
        if self.n_kv_head is not None and (self.n_kv_head < 1 or self.n_head % self.n_kv_head):
            fail(
                f"n_head={self.n_head} is not divisible by n_kv_head={self.n_kv_head}; "
                "each key/value head must serve the same number of query heads"
            )
        for name, allowed in (
            ("mlp", ("gelu", "swiglu")),
            ("norm", ("layernorm", "rmsnorm")),
            ("position", ("learned", "rope")),
        ):
            if getattr(self, name) not in allowed:
                fail(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if self.position == "rope" and self.head_dim % 2:
            fail(f"RoPE rotates pairs of features, so head_dim={self.head_dim} must be even")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("type")
            if kind not in ROPE_SCALINGS:
                fail(f"rope_scaling type {kind!r} is not one of {ROPE_SCALINGS}")
            if not self.rope_scaling.get("factor", 0) >= 1:
                fail(f"rope_scaling factor {self.rope_scaling.get('factor')!r} must be >= 1")
            if kind == "llama3":
                low, high, original = (
                    self.rope_scaling.get(k)
                    for k in ("low_freq_factor", "high_freq_factor", "original_context_length")
                )
                numbers = all(isinstance(v, (int, float)) for v in (low, high, original))
                if not (numbers and 0 < low < high and original >= 1):
                    fail(
                        "llama3 rope_scaling needs 0 < low_freq_factor < high_freq_factor and "
                        f"original_context_length >= 1; got low_freq_factor={low!r}, "
                        f"high_freq_factor={high!r}, original_context_length={original!r}"
                    )
        if self.n_expert < 0:
            fail(f"n_expert={self.n_expert} must be 0 (dense) or a positive expert count")
        if self.n_expert and not 1 <= self.top_k <= self.n_expert:
            fail(f"top_k={self.top_k} must be between 1 and n_expert={self.n_expert}")
        if not 0.0 <= self.dropout < 1.0:
            fail(f"dropout={self.dropout} must be in [0, 1)")
        for name in ("bos_token_id", "eos_token_id"):
            ids = getattr(self, name)
            ids = ids if isinstance(ids, list) else [] if ids is None else [ids]
            if not all(isinstance(i, int) and 0 <= i < self.vocab_size for i in ids):
                fail(
                    f"{name}={getattr(self, name)!r} is not a token of the vocabulary "
                    f"(expected None or ids from 0 to vocab_size - 1 = {self.vocab_size - 1})"
                )

    @property
    def head_dim(self):
        """Features per head: ``d_head``, or ``d_model / n_head`` when it is None."""
        return self.d_head or self.d_model // self.n_head

    @property
    def kv_heads(self):
        """The number of key/value heads, with ``None`` resolved to ``n_head``."""
        return self.n_kv_head or self.n_head

    @property
    def ff_dim(self):
        """The MLP hidden width, with ``None`` resolved per MLP kind."""
        if self.d_ff is not None:
            return self.d_ff
        if self.mlp == "gelu":
            return 4 * self.d_model
        return 256 * -(-(8 * self.d_model // 3) // 256)  # Llama: 8/3 d, rounded up to 256


_LLAMA = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False,
    tie_embeddings=False, norm_eps=1e-5,
)  # fmt: skip

PRESETS = {
    # nanoGPT's CPU recipe for Shakespeare characters
    "tiny": ModelConfig(),
    # nanoGPT's GPU recipe for Shakespeare characters
    "small": ModelConfig(context_length=256, d_model=384, n_layer=6, n_head=6, dropout=0.2),
    "tiny-llama": ModelConfig(n_kv_head=2, d_ff=384, **_LLAMA),
    # two Llama blocks, the MLP as wide in FLOPs as GELU's 4x: the CPU speedrun's model
    "tiny-llama-shallow": ModelConfig(n_layer=2, d_ff=352, **_LLAMA),
    "tiny-moe": ModelConfig(n_kv_head=2, d_ff=256, n_expert=4, top_k=2, **_LLAMA),
    # the shapes of the real families at their smallest published sizes
    "gpt2-like": ModelConfig(
        vocab_size=50257, context_length=1024, d_model=768, n_layer=12, n_head=12
    ),
    "llama-like": ModelConfig(  # TinyLlama-1.1B
        vocab_size=32000,
        context_length=2048,
        d_model=2048,
        n_layer=22,
        n_head=32,
        n_kv_head=4,
        d_ff=5632,
        **_LLAMA,
    ),  # fmt: skip
    "mixtral-like": ModelConfig(  # Mixtral-8x7B
        vocab_size=32000,
        context_length=32768,
        d_model=4096,
        n_layer=32,
        n_head=32,
        n_kv_head=8,
        d_ff=14336,
        n_expert=8,
        top_k=2,
        rope_theta=1e6,
        **_LLAMA,
    ),  # fmt: skip
}


def get_preset(name, **changes):
    """The preset config ``name``, with any fields in ``changes`` replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**changes)
