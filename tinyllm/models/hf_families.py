"""The Hugging Face families tinyllm reads and writes: one record each.

Each record says what ``hf.py`` needs to translate one ``transformers`` architecture:

- ``switches``: the :class:`ModelConfig` options every model of the family has;
- ``config_keys``: our field -> its ``config.json`` key (a tuple: read the first, write all),
  and ``defaults``: the value ``transformers`` assumes for a key that is missing;
- ``pinned``: ``config.json`` options tinyllm implements one way only (the first value is
  written; reading any other is an error), and ``written``: entries written as they are;
- ``weights``: where our tensors sit in the checkpoint, and ``moe``: where the experts sit;
- ``classifier``: the architecture with a one-number head (``score``) in place of the output
  layer, on the same body and weight names: how a reward model is written.

A family can hold a config only if it has a key for each option the config sets away from
the implied value: grouped-query attention needs ``n_kv_head``'s key, a head width other
than ``d_model / n_head`` needs ``d_head``'s, a sliding window needs ``sliding_window``'s.
So adding a family (Gemma, Phi) is adding a record here, and nothing in ``hf.py``.

>>> FAMILIES["mixtral"].architecture, FAMILIES["mixtral"].moe.expert_weights["gate"]
('MixtralForCausalLM', 'w1')
>>> FAMILIES["qwen3"].classifier
'Qwen3ForSequenceClassification'
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class WeightNames:
    """Where a family keeps each of our tensors (names without ``.weight`` / ``.bias``)."""

    prefix: str  # in front of every name but lm_head's (very old GPT-2 files leave it out)
    embedding: str
    block: str  # one transformer block, "{i}" its index
    block_names: dict  # ours -> theirs inside a block; ours sharing one name sit side by side
    final_norm: str
    position_embedding: str | None = None  # learned positions only
    # block projections are torch.nn.Linear, stored (out, in): transposed from our (in, out).
    # GPT-2's Conv1D stores (in, out) as we do. The output layer is an nn.Linear everywhere.
    out_in: bool = True


@dataclasses.dataclass(frozen=True)
class MoELayout:
    """Where a mixture-of-experts family keeps the router and experts inside a block."""

    count_key: str  # config.json's name for the expert count (either spelling is read)
    router: str
    experts: str  # one expert, "{e}" its index
    expert_weights: dict  # our SwiGLU's matrices -> theirs


@dataclasses.dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str
    classifier: str
    switches: dict
    config_keys: dict
    defaults: dict
    weights: WeightNames
    pinned: dict = dataclasses.field(default_factory=dict)
    written: dict = dataclasses.field(default_factory=dict)
    moe: MoELayout | None = None


# ours has only the ids its config names, not transformers' defaults (GPT-2's 50256)
_TOKEN_KEYS = dict(bos_token_id="bos_token_id", eos_token_id="eos_token_id")
_TOKEN_DEFAULTS = {"bos_token_id": None, "eos_token_id": None}


# --- GPT-2 ----------------------------------------------------------------------------------
GPT2 = Family(
    model_type="gpt2",
    architecture="GPT2LMHeadModel",
    classifier="GPT2ForSequenceClassification",
    switches=dict(
        position="learned", norm="layernorm", mlp="gelu", bias=True, qkv_bias=True, qk_norm=False
    ),
    config_keys=dict(
        vocab_size="vocab_size",
        context_length="n_positions",
        d_model="n_embd",
        n_layer="n_layer",
        n_head="n_head",
        d_ff="n_inner",
        norm_eps="layer_norm_epsilon",
        tie_embeddings="tie_word_embeddings",
        dropout=("resid_pdrop", "embd_pdrop"),  # ours drops after the embeddings and branches
        init_std="initializer_range",
        **_TOKEN_KEYS,
    ),
    defaults={
        "n_positions": 1024,
        "n_inner": None,
        "layer_norm_epsilon": 1e-5,
        "tie_word_embeddings": True,
        "resid_pdrop": 0.0,
        "initializer_range": 0.02,
        **_TOKEN_DEFAULTS,
    },
    pinned={
        "activation_function": ("gelu_new", "gelu_pytorch_tanh"),  # the same tanh GELU
        "scale_attn_weights": (True,),
        "scale_attn_by_inverse_layer_idx": (False,),
    },
    written={"attn_pdrop": 0.0},  # ours never drops attention probabilities
    weights=WeightNames(
        prefix="transformer.",
        embedding="wte",
        position_embedding="wpe",
        block="h.{i}.",
        block_names={
            "attention_norm": "ln_1",
            "attention.q_proj": "attn.c_attn",  # query, key and value in one matrix
            "attention.k_proj": "attn.c_attn",
            "attention.v_proj": "attn.c_attn",
            "attention.o_proj": "attn.c_proj",
            "mlp_norm": "ln_2",
            "mlp.up": "mlp.c_fc",
            "mlp.down": "mlp.c_proj",
        },
        final_norm="ln_f",
        out_in=False,
    ),
)


# --- the Llama family: RoPE, RMSNorm, SwiGLU, no biases -------------------------------------
_LLAMA_SWITCHES = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False, qk_norm=False
)
_LLAMA_KEYS = dict(  # context_length and the RoPE options are read by hf.py's RoPE reader
    vocab_size="vocab_size",
    d_model="hidden_size",
    n_layer="num_hidden_layers",
    n_head="num_attention_heads",
    n_kv_head="num_key_value_heads",
    d_head="head_dim",
    d_ff="intermediate_size",
    norm_eps="rms_norm_eps",
    tie_embeddings="tie_word_embeddings",
    init_std="initializer_range",
    **_TOKEN_KEYS,
)
_LLAMA_DEFAULTS = {
    "num_key_value_heads": None, "head_dim": None, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "initializer_range": 0.02, **_TOKEN_DEFAULTS,
}  # fmt: skip
_LLAMA_WEIGHTS = WeightNames(
    prefix="model.",
    embedding="embed_tokens",
    block="layers.{i}.",
    block_names={
        "attention_norm": "input_layernorm",
        **{f"attention.{p}_proj": f"self_attn.{p}_proj" for p in "qkvo"},
        **{f"attention.{p}_norm": f"self_attn.{p}_norm" for p in "qk"},  # Qwen3
        "mlp_norm": "post_attention_layernorm",
        **{f"mlp.{p}": f"mlp.{p}_proj" for p in ("gate", "up", "down")},
    },
    final_norm="norm",
)
_NO_ATTENTION_DROPOUT = {"attention_dropout": 0.0}  # ours drops no attention probabilities
_MOE_KEYS = dict(top_k="num_experts_per_tok", router_aux_loss_coef="router_aux_loss_coef")
_MOE_DEFAULTS = {"num_experts_per_tok": 2, "router_aux_loss_coef": 0.01}


def _llama_like(model_type, name, *, switches=(), keys=(), defaults=(), **options):
    """A record that differs from Llama's in the given switches, keys and options; ``name``
    is the architectures' prefix (``"Llama"``: LlamaForCausalLM, LlamaForSequenceClassification)."""
    return Family(
        model_type=model_type,
        architecture=f"{name}ForCausalLM",
        classifier=f"{name}ForSequenceClassification",
        switches={**_LLAMA_SWITCHES, **dict(switches)},
        config_keys={**_LLAMA_KEYS, **dict(keys)},
        defaults={**_LLAMA_DEFAULTS, **dict(defaults)},
        weights=_LLAMA_WEIGHTS,
        written=_NO_ATTENTION_DROPOUT,
        **options,
    )


