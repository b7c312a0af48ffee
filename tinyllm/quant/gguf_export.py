"""GGUF export: a model folder as the one file llama.cpp runs (``tinyllm export-gguf``).

A GGUF file holds key-value metadata (the architecture's shapes, the tokenizer) and then
the tensors, each in a ggml type, under llama.cpp's names. It is written here with the
``gguf`` package, as llama.cpp's ``convert_hf_to_gguf.py`` writes it (the tokenizer's keys
by ``gguf_tokenizer.py``), and read back with its ``GGUFReader`` in the tests. Three
translations happen on the way:

- **names**: ``blocks.0.attention.q_proj.weight`` is llama.cpp's ``blk.0.attn_q.weight``
  (the table below); GPT-2 keeps query, key and value in one ``attn_qkv`` matrix.
- **layout**: a GGUF matrix is stored row by row, a row being the weights that meet one
  output feature (``torch.nn.Linear``'s (out, in)); tinyllm's ``Linear`` holds (in, out),
  so weights are transposed. Block formats cut each row into blocks of 32.
- **RoPE pairs**: tinyllm (like Hugging Face) rotates feature i of a head with feature
  i + D/2; llama.cpp's Llama rotates neighbours 2i and 2i + 1. So the rows of the query
  and key projections are reordered, head by head, to put each pair side by side
  (``interleave_rope_rows``, convert_hf_to_gguf's ``LlamaModel.permute``). Any order of
  a head's features gives the same attention scores, as long as q and k share it.

Which type each tensor gets, for ``--type`` (the choices of convert_hf_to_gguf and, for the
4-bit types, of ``llama-quantize``):

| tensor                              | f32 | f16 | q8_0 | q4_0 / q4_1                  |
|-------------------------------------|-----|-----|------|------------------------------|
| norms, biases (1-D), position_embd  | F32 | F32 | F32  | F32                          |
| block matrices, token_embd          | F32 | F16 | Q8_0 | Q4_0 / Q4_1                  |
| output (or token_embd when tied)    | F32 | F16 | Q8_0 | Q8_0 (llama-quantize: Q6_K)  |

Every logit passes through the output matrix, so llama-quantize stores it wider than the
4-bit blocks; tinyllm writes no k-quants, so Q8_0 stands in for Q6_K. A matrix whose rows
are not a multiple of 32 long cannot be cut into blocks: it falls back to F16, with a
warning naming it, as both of llama.cpp's tools do.

>>> import numpy as np
>>> w = np.arange(8).reshape(8, 1)          # one head of 8 query features
>>> interleave_rope_rows(w, 1)[:, 0]        # pairs (0, 4), (1, 5), ... now side by side
array([0, 4, 1, 5, 2, 6, 3, 7])
>>> bool((halve_rope_rows(interleave_rope_rows(w, 1), 1) == w).all())
True
"""

import dataclasses
import os
import warnings
from pathlib import Path

import numpy as np

from ..nn import Linear
from . import formats
from .gguf_tokenizer import pre_tokenizer_of, write_tokenizer

TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1")
WIDER_OUTPUT = {"q4_0": "q8_0", "q4_1": "q8_0"}  # the output layer's type, where it differs
FALLBACK = "f16"  # for a matrix a block type cannot hold

# ours -> llama.cpp's (gguf's MODEL_TENSOR names); "{i}" is the block's index
TENSOR_NAMES = {
    "token_embedding": "token_embd",
    "position_embedding": "position_embd",
    "final_norm": "output_norm",
    "lm_head": "output",
    "blocks.{i}.attention_norm": "blk.{i}.attn_norm",
    "blocks.{i}.attention.q_proj": "blk.{i}.attn_q",
    "blocks.{i}.attention.k_proj": "blk.{i}.attn_k",
    "blocks.{i}.attention.v_proj": "blk.{i}.attn_v",
    "blocks.{i}.attention.o_proj": "blk.{i}.attn_output",
    "blocks.{i}.mlp_norm": "blk.{i}.ffn_norm",
    "blocks.{i}.mlp.gate": "blk.{i}.ffn_gate",
    "blocks.{i}.mlp.up": "blk.{i}.ffn_up",
    "blocks.{i}.mlp.down": "blk.{i}.ffn_down",
}
FUSED = {"gpt2": {"attn_q": "attn_qkv", "attn_k": "attn_qkv", "attn_v": "attn_qkv"}}

