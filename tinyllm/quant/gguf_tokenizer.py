"""The tokenizer in a GGUF file: the ``tokenizer.ggml.*`` keys llama.cpp tokenizes with.

llama.cpp's "gpt2" tokenizer model is byte-level BPE, tinyllm's: the tokens (each as its
bytes in GPT-2's printable form, as in ``tokenizer.json``), their types, the merges in rank
order, and the name of the pre-tokenizer - the regex that cuts text into pieces before any
merge. llama.cpp has no engine for arbitrary regexes; it knows a list of named ones, so a
tokenizer's pattern must be one of them:

| tinyllm pattern | llama.cpp pre-tokenizer | its regex                                    |
|-----------------|-------------------------|----------------------------------------------|
| ``gpt2``        | ``gpt-2``               | GPT-2's own                                  |
| ``gpt4``        | ``dbrx``                | Llama 3's, which cuts text as GPT-4's does   |

(``llama-bpe`` has the same regex but takes a piece that is itself a token whole, without
replaying merges: ``ignore_merges``, as Llama 3's own tokenizer files do.)
"""

from ..tokenizer.hf_format import to_tokenizer_config, token_to_text

# tinyllm's split patterns -> the llama.cpp pre-tokenizer that cuts text the same way
PRE_TOKENIZERS = {"gpt2": "gpt-2", "gpt4": "dbrx"}


def pre_tokenizer_of(tokenizer):
    """llama.cpp's name for the pre-tokenizer (split regex) of ``tokenizer`` (the table
    above), or a ValueError for a tokenizer llama.cpp cannot reproduce."""
    name = getattr(tokenizer, "pattern_name", None)
    if name is None:
        raise ValueError(
            f"GGUF export needs a byte-level BPE tokenizer (tokenizer.json); this model has "
            f"{tokenizer!r}, which llama.cpp cannot tokenize with (pretrain with --tokenizer bpe)"
        )
    if name == "gpt4" and tokenizer.ignore_merges:
        return "llama-bpe"
    if name not in PRE_TOKENIZERS or tokenizer.ignore_merges:
        raise ValueError(
            f"GGUF export: the tokenizer's split pattern {name!r} (ignore_merges="
            f"{tokenizer.ignore_merges}) has no llama.cpp pre-tokenizer; expected the gpt2 or "
            "gpt4 pattern"
        )
    return PRE_TOKENIZERS[name]


def tokenizer_tokens(tokenizer, vocab_size):
    """``(tokens, token types)`` for ids 0 .. ``vocab_size`` - 1: a BPE token as its bytes
    in GPT-2's printable form (as in ``tokenizer.json``), a special token as its text, and
    ``[PAD{id}]`` for an id the model has but the tokenizer does not (convert_hf_to_gguf's
    padding). Types are gguf's ``TokenType`` values: 1 normal, 3 control, 5 unused."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(
            f"GGUF export: the tokenizer has ids up to {tokenizer.vocab_size - 1}, past the "
            f"model's vocab_size of {vocab_size}"
        )
    specials = {i: text for text, i in tokenizer.special_tokens.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in tokenizer.vocab:
            tokens.append(token_to_text(tokenizer.vocab[i]))
            types.append(1)
        elif i in specials:
            tokens.append(specials[i])
            types.append(3)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(5)
    return tokens, types


def tokenizer_merges(tokenizer):
    """The merges in rank order, each as ``"left right"`` in the tokens' printable form.

    >>> from tinyllm.tokenizer import Tokenizer
    >>> tokenizer_merges(Tokenizer.train("a b " * 30, vocab_size=262))[:1]   # " " + "b"
    ['Ġ b']
    """
    vocab = tokenizer.vocab
    return [f"{token_to_text(vocab[a])} {token_to_text(vocab[b])}" for a, b in tokenizer.merges]


def write_tokenizer(writer, tokenizer, config):
    """The tokenizer under ``tokenizer.ggml.*``: llama.cpp's "gpt2" (byte-level BPE) model."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre_tokenizer_of(tokenizer))
    tokens, types = tokenizer_tokens(tokenizer, config.vocab_size)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(tokenizer_merges(tokenizer))
    eos = config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos  # GGUF has one end-of-text id
    if eos is not None:
        writer.add_eos_token_id(eos)
    if config.bos_token_id is not None:
        writer.add_bos_token_id(config.bos_token_id)
    writer.add_add_bos_token(False)  # tinyllm's encode adds no begin-of-text token
    template = to_tokenizer_config(list(tokenizer.special_tokens)).get("chat_template")
    if template:
        writer.add_chat_template(template)
