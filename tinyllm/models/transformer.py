"""The decoder-only Transformer: token ids in, next-token logits out.

    ids (B, T)
      -> token embedding (+ learned position embedding, GPT-2)      (B, T, d_model)
      -> n_layer blocks, each:  x = x + attention(norm(x))           RoPE inside (Llama)
                                x = x + mlp(norm(x))                 or a mixture of experts
      -> final norm -> output layer (the token embedding, when tied) (B, T, vocab_size)

``forward(ids, targets)`` always returns ``(logits, loss)``; ``loss`` is ``None`` without
targets. With experts, the loss adds ``router_aux_loss_coef`` times the mean
load-balancing loss of the layers.

>>> from tinyllm.models import get_preset
>>> model = Transformer(get_preset("tiny", vocab_size=10, n_layer=1), seed=0)
>>> logits, loss = model([[1, 2, 3]], targets=[[2, 3, 4]])
>>> logits.shape, abs(loss.item() - math.log(10)) < 0.2     # about ln(10) before training
((1, 3, 10), True)
"""

import math
from functools import partial

import numpy as np

from .. import functional as F
from ..autograd import Tensor, is_grad_enabled
from ..nn import Dropout, Embedding, LayerNorm, Linear, Module, RMSNorm
from ..nn.attention import CausalSelfAttention
from ..nn.lora import describe_lora, rebuild_lora
from ..nn.mlp import MLP, SwiGLU
from ..nn.moe import MoE
from ..nn.recompute import recompute
from ..nn.rope import RotaryEmbedding
from .config import ModelConfig
from .hf import family_of, hf_module_name, load_pretrained, save_pretrained, weight_map


def _norm(config):
    if config.norm == "layernorm":
        return LayerNorm(config.d_model, config.norm_eps)
    return RMSNorm(config.d_model, config.norm_eps)


class Block(Module):
    """Pre-norm residual block: attention, then an MLP (or a mixture of experts)."""

    def __init__(self, config, rope=None, *, seed=0):
        rng = np.random.default_rng(seed)
        std = config.init_std
        out_std = std / math.sqrt(2 * config.n_layer)  # residual outputs start small (GPT-2)
        self.attention_norm = _norm(config)
        self.attention = CausalSelfAttention(
            config.d_model,
            config.n_head,
            config.kv_heads,
            head_dim=config.head_dim,
            qk_norm_eps=config.norm_eps if config.qk_norm else None,
            qkv_bias=config.qkv_bias,
            bias=config.bias,
            rope=rope,
            window=config.sliding_window,
            dropout=config.dropout,
            std=std,
            out_std=out_std,
            seed=rng,
        )
        self.mlp_norm = _norm(config)
        sizes = (config.d_model, config.ff_dim)
        kwargs = dict(bias=config.bias, std=std, out_std=out_std, seed=rng)
        if config.n_expert:
            self.mlp = MoE(
                *sizes, config.n_expert, config.top_k, mlp=config.mlp,
                normalize=config.norm_top_k, **kwargs,
            )  # fmt: skip
        else:
            self.mlp = (SwiGLU if config.mlp == "swiglu" else MLP)(*sizes, **kwargs)
        self.dropout = Dropout(config.dropout, seed=rng.integers(2**31))

    def forward(self, x, start=0, cache=None, layer=None, mask=None, positions=None):
        """``x`` (B, T, d_model) -> ``(x, aux_loss)``; ``aux_loss`` is None without experts.

        ``cache``, ``layer``, ``mask`` and ``positions`` go to the attention
        (``CausalSelfAttention.forward``)."""
        attend = self.attention_norm(x)
        x = x + self.attention(
            attend, start, cache=cache, layer=layer, mask=mask, positions=positions
        )
        h, aux_loss = self.mlp(self.mlp_norm(x)), None
        if isinstance(self.mlp, MoE):
            h, aux_loss = h
        return x + self.dropout(h), aux_loss