# What llama.cpp's architecture needs of a config, and why where it is not obvious.
ARCHITECTURES = {
    "llama": dict(
        position="rope", norm="rmsnorm", mlp="swiglu", bias=False, qkv_bias=False,
        qk_norm=False, n_expert=0, sliding_window=None,
    ),
    "gpt2": dict(
        position="learned", norm="layernorm", mlp="gelu", bias=True, qkv_bias=True,
        qk_norm=False, n_expert=0, sliding_window=None,
    ),
}  # fmt: skip
WHY = {
    "n_expert": "this export writes dense MLPs only, not mixture-of-experts layers",
    "sliding_window": "llama.cpp's llama architecture attends over the whole context",
    "qk_norm": "query/key norms are llama.cpp's qwen3 architecture, which this export does not write",
    "qkv_bias": "llama.cpp runs biased Llama projections as its qwen2 architecture, not written here",
}
FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0",
              "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1"}  # fmt: skip


def _gguf():
    """The ``gguf`` package, imported when it is needed: ``import tinyllm`` works without it."""
    try:
        import gguf
    except ImportError as err:
        raise ImportError(
            "GGUF export needs the gguf package: pip install 'tinyllm[gguf]'"
        ) from err
    return gguf


def check_type(name):
    """``name`` if it is a GGUF type this export writes, else a ValueError listing them."""
    if name not in TYPES:
        raise ValueError(f"unknown GGUF type {name!r}: expected one of {', '.join(TYPES)}")
    return name


# --- which llama.cpp architecture runs a config ------------------------------------------------
def architecture_of(config):
    """``"llama"`` or ``"gpt2"``: the llama.cpp architecture that runs ``config`` as tinyllm
    does, or a ValueError naming the first option it cannot run.

    >>> from tinyllm.models import get_preset
    >>> architecture_of(get_preset("tiny-llama")), architecture_of(get_preset("tiny"))
    ('llama', 'gpt2')
    >>> architecture_of(get_preset("tiny-moe"))
    Traceback (most recent call last):
    ...
    ValueError: GGUF export: n_expert=4 cannot be written for llama.cpp's llama architecture (it needs n_expert=0): this export writes dense MLPs only, not mixture-of-experts layers
    """
    arch = "llama" if config.position == "rope" else "gpt2"
    for option, needed in ARCHITECTURES[arch].items():
        value = getattr(config, option)
        if value != needed:
            why = f": {WHY[option]}" if option in WHY else ""
            raise ValueError(
                f"GGUF export: {option}={value!r} cannot be written for llama.cpp's {arch} "
                f"architecture (it needs {option}={needed!r}){why}"
            )
    if arch == "gpt2" and (config.kv_heads != config.n_head or config.d_head is not None):
        raise ValueError(
            f"GGUF export: llama.cpp's gpt2 architecture needs n_kv_head = n_head and "
            f"head_dim = d_model / n_head; got n_kv_head={config.n_kv_head}, "
            f"d_head={config.d_head}"
        )
    scaling = config.rope_scaling or {}
    if scaling.get("type", "linear") != "linear":
        raise ValueError(
            f"GGUF export: rope_scaling type {scaling['type']!r} is not written (only linear "
            "scaling, which llama.cpp reads as rope.scaling.type = linear)"
        )
    return arch