_SILU = {"hidden_act": ("silu",)}
_WINDOW = {"sliding_window": "sliding_window"}
_NO_WINDOW = {"use_sliding_window": (False,)}  # Qwen: a window in some layers only

LLAMA = _llama_like(
    "llama",
    "Llama",
    pinned={**_SILU, "attention_bias": (False,), "mlp_bias": (False,)},
)
MISTRAL = _llama_like(
    "mistral",
    "Mistral",
    keys=_WINDOW,
    defaults={"sliding_window": None},
    pinned=_SILU,
)
QWEN2 = _llama_like(
    "qwen2",
    "Qwen2",
    switches={"qkv_bias": True},  # always, whatever attention_bias says
    pinned={**_SILU, **_NO_WINDOW},
)
QWEN3 = _llama_like(
    "qwen3",
    "Qwen3",
    switches={"qk_norm": True},
    pinned={**_SILU, "attention_bias": (False,), **_NO_WINDOW},
)
MIXTRAL = _llama_like(
    "mixtral",
    "Mixtral",
    switches={"norm_top_k": True},
    keys={**_WINDOW, **_MOE_KEYS},
    defaults={"sliding_window": None, **_MOE_DEFAULTS},
    pinned=_SILU,
    moe=MoELayout(
        count_key="num_local_experts",
        router="block_sparse_moe.gate",
        experts="block_sparse_moe.experts.{e}.",
        expert_weights={"gate": "w1", "down": "w2", "up": "w3"},
    ),
)
QWEN3_MOE = _llama_like(
    "qwen3_moe",
    "Qwen3Moe",
    switches={"qk_norm": True},
    keys={"d_ff": "moe_intermediate_size", "norm_top_k": "norm_topk_prob", **_MOE_KEYS},
    defaults={"norm_topk_prob": False, **_MOE_DEFAULTS},
    pinned={
        **_SILU,
        "attention_bias": (False,),
        **_NO_WINDOW,
        "mlp_only_layers": ([], None),
        "decoder_sparse_step": (1,),  # every layer a mixture
    },
    moe=MoELayout(
        count_key="num_experts",
        router="mlp.gate",
        experts="mlp.experts.{e}.",
        expert_weights={p: f"{p}_proj" for p in ("gate", "up", "down")},
    ),
)

# In the order a config is matched: the first family that can hold it is the one written.
FAMILIES = {f.model_type: f for f in (GPT2, LLAMA, MISTRAL, QWEN2, QWEN3, MIXTRAL, QWEN3_MOE)}
