"""Back-of-the-envelope sums for any ``ModelConfig``: parameters, FLOPs, memory.

Before training or serving a model it pays to know three numbers: how many parameters it
has, how much arithmetic a token costs, and how many bytes it needs. All three follow from
the config alone, with no arrays built, so the same sums work for a 1M-parameter toy and
for the published shapes of real models in ``KNOWN_MODELS``.

>>> llama = KNOWN_MODELS["llama-2-7b"]
>>> f"{parameter_count(llama).total:,}"
'6,738,415,616'
>>> weight_bytes(llama, bits=16) / GB  # 2 bytes a parameter
13.476831232
>>> kv_cache_bytes(llama, seq_len=4096) / GiB  # keys and values of 4096 tokens, 16 bits
2.0

Sizes are in bytes; ``GB`` (10**9, what model cards and GPU spec sheets mean) and
``GiB`` (2**30, what ``nvidia-smi`` shows) turn them into readable units.
"""

import dataclasses
import math
import numbers

from .models.config import ModelConfig

GB = 10**9
GiB = 2**30

# Published shapes, from each model's config.json on the Hugging Face Hub.
# fmt: off
_LLAMA = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False,
    tie_embeddings=False,
)
KNOWN_MODELS = {
    # openai-community/gpt2: n_embd 768, n_layer 12, n_head 12, n_positions 1024
    "gpt2": ModelConfig(vocab_size=50257, context_length=1024, d_model=768, n_layer=12, n_head=12),
    # meta-llama/Llama-2-7b-hf: multi-head attention, every head keeps its own keys
    "llama-2-7b": ModelConfig(
        vocab_size=32000, context_length=4096, d_model=4096, n_layer=32, n_head=32,
        d_ff=11008, **_LLAMA,
    ),
    # meta-llama/Meta-Llama-3-8B: grouped-query attention, a 4x larger vocabulary
    "llama-3-8b": ModelConfig(
        vocab_size=128256, context_length=8192, d_model=4096, n_layer=32, n_head=32,
        n_kv_head=8, d_ff=14336, rope_theta=500000.0, **_LLAMA,
    ),
    # mistralai/Mistral-7B-v0.1
    "mistral-7b": ModelConfig(
        vocab_size=32000, context_length=32768, d_model=4096, n_layer=32, n_head=32,
        n_kv_head=8, d_ff=14336, sliding_window=4096, **_LLAMA,
    ),
    # mistralai/Mixtral-8x7B-v0.1: Mistral's blocks with 8 experts per MLP, 2 per token
    "mixtral-8x7b": ModelConfig(
        vocab_size=32000, context_length=32768, d_model=4096, n_layer=32, n_head=32,
        n_kv_head=8, d_ff=14336, n_expert=8, top_k=2, rope_theta=1e6, **_LLAMA,
    ),
    # Qwen/Qwen2.5-32B: Llama's shape plus biases on the query, key and value projections
    "qwen2.5-32b": ModelConfig(
        vocab_size=152064, context_length=131072, d_model=5120, n_layer=64, n_head=40,
        n_kv_head=8, d_ff=27648, rope_theta=1e6, **{**_LLAMA, "qkv_bias": True},
    ),
    # Qwen/Qwen3-0.6B: heads of 128 (wider than 1024 / 16), query/key norms, tied embeddings
    "qwen3-0.6b": ModelConfig(
        vocab_size=151936, context_length=40960, d_model=1024, n_layer=28, n_head=16,
        n_kv_head=8, d_head=128, d_ff=3072, rope_theta=1e6, norm_eps=1e-6,
        **{**_LLAMA, "qk_norm": True, "tie_embeddings": True},
    ),
}
# fmt: on


@dataclasses.dataclass(frozen=True)
class ParameterCount:
    """How many parameters a model has, and where they sit.

    ``active`` counts what one token's forward pass uses: in a mixture of experts only
    ``top_k`` of the ``n_expert`` MLPs run, so it is less than ``total``; in a dense model
    the two are equal. ``embedding`` is the token and position tables plus an untied
    output layer: the parameters that grow with the vocabulary, not with depth.
    """

    total: int
    active: int
    embedding: int
    parts: dict  # name -> count, summing to total: "attention", "mlp", "norms", ...

    @property
    def non_embedding(self):
        return self.total - self.embedding

    @property
    def active_non_embedding(self):
        return self.active - self.embedding