# --- the tensors, in GGUF names and layout ------------------------------------------------------
def interleave_rope_rows(w, n_heads):
    """Rows of a query or key projection (n_heads * D, ...) reordered so that each head's
    RoPE pairs (i, i + D/2) become neighbours (2i, 2i + 1): llama.cpp's pairing."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def halve_rope_rows(w, n_heads):
    """``interleave_rope_rows`` undone: pairs (2i, 2i + 1) back to (i, i + D/2)."""
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(arch, ours):
    """llama.cpp's name for our parameter ``ours``.

    >>> gguf_name("llama", "blocks.3.mlp.gate.weight"), gguf_name("gpt2", "blocks.0.attention.k_proj.bias")
    ('blk.3.ffn_gate.weight', 'blk.0.attn_qkv.bias')
    """
    module, kind = ours.rsplit(".", 1)
    index = module.split(".")[1] if module.startswith("blocks.") else None
    pattern = module.replace(f"blocks.{index}.", "blocks.{i}.", 1) if index else module
    if pattern not in TENSOR_NAMES:
        raise ValueError(f"GGUF export: tinyllm's {ours} has no llama.cpp tensor name")
    name = TENSOR_NAMES[pattern].format(i=index)
    block, _, short = name.rpartition(".")
    short = FUSED.get(arch, {}).get(short, short)
    return f"{block}.{short}.{kind}" if block else f"{short}.{kind}"


@dataclasses.dataclass
class GGUFTensor:
    """One tensor of the file: its name, the parameters it holds (side by side on the rows),
    its float32 values in GGUF layout, the type it is stored in, the RoPE head count its
    rows were interleaved with (0: not), and why it fell back to a wider type (or None)."""

    name: str
    ours: list
    array: np.ndarray
    format: str
    rope_heads: int = 0
    fallback: str | None = None


def _format_for(name, array, file_type, tied):
    """The format tensor ``name`` is stored in, and why it falls back (or None)."""
    if array.ndim == 1 or name == "position_embd.weight":
        return "f32", None
    is_output = name == "output.weight" or (tied and name == "token_embd.weight")
    wanted = WIDER_OUTPUT.get(file_type, file_type) if is_output else file_type
    if formats.fits(wanted, array.shape[-1]):
        return wanted, None
    return FALLBACK, (
        f"{name} has rows of {array.shape[-1]} weights, not a multiple of {formats.BLOCK}, "
        f"which {wanted} needs; stored as {FALLBACK} (as llama.cpp's converter does)"
    )


def gguf_tensors(model, file_type):
    """Every tensor of ``model``'s GGUF file at ``file_type``: a list of :class:`GGUFTensor`,
    float32 and not yet quantized."""
    config = model.config
    arch = architecture_of(config)
    state = model.state_dict()
    linears = {f"{path}.weight" for path, m in model.named_modules() if isinstance(m, Linear)}
    groups = {}
    for ours in state:
        groups.setdefault(gguf_name(arch, ours), []).append(ours)
    tensors = []
    for name, ours in groups.items():
        parts = [state[p].T if p in linears else state[p] for p in ours]  # rows: out features
        array = np.concatenate(parts, axis=0).astype(np.float32)
        heads = 0
        if arch == "llama" and name.endswith(("attn_q.weight", "attn_k.weight")):
            heads = config.n_head if "attn_q" in name else config.kv_heads
            array = interleave_rope_rows(array, heads)
        fmt, fallback = _format_for(name, array, file_type, config.tie_embeddings)
        tensors.append(GGUFTensor(name, ours, array, fmt, heads, fallback))
    return tensors


def stored_values(tensor):
    """The float32 values the file holds for ``tensor`` (its format's rounding applied)."""
    return formats.dequantize(formats.quantize(tensor.array, tensor.format), tensor.format)


def stored_model(model, file_type):
    """A copy of ``model`` whose weights are exactly what its GGUF file at ``file_type`` holds,
    dequantized: the model llama.cpp runs, computed by tinyllm (norms and biases stay)."""
    linears = {f"{path}.weight" for path, m in model.named_modules() if isinstance(m, Linear)}
    shapes = {name: value.shape for name, value in model.state_dict().items()}
    state = {}
    for tensor in gguf_tensors(model, file_type):
        values = stored_values(tensor)
        if tensor.rope_heads:
            values = halve_rope_rows(values, tensor.rope_heads)
        rows = [shapes[p][-1] if p in linears else shapes[p][0] for p in tensor.ours]
        for name, part in zip(tensor.ours, np.split(values, np.cumsum(rows)[:-1], axis=0)):
            state[name] = part.T if name in linears else part
    return type(model)(model.config).load_state_dict(state).eval()


def encode(tensor):
    """``(data, ggml type name)``: the array ``GGUFWriter.add_tensor`` stores for ``tensor``."""
    fmt, array = tensor.format, tensor.array
    if fmt == "f32":
        return array, "F32"
    if fmt == "f16":
        return array.astype(np.float16), "F16"
    return formats.to_ggml(formats.quantize(array, fmt), fmt), fmt.upper()


# --- metadata ------------------------------------------------------------------------------
def _write_config(writer, gguf, config, arch, file_type, name):
    """The architecture's shapes under llama.cpp's keys (``{arch}.context_length``, ...)."""
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[file_type]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(config.d_model)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(config.ff_dim)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.kv_heads)
    writer.add_vocab_size(config.vocab_size)
    if arch == "gpt2":
        writer.add_layer_norm_eps(config.norm_eps)
        return
    writer.add_layer_norm_rms_eps(config.norm_eps)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_rope_dimension_count(config.head_dim)
    if config.head_dim * config.n_head != config.d_model:  # heads narrower or wider than usual
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
    if config.rope_scaling:  # linear: architecture_of refuses the others
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(config.rope_scaling["factor"])


