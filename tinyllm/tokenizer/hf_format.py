"""Reading and writing Hugging Face ``tokenizer.json`` for byte-level BPE (GPT-2 style).

A JSON file must hold tokens as text, but byte-level tokens are arbitrary bytes (half a
UTF-8 character, a control byte). GPT-2's trick: map each of the 256 bytes to a printable
character - printable ASCII and Latin-1 map to themselves, the rest (space, newline,
control bytes...) to the characters from U+0100 up - and write a token as the string of
its bytes' characters. That is why a leading space shows up as "Ġ" in GPT-2's vocabulary.

>>> token_to_text(b" the"), text_to_token("Ġthe")
('Ġthe', b' the')

The layout written here is the one HF ``tokenizers`` produces for such a tokenizer: a
``Split`` pre-tokenizer with the regex followed by ``ByteLevel`` for the byte mapping,
``ByteLevel`` decoding, a ``BPE`` model (vocab + ranked merges) and the special tokens as
``added_tokens`` with ``special: true``. Reading also accepts GPT-2's own layout, where the
``ByteLevel`` pre-tokenizer applies the GPT-2 regex itself.

Beside it, ``tokenizer_config.json`` tells ``transformers``' ``AutoTokenizer`` the rest: the
class that reads ``tokenizer.json``, the end-of-sequence token and, for a tokenizer with the
chat markers, the chat template.

>>> config = to_tokenizer_config(["<|endoftext|>"], model_max_length=64)
>>> config["eos_token"], config["model_max_length"], "chat_template" in config
('<|endoftext|>', 64, False)
"""

import functools

import regex

from .chat import CHAT_SPECIAL_TOKENS, CHAT_TEMPLATE, END_OF_TURN
from .patterns import GPT2_PATTERN

END_OF_TEXT = "<|endoftext|>"


@functools.cache
def bytes_to_unicode():
    """GPT-2's map from each byte value to a printable character.

    >>> table = bytes_to_unicode()
    >>> len(table), table[ord("A")], table[ord(" ")], table[ord("\\n")], table[0xE9]
    (256, 'A', 'Ġ', 'Ċ', 'é')
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, shifted = {}, 0
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + shifted)
            shifted += 1
    return table


@functools.cache
def unicode_to_bytes():
    """The inverse of ``bytes_to_unicode``: printable character -> byte value."""
    return {char: byte for byte, char in bytes_to_unicode().items()}


def token_to_text(token):
    """A token's bytes as GPT-2 byte-level text (one character per byte)."""
    table = bytes_to_unicode()
    return "".join(table[byte] for byte in token)


def text_to_token(text):
    """GPT-2 byte-level text back to the token's bytes; a clear error if it is not such text.

    >>> text_to_token("a b")
    Traceback (most recent call last):
    ...
    ValueError: token 'a b' is not GPT-2 byte-level text: ' ' is not one of the 256 byte characters
    """
    table = unicode_to_bytes()
    for char in text:
        if char not in table:
            raise ValueError(
                f"token {text!r} is not GPT-2 byte-level text: "
                f"{char!r} is not one of the 256 byte characters"
            )
    return bytes(table[char] for char in text)


def to_tokenizer_json(vocab, merges, pattern, special_tokens):
    """The ``tokenizer.json`` dictionary for a byte-level BPE tokenizer.

    ``vocab``: id -> bytes; ``merges``: pair of ids -> new id, in rank order; ``pattern``:
    the split regex source; ``special_tokens``: text -> id.
    """
    byte_level = {
        "type": "ByteLevel",
        "add_prefix_space": False,
        "trim_offsets": True,
        "use_regex": False,
    }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": text,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for text, i in sorted(special_tokens.items(), key=lambda item: item[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {
                    "type": "Split",
                    "pattern": {"Regex": pattern},
                    "behavior": "Isolated",
                    "invert": False,
                },
                byte_level,
            ],
        },
        "post_processor": None,
        "decoder": byte_level,
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {token_to_text(token): i for i, token in sorted(vocab.items())},
            "merges": [[token_to_text(vocab[a]), token_to_text(vocab[b])] for a, b in merges],
        },
    }