def parameter_count(config):
    """Count every parameter of the Transformer ``config`` describes (tied ones once).

    Per block, with d = ``d_model``, the query and output projections are (d, n_head *
    head_dim) - (d, d) unless ``d_head`` widens the heads - the key and value ones (d,
    kv_heads * head_dim), and the MLP holds two (GELU: up, down) or
    three (SwiGLU: gate, up, down) matrices between d and ``ff_dim``; biases and norms add
    vectors of length d or ff. GPT-2 small, counted as a lesson would:

    >>> c = KNOWN_MODELS["gpt2"]
    >>> attention = 4 * 768 * 768 + 4 * 768  # q, k, v, out, each (768, 768) + bias
    >>> mlp = 2 * 768 * 3072 + 3072 + 768  # up (768, 3072) and down, + biases
    >>> norms = 2 * 2 * 768  # two LayerNorms, each a weight and a bias
    >>> embeddings = 50257 * 768 + 1024 * 768  # tokens and positions
    >>> embeddings + 12 * (attention + mlp + norms) + 2 * 768  # + final norm
    124439808
    >>> parameter_count(c).total
    124439808

    A mixture of experts stores every expert but runs ``top_k`` of them per token:

    >>> moe = parameter_count(KNOWN_MODELS["mixtral-8x7b"])
    >>> f"{moe.total / 1e9:.1f}B total, {moe.active / 1e9:.1f}B active"
    '46.7B total, 12.9B active'
    """
    _check_config(config)
    d, vocab = config.d_model, config.vocab_size
    q_width = _attention_width(config)  # d_model, unless d_head says otherwise
    kv_width = config.kv_heads * config.head_dim  # smaller with grouped-query attention

    attention = d * q_width + 2 * d * kv_width + q_width * d  # q, k, v, output
    if config.qkv_bias:
        attention += q_width + 2 * kv_width
    if config.bias:
        attention += d
    if config.qk_norm:
        attention += 2 * config.head_dim  # one RMSNorm weight for queries, one for keys

    n_matrices = 3 if config.mlp == "swiglu" else 2
    one_mlp = n_matrices * d * config.ff_dim
    if config.bias:
        one_mlp += (n_matrices - 1) * config.ff_dim + d  # gate/up biases (ff), down (d)
    if config.n_expert:
        router = d * config.n_expert
        mlp, active_mlp = router + config.n_expert * one_mlp, router + config.top_k * one_mlp
    else:
        mlp = active_mlp = one_mlp

    norm = 2 * d if config.norm == "layernorm" else d  # weight (and bias)
    parts = {
        "token embedding": vocab * d,
        "position embedding": config.context_length * d if config.position == "learned" else 0,
        "attention": config.n_layer * attention,
        "mlp": config.n_layer * mlp,
        "norms": (2 * config.n_layer + 1) * norm,  # two per block and a final one
        "output layer": 0 if config.tie_embeddings else d * vocab,
    }
    total = sum(parts.values())
    embedding = parts["token embedding"] + parts["position embedding"] + parts["output layer"]
    active = total - config.n_layer * (mlp - active_mlp)
    return ParameterCount(total=total, active=active, embedding=embedding, parts=parts)


def training_flops_per_token(config, seq_len=None):
    """FLOPs to train on one token: 6 N + 12 n_layer d_attn seq_len.

    This is PaLM's model-FLOPs formula (Chowdhery et al. 2022, "PaLM", Appendix B:
    6N + 12LHQT), the one nanoGPT's ``estimate_mfu`` uses. A matmul by an (m, n) weight
    costs 2 m n FLOPs per token forward (a multiply and an add) and twice that backward
    (gradients for the input and for the weight), hence 6 per parameter. N is every
    parameter a token multiplies by: the active non-embedding ones plus the output layer,
    which costs its d_model * vocab_size even when tied to the embedding (a lookup is free).

    Attention adds work no parameter counts: scores Q K^T and the weighted sum A V, each
    2 * seq_len * d_attn FLOPs per token and layer forward, times 3 for training, where
    d_attn = n_head * head_dim. Like PaLM this counts the full seq_len x seq_len square,
    not the causal half. Kaplan et al. 2020 ("Scaling Laws", Table 1) count only Q K^T,
    giving 6 n_layer n_ctx d_attn. ``seq_len`` defaults to ``context_length``.

    >>> c = KNOWN_MODELS["gpt2"]
    >>> n = parameter_count(c).active_non_embedding + 768 * 50257
    >>> 6 * n + 12 * 12 * 768 * 1024
    855166464
    >>> training_flops_per_token(c)
    855166464
    """
    seq_len = _check_seq_len(config, seq_len)
    return 6 * _matmul_params(config) + 12 * config.n_layer * _attention_width(config) * seq_len