class Transformer(Module):
    """A decoder-only language model built from a :class:`ModelConfig`; see the module doc.

    ``gradient_checkpointing = True`` (Hugging Face's name; ``TrainConfig`` and the training
    commands' ``--gradient-checkpointing`` set it) recomputes each block's activations in the
    backward pass instead of keeping them from the forward pass (``nn.recompute``): the same
    gradients, for less memory and one more forward pass per step."""

    gradient_checkpointing = False

    def __init__(self, config, *, seed=0):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"Transformer needs a ModelConfig, got {type(config).__name__}")
        rng = np.random.default_rng(seed)
        self.config = config
        self.token_embedding = Embedding(config.vocab_size, config.d_model, seed=rng)
        self.position_embedding = None
        rope = None
        if config.position == "learned":
            self.position_embedding = Embedding(config.context_length, config.d_model, seed=rng)
        else:
            rope = RotaryEmbedding(
                config.head_dim, config.rope_theta, config.rope_scaling, config.context_length
            )
        self.dropout = Dropout(config.dropout, seed=rng.integers(2**31))
        self.blocks = [Block(config, rope, seed=rng) for _ in range(config.n_layer)]
        self.final_norm = _norm(config)
        self.lm_head = None
        if not config.tie_embeddings:
            self.lm_head = Linear(config.d_model, config.vocab_size, bias=False, seed=rng)

    def _ids(self, ids, name):
        """``ids`` as an integer array (B, T) on the parameters' backend."""
        backend = self.token_embedding.weight.backend
        if isinstance(ids, Tensor):
            ids = ids.data
        elif not backend.owns(ids):  # a list or NumPy array; a backend array (or tracer) stays
            ids = np.asarray(ids)
            if name != "positions" and not backend.reads_values(ids) and ids.size:
                _check_ids_on_host(ids, name, self.config.vocab_size)
            ids = backend.asarray(ids)
        if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(
                f"Transformer: {name} must be integer token ids of shape (batch, time); got "
                f"shape {tuple(ids.shape)} and dtype {ids.dtype}"
            )
        return ids

    def _positions(self, positions, shape):
        """Per-token ``positions`` (B, T) as integers on the parameters' backend."""
        positions = self._ids(positions, "positions")
        if positions.shape != shape:
            raise ValueError(
                f"Transformer: positions of shape {tuple(positions.shape)} must match ids "
                f"{tuple(shape)}"
            )
        return positions

    def hidden_states(self, ids, start=0, cache=None, mask=None, positions=None):
        """``(x, aux_losses)``: the final-normed hidden states (B, T, d_model) of ``ids``
        (B, T) - what the output layer turns into logits, and what other heads (a reward
        model's score) read - and the experts' load-balancing losses. The keywords are
        ``forward``'s."""
        ids = self._ids(ids, "ids")
        T = ids.shape[1]
        if cache is not None:
            if start != 0 and start is not cache.length and start != cache.length:
                raise ValueError(
                    f"Transformer: start={start} with a cache holding {cache.length} positions; "
                    "with a cache the positions come from its length (leave start out)"
                )
            start = cache.length  # traced in a compiled step; (B,) in a paged batch
        traced = self.token_embedding.weight.backend.is_traced(start)
        per_row = getattr(start, "ndim", 0) == 1  # each row at its own position
        if per_row and positions is None and self.position_embedding is not None:
            positions = start[:, None] + np.arange(T)  # (B, T)
        if not traced and np.max(start) + T > self.config.context_length:
            raise ValueError(
                f"Transformer: a sequence of {T} tokens at position {np.max(start)} runs past "
                f"the context_length of {self.config.context_length}"
            )
        x = self.token_embedding(ids)  # (B, T, d_model)
        if positions is not None:
            positions = self._positions(positions, ids.shape)
        if self.position_embedding is not None:
            if positions is None:
                positions = start + x.backend.xp.arange(T)  # the same for every row
            x = x + self.position_embedding(positions)  # (T, d_model) or (B, T, d_model)
        x = self.dropout(x)
        aux_losses = []
        rope_positions = positions if self.position_embedding is None else None
        recomputing = self.gradient_checkpointing and cache is None and is_grad_enabled()
        for layer, block in enumerate(self.blocks):
            call = partial(recompute, block) if recomputing else block
            x, aux_loss = call(
                x, start, cache=cache, layer=layer, mask=mask, positions=rope_positions
            )
            if aux_loss is not None:
                aux_losses.append(aux_loss)
        if cache is not None:
            cache.advance(T)  # every layer has written positions start .. start + T - 1
        return self.final_norm(x), aux_losses

    def forward(self, ids, targets=None, start=0, cache=None, mask=None, positions=None):
        """Logits (B, T, vocab_size) for ``ids`` (B, T) at positions ``start ..``, and the loss.

        ``targets`` (B, T) are the next tokens; entries equal to -100 are not scored.

        ``cache`` (a ``KVCache``, inference only: use ``no_grad``) holds the keys and values
        of the tokens before ``ids``; ``ids`` then sit at positions ``cache.length ..``,
        their keys and values are added to the cache, and they attend over all of it.

        A batch of prompts of different lengths is padded on the left. ``mask`` (boolean,
        broadcastable to (B, n_head, T, S), e.g. (B, 1, 1, S) False on the padding) hides
        the padding keys on top of the causal mask. Learned position embeddings (GPT-2) then
        need ``positions`` (B, T), each row's real tokens numbered from 0, so that they get
        the positions they would have alone; padding queries see no key and give 0. With a
        cache, the mask covers all S = cache.length + T keys and ``positions`` number the new
        tokens only (they replace ``cache.length ..``, row by row). RoPE needs no
        ``positions`` for padding: its scores depend only on how far apart query and key
        are, which padding does not change. Where given, RoPE rotates by them too: several
        documents packed in one row, each restarting at 0, with a ``mask`` that keeps each
        document's tokens to its own keys, give every document the logits it has alone.
        """
        ids = self._ids(ids, "ids")
        B, T = ids.shape
        x, aux_losses = self.hidden_states(ids, start, cache, mask, positions)
        if self.lm_head is None:
            logits = x @ self.token_embedding.weight.T  # (B, T, vocab_size), tied weights
        else:
            logits = self.lm_head(x)  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        targets = self._ids(targets, "targets")
        if targets.shape != ids.shape:
            raise ValueError(
                f"Transformer: targets of shape {tuple(targets.shape)} must match ids "
                f"{tuple(ids.shape)}"
            )
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))
        if aux_losses:
            loss = loss + self.config.router_aux_loss_coef * (sum(aux_losses) / len(aux_losses))
        return logits, loss

    def expert_counts(self):
        """(n_layer, n_expert) tokens routed to each expert in the last forward, for plots."""
        return np.stack([block.mlp.expert_counts for block in self.blocks])

    # --- describing, and the Hugging Face format ----------------------------------------------
    def describe(self):
        """The config and any LoRA adapters' settings, which with the class rebuild this
        model (checkpoints save it)."""
        lora = describe_lora(self)
        return {"config": self.config.to_dict(), **({"lora": lora} if lora else {})}

    @classmethod
    def from_description(cls, description):
        """A fresh model of a ``describe()`` dict (load weights into it next)."""
        model = cls(ModelConfig.from_dict(description["config"]))
        return rebuild_lora(model, description["lora"]) if "lora" in description else model

    def hf_module_name(self, path):
        """The Hugging Face (and PEFT) name of our module ``path`` (``blocks.0.mlp.gate`` is
        Llama's ``model.layers.0.mlp.gate_proj``), or None where there is none."""
        try:
            return hf_module_name(family_of(self.config), path)
        except (ValueError, KeyError):
            return None

    def has_hf_form(self):
        """Whether ``save_pretrained`` writes this model as it is: its config has a Hugging
        Face architecture and every weight a name there (no adapter, extra head, Buffer or
        quantized layer inside)."""
        if any(True for _ in self.named_buffers()):
            return False
        try:
            weight_map(self, family_of(self.config))
        except (ValueError, KeyError):
            return False
        return True

    @classmethod
    def from_pretrained(cls, directory):
        """Load a ``transformers`` directory (config.json + model.safetensors) or our own."""
        return load_pretrained(cls, directory)

    def save_pretrained(self, directory, dtype="float32"):
        """Write ``config.json`` + ``model.safetensors`` that ``transformers`` can load."""
        save_pretrained(self, directory, dtype=dtype)


def _check_ids_on_host(ids, name, vocab):
    """Token ids (or targets, where -100 is ignored) in [0, vocab), checked before they move
    to a backend whose ops cannot read them back without waiting (CuPy)."""
    bad = (ids < 0) | (ids >= vocab)
    if name == "targets":
        bad &= ids != -100
    if bad.any():
        raise IndexError(
            f"Transformer: {name} holds {int(ids[bad].ravel()[0])}, outside the vocabulary "
            f"[0, {vocab})"
        )