def to_tokenizer_config(special_tokens, *, model_max_length=None):
    """The ``tokenizer_config.json`` dictionary for a tokenizer with ``special_tokens``.

    With the chat markers it carries ``CHAT_TEMPLATE``, and its end of sequence is
    ``<|end|>``, where a chat model stops; otherwise ``<|endoftext|>`` if there is one.
    ``model_max_length`` is the model's context length, where known.
    """
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # reads tokenizer.json as it is
        "clean_up_tokenization_spaces": False,  # decode gives the text back, spaces and all
    }
    chat = all(token in special_tokens for token in CHAT_SPECIAL_TOKENS)
    if chat:
        config["eos_token"] = END_OF_TURN
        config["chat_template"] = CHAT_TEMPLATE
    elif END_OF_TEXT in special_tokens:
        config["eos_token"] = END_OF_TEXT
    if model_max_length is not None:
        if not isinstance(model_max_length, int) or model_max_length < 1:
            raise ValueError(
                f"model_max_length={model_max_length!r}: expected a positive number of tokens "
                "(the model's context length) or None"
            )
        config["model_max_length"] = model_max_length
    return config


def _split_pattern(pre_tokenizer):
    """The split regex a supported ``pre_tokenizer`` entry applies."""
    kind = pre_tokenizer.get("type") if isinstance(pre_tokenizer, dict) else None
    if kind == "ByteLevel" and pre_tokenizer.get("use_regex", True):
        if pre_tokenizer.get("add_prefix_space", False):
            raise ValueError("ByteLevel pre-tokenizer with add_prefix_space=true is not supported")
        return GPT2_PATTERN
    if kind == "Sequence":
        steps = pre_tokenizer.get("pretokenizers", [])
        if (
            len(steps) == 2
            and steps[0].get("type") == "Split"
            and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True)
            and not steps[1].get("add_prefix_space", False)
        ):
            split = steps[0]
            if split.get("behavior") != "Isolated" or split.get("invert", False):
                raise ValueError(
                    f"Split behaviour {split.get('behavior')!r} (invert="
                    f"{split.get('invert')}) is not supported: expected 'Isolated'"
                )
            if "Regex" not in split.get("pattern", {}):
                raise ValueError(
                    f"Split pattern {split.get('pattern')!r} is not supported: expected a Regex"
                )
            return split["pattern"]["Regex"]
    raise ValueError(
        f"pre_tokenizer {pre_tokenizer!r} is not supported: expected ByteLevel, or "
        "Sequence[Split(Regex), ByteLevel(use_regex=false)] (byte-level BPE, GPT-2 style)"
    )


def from_tokenizer_json(data):
    """Read a ``tokenizer.json`` dictionary into ``(vocab, merges, pattern, special_tokens,
    ignore_merges)`` with the meanings of ``to_tokenizer_json``'s arguments (``pattern``
    compiled).

    Raises ``ValueError`` naming the problem for anything that is not byte-level BPE.
    """
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError("expected a JSON object with a 'model' entry")
    model = data["model"]
    if (
        model.get("type", "BPE") != "BPE"
        or "merges" not in model
        or not isinstance(model.get("vocab"), dict)
    ):
        raise ValueError(
            f"model type {model.get('type')!r} is not supported: expected BPE with vocab and merges"
        )
    if data.get("normalizer") is not None:
        raise ValueError(
            f"normalizer {data['normalizer'].get('type')!r} is not supported: expected none"
        )
    for option in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(option):
            raise ValueError(f"BPE option {option}={model[option]!r} is not supported")
    source = _split_pattern(data.get("pre_tokenizer"))
    try:
        pattern = regex.compile(source)
    except regex.error as err:
        raise ValueError(f"split pattern {source!r} is not a valid regex: {err}") from None

    special_tokens = {}
    for added in data.get("added_tokens", []):
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            raise ValueError(
                f"added token {added.get('content')!r}: lstrip/rstrip/single_word are not supported"
            )
        special_tokens[added["content"]] = int(added["id"])

    special_ids = set(special_tokens.values())
    vocab = {
        int(i): text_to_token(text)
        for text, i in model["vocab"].items()
        if int(i) not in special_ids
    }
    token_ids = {token: i for i, token in vocab.items()}
    missing = [byte for byte in range(256) if bytes([byte]) not in token_ids]
    if missing:
        raise ValueError(
            f"vocabulary lacks {len(missing)} of the 256 single bytes (first: {missing[0]}): "
            "byte-level BPE needs them all to encode any text"
        )
    merges = {}
    for entry in model["merges"]:
        parts = entry.split(" ") if isinstance(entry, str) else entry
        if not isinstance(parts, list) or len(parts) != 2:
            raise ValueError(f"merge {entry!r} is not a pair of tokens")
        pair = (text_to_token(parts[0]), text_to_token(parts[1]))
        for part in (*pair, pair[0] + pair[1]):
            if part not in token_ids:
                raise ValueError(
                    f"merge {entry!r} uses {token_to_text(part)!r}, which is not in the vocabulary"
                )
        merges.setdefault((token_ids[pair[0]], token_ids[pair[1]]), token_ids[pair[0] + pair[1]])
    return vocab, merges, pattern, special_tokens, bool(model.get("ignore_merges", False))