def inference_flops_per_token(config, seq_len=None):
    """Forward FLOPs for a token that sees ``seq_len`` keys: 2 N + 4 n_layer d_attn seq_len.

    The forward third of ``training_flops_per_token``: with a KV cache the new token's
    query meets ``seq_len`` cached keys (Q K^T) and values (A V). Elementwise work
    (softmax, norms, activations) is left out, as in both papers.

    >>> c = KNOWN_MODELS["llama-2-7b"]
    >>> inference_flops_per_token(c, seq_len=0) == 2 * (6_738_415_616 - 32000 * 4096)
    True
    >>> f"{inference_flops_per_token(c, seq_len=4096) / 1e9:.1f} GFLOP"
    '15.4 GFLOP'
    """
    seq_len = _check_seq_len(config, seq_len)
    return 2 * _matmul_params(config) + 4 * config.n_layer * _attention_width(config) * seq_len


def weight_bytes(model, bits):
    """Bytes to hold every weight at ``bits`` bits each (``model``: a config or a count).

    ``bits`` may be fractional: block formats store a scale per block, so GGUF's Q4_0
    (32 four-bit values and one 16-bit scale) costs 4 + 16/32 = 4.5 bits a weight.

    >>> weight_bytes(32_000_000_000, bits=16) / GB, weight_bytes(32_000_000_000, bits=4) / GB
    (64.0, 16.0)
    >>> weight_bytes(KNOWN_MODELS["mixtral-8x7b"], bits=4.5) / GB  # every expert is stored
    26.27032089
    """
    if isinstance(model, ModelConfig):
        count = parameter_count(model).total
    elif isinstance(model, ParameterCount):
        count = model.total
    elif isinstance(model, numbers.Integral) and not isinstance(model, bool) and model >= 0:
        count = int(model)
    else:
        raise TypeError(
            f"weight_bytes: got {model!r}; expected a ModelConfig, a ParameterCount "
            "or a non-negative parameter count"
        )
    _check_bits("bits", bits)
    return math.ceil(count * bits / 8)