# --- the file ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GGUFExport:
    """What ``write_gguf`` wrote: the file, each tensor's stored type, and the fallbacks."""

    path: Path
    formats: dict  # tensor name -> format ("f32", "f16", "q8_0", ...)
    fallbacks: list  # why each tensor stored in FALLBACK is there, by name


def write_gguf(model, tokenizer, path, file_type="f16", *, name="tinyllm"):
    """Write ``model`` and ``tokenizer`` as a GGUF file at ``path`` in ``file_type``.

    The file appears whole or not at all: it is written beside ``path`` under a temporary
    name, flushed to disk, then renamed over ``path``.
    """
    gguf = _gguf()
    check_type(file_type)
    arch = architecture_of(model.config)
    pre_tokenizer_of(tokenizer)  # an unsupported tokenizer fails before anything is written
    tensors = gguf_tensors(model, file_type)
    fallbacks = [t.fallback for t in tensors if t.fallback]
    for message in fallbacks:
        warnings.warn(f"GGUF export: {message}", stacklevel=2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        writer = gguf.GGUFWriter(temporary, arch)
        _write_config(writer, gguf, model.config, arch, file_type, name)
        write_tokenizer(writer, tokenizer, model.config)
        for tensor in tensors:
            data, ggml_type = encode(tensor)
            writer.add_tensor(tensor.name, data, raw_dtype=gguf.GGMLQuantizationType[ggml_type])
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(temporary, "rb+") as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return GGUFExport(path, {t.name: t.format for t in tensors}, fallbacks)


def export_gguf(model_dir, out_path, file_type="f16"):
    """Export the model folder ``model_dir`` (a float model and its BPE tokenizer) as a GGUF
    file at ``out_path``; returns the :class:`GGUFExport`."""
    from ..data import load_tokenizer
    from ..models import Transformer
    from ..train.checkpoint import load_model_folder

    check_type(file_type)
    model = load_model_folder(model_dir)
    if not isinstance(model, Transformer) or not model.has_hf_form():
        raise ValueError(
            f"GGUF export: {model_dir} holds a model with layers GGUF export does not write "
            "(quantized layers, adapters or an extra head); export the float model folder"
        )
    tokenizer = load_tokenizer(model_dir)
    return write_gguf(model, tokenizer, out_path, file_type, name=Path(model_dir).resolve().name)