def kv_cache_bytes(config, seq_len, batch_size=1, bits=16):
    """Bytes of the KV cache: 2 x n_layer x kv_heads x head_dim x seq_len x batch x bits/8.

    Every layer keeps a key and a value vector per KV head for each token seen. Grouped-
    query attention shrinks ``kv_heads``, and with it the cache: Llama-3-8B shares each
    KV head among 4 query heads, so it caches a quarter of what Llama-2-7B does.
    (A sliding-window model can keep only the last ``sliding_window`` tokens in a rolling
    buffer; this counts every token, as a plain cache does.)

    >>> 2 * 32 * 32 * 128 * 4096 * 2 / GiB  # Llama-2-7B, 4096 tokens, 16 bits
    2.0
    >>> kv_cache_bytes(KNOWN_MODELS["llama-2-7b"], seq_len=4096) / GiB
    2.0
    >>> kv_cache_bytes(KNOWN_MODELS["llama-3-8b"], seq_len=4096) / GiB
    0.5
    """
    seq_len = _check_seq_len(config, seq_len)
    _check_count("batch_size", batch_size)
    _check_bits("bits", bits)
    values = 2 * config.n_layer * config.kv_heads * config.head_dim * seq_len * batch_size
    return math.ceil(values * bits / 8)


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs on the accelerator, by what they hold."""

    weights: int
    gradients: int = 0
    optimizer: int = 0
    activations: int = 0
    kv_cache: int = 0
    overhead: int = 0

    @property
    def total(self):
        return sum(dataclasses.astuple(self))

    def table(self, unit="GB"):
        """The non-zero rows and the total, in ``"GB"`` (10**9 bytes) or ``"GiB"``."""
        scales = {"GB": GB, "GiB": GiB}
        if unit not in scales:
            raise ValueError(f"MemoryEstimate.table: unit={unit!r} is not one of {list(scales)}")
        rows = [(f.name.replace("_", " "), getattr(self, f.name)) for f in dataclasses.fields(self)]
        rows = [(name, size) for name, size in rows if size] + [("total", self.total)]
        return "\n".join(f"{name:<12}{size / scales[unit]:>9.2f} {unit}" for name, size in rows)


def vram_estimate(
    config, *, training=False, seq_len=None, batch_size=1, bits=None, kv_bits=None, overhead=0.2,
    gradient_checkpointing=False,
):  # fmt: skip
    """Accelerator memory to serve (default) or train ``config``, as a ``MemoryEstimate``.

    Serving holds the weights at ``bits`` (default 16) and the KV cache of ``batch_size``
    sequences of ``seq_len`` tokens (default ``context_length``) at ``kv_bits`` (default 16).

    Training follows tinyllm's design, float32 master weights with AdamW: 4 bytes a
    parameter for the weights, 4 for their gradients and 8 for AdamW's two moments, 16 in
    all (the ZeRO paper, Rajbhandari et al. 2019, reaches the same 16 for mixed precision
    as 2 + 2 + 12). ``bits`` and ``kv_bits`` are for serving only. Activations kept for the
    backward pass follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in
    Large Transformer Models", eq. 1): s b h (34 + 5 a s / h) bytes per layer at 16 bits,
    with s = seq_len, b = batch_size, h = d_model and a = n_head, no recomputation; the
    5 a s^2 b part is the attention matrices, which a fused (flash) attention never stores.
    To that we add the float32 logits, s b vocab_size x 4 bytes. With
    ``gradient_checkpointing`` each layer keeps its input alone, 2 s b h bytes (Korthikanti's
    "full recomputation"), and one layer's activations are alive at a time, while the
    backward pass recomputes it.

    ``overhead`` is a stated fraction added on top of the rest, for the CUDA context,
    temporary buffers and allocator fragmentation; 0.2 is the usual rule of thumb
    (EleutherAI, "Transformer Math 101", 2023).

    >>> print(vram_estimate(KNOWN_MODELS["llama-2-7b"], seq_len=4096).table())
    weights         13.48 GB
    kv cache         2.15 GB
    overhead         3.12 GB
    total           18.75 GB
    >>> print(vram_estimate(KNOWN_MODELS["gpt2"], training=True, batch_size=8).table())
    weights          0.50 GB
    gradients        0.50 GB
    optimizer        1.00 GB
    activations     10.25 GB
    overhead         2.45 GB
    total           14.70 GB
    >>> recomputed = vram_estimate(KNOWN_MODELS["gpt2"], training=True, batch_size=8,
    ...                            gradient_checkpointing=True)
    >>> round(recomputed.activations / GB, 2)
    2.52
    """
    seq_len = _check_seq_len(config, seq_len)
    _check_count("batch_size", batch_size)
    if not (isinstance(overhead, numbers.Real) and 0 <= overhead < math.inf):
        raise ValueError(f"vram_estimate: overhead={overhead!r} must be a fraction >= 0, like 0.2")
    if gradient_checkpointing and not training:
        raise ValueError(
            "vram_estimate: gradient_checkpointing=True is for training (training=True); "
            "serving keeps no activations for a backward pass"
        )
    if training:
        if bits is not None or kv_bits is not None:
            raise ValueError(
                f"vram_estimate: bits={bits!r}, kv_bits={kv_bits!r} set serving widths; "
                "training keeps float32 weights, gradients and AdamW moments, so leave them None"
            )
        params = parameter_count(config).total
        s, b, h, a = seq_len, batch_size, config.d_model, config.n_head
        per_layer = s * b * h * 34 + 5 * a * s * s * b  # Korthikanti eq. 1, bytes
        logits = s * b * config.vocab_size * 4
        estimate = MemoryEstimate(
            weights=4 * params,
            gradients=4 * params,
            optimizer=8 * params,  # AdamW's first and second moments, float32
            activations=logits
            + (
                config.n_layer * 2 * s * b * h + per_layer  # inputs kept, one layer recomputed
                if gradient_checkpointing
                else config.n_layer * per_layer
            ),
        )
    else:
        estimate = MemoryEstimate(
            weights=weight_bytes(config, 16 if bits is None else bits),
            kv_cache=kv_cache_bytes(
                config, seq_len, batch_size, 16 if kv_bits is None else kv_bits
            ),
        )
    return dataclasses.replace(estimate, overhead=round(overhead * estimate.total))


def _matmul_params(config):
    """Parameters one token multiplies by: active non-embedding ones and the output layer."""
    return parameter_count(config).active_non_embedding + config.d_model * config.vocab_size


def _attention_width(config):
    return config.n_head * config.head_dim  # d_attn: the width of all query heads together


def _check_config(config):
    if not isinstance(config, ModelConfig):
        raise TypeError(f"expected a tinyllm ModelConfig, got {type(config).__name__}")


def _check_count(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _check_seq_len(config, seq_len):
    """``seq_len``, or the config's context length when it is None."""
    _check_config(config)
    if seq_len is None:
        return config.context_length
    if isinstance(seq_len, bool) or not isinstance(seq_len, numbers.Integral) or seq_len < 0:
        raise ValueError(f"seq_len={seq_len!r} must be a non-negative number of tokens")
    return int(seq_len)


def _check_bits(name, bits):
    if isinstance(bits, bool) or not isinstance(bits, numbers.Real) or not 0 < bits < math.inf:
        raise ValueError(
            f"{name}={bits!r} must be a positive number of bits per value (16, 8, 4.5 ...)"
        )
