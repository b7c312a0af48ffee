"""The byte-level BPE tokenizer: train on text, encode, decode, save as ``tokenizer.json``.

Encoding runs in three steps: cut out special tokens (``<|endoftext|>``, the chat roles),
which map straight to their ids and are never split or merged; cut the rest into pieces
with the split regex (``patterns.py``); replay the learned merges on each piece's UTF-8
bytes (``bpe.encode_with_merges``). Real text repeats its pieces (" the", ",", "\\n"), so
each piece's ids are cached and most pieces cost one dictionary lookup.

>>> tok = Tokenizer.train("the cat sat on the mat. " * 20, vocab_size=270)
>>> ids = tok.encode("the cat<|endoftext|>")
>>> [tok.decode([i]) for i in ids]
['the', ' cat', '<|endoftext|>']
>>> tok.decode(ids)
'the cat<|endoftext|>'
>>> len(tok.encode("<|endoftext|>")), len(tok.encode("<|endoftext|>", allowed_special="none")) > 1
(1, True)
"""

import functools
import hashlib
import json
from pathlib import Path

import regex

from ..files import atomic_open
from . import chat
from .bpe import encode_with_merges, train_naive
from .hf_format import from_tokenizer_json, to_tokenizer_config, to_tokenizer_json
from .patterns import compile_pattern, pattern_name, split_text
from .train import count_pretokens, train_incremental

DEFAULT_SPECIAL_TOKENS = ("<|endoftext|>", *chat.CHAT_SPECIAL_TOKENS)
TRAINERS = {"incremental": train_incremental, "naive": train_naive}
PIECE_CACHE_SIZE = 200_000  # pieces kept before the cache is emptied and refilled


class Tokenizer:
    """A byte-level BPE tokenizer.

    ``vocab`` maps id -> bytes (all 256 single bytes must be there); ``merges`` maps a pair
    of ids -> the id it merges into, in the order the merges were learned; ``pattern`` is a
    split-pattern name (``"gpt2"``, ``"gpt4"``) or a compiled regex; ``special_tokens`` maps
    text -> id. ``ignore_merges`` (as in Llama 3's files) encodes a piece that is itself a
    token as that token directly.
    """

    def __init__(self, vocab, merges, *, pattern="gpt2", special_tokens=None, ignore_merges=False):
        self.vocab = dict(vocab)
        self.merges = dict(merges)
        self.special_tokens = dict(special_tokens or {})
        self.ignore_merges = ignore_merges
        self._split_regex = compile_pattern(pattern)
        self.pattern = self._split_regex.pattern
        self.pattern_name = pattern_name(self.pattern)

        self._token_ids = {token: i for i, token in self.vocab.items()}
        missing = [byte for byte in range(256) if bytes([byte]) not in self._token_ids]
        if missing:
            raise ValueError(
                f"vocab lacks {len(missing)} of the 256 single-byte tokens (first: {missing[0]})"
            )
        for pair, new_id in self.merges.items():
            if not all(i in self.vocab for i in (*pair, new_id)):
                raise ValueError(f"merge {pair} -> {new_id} names an id that is not in the vocab")
        clashes = sorted(set(self.special_tokens.values()) & set(self.vocab))
        if clashes:
            raise ValueError(f"special token ids {clashes} are already ids of ordinary tokens")
        self._byte_ids = [self._token_ids[bytes([byte])] for byte in range(256)]
        self._ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self._id_to_bytes = {
            **self.vocab,
            **{i: text.encode("utf-8") for text, i in self.special_tokens.items()},
        }
        self._all_specials = self._special_regex(self.special_tokens)
        self._special_ids = frozenset(self.special_tokens.values())
        self._piece_cache = {}

    @classmethod
    def train(
        cls,
        texts,
        vocab_size,
        *,
        pattern="gpt2",
        special_tokens=DEFAULT_SPECIAL_TOKENS,
        algorithm="incremental",
    ):
        """Learn a tokenizer of ``vocab_size`` tokens (special tokens included) from ``texts``,
        a string or an iterable of strings. ``algorithm`` is ``"incremental"`` (fast) or
        ``"naive"`` (recount every merge, for the lesson); both learn the same merges.

        >>> Tokenizer.train("abc", vocab_size=100)
        Traceback (most recent call last):
        ...
        ValueError: vocab_size=100 is too small: expected at least 256 byte tokens + 5 special tokens = 261
        """
        special_tokens = list(special_tokens)
        if len(set(special_tokens)) != len(special_tokens) or "" in special_tokens:
            raise ValueError(f"special tokens must be distinct and non-empty, got {special_tokens}")
        minimum = 256 + len(special_tokens)
        if not isinstance(vocab_size, int) or vocab_size < minimum:
            raise ValueError(
                f"vocab_size={vocab_size!r} is too small: expected at least 256 byte tokens "
                f"+ {len(special_tokens)} special tokens = {minimum}"
            )
        if algorithm not in TRAINERS:
            raise ValueError(
                f"unknown training algorithm {algorithm!r}: expected one of {sorted(TRAINERS)}"
            )
        split_regex = compile_pattern(pattern)
        word_counts = count_pretokens(texts, split_regex, special_tokens)
        merges, vocab = TRAINERS[algorithm](word_counts, vocab_size - len(special_tokens))
        specials = {text: len(vocab) + i for i, text in enumerate(special_tokens)}
        return cls(vocab, merges, pattern=split_regex, special_tokens=specials)

    @property
    def vocab_size(self):
        """One more than the largest id: the number of rows an embedding table needs."""
        return max(self._id_to_bytes) + 1

    def __repr__(self):
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"pattern={self.pattern_name!r}, special_tokens={list(self.special_tokens)})"
        )

    # --- encoding ------------------------------------------------------------------------------
    def encode(self, text, *, allowed_special="all"):
        """Token ids for ``text``. ``allowed_special``: ``"all"`` (special-token text becomes
        the special id, as in HF ``tokenizers``), ``"none"`` (it is encoded as plain text) or
        a set of the special tokens to recognise.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        specials = self._allowed_specials(allowed_special)
        if specials is None:
            return self._encode_ordinary(text)
        ids, start = [], 0
        for match in specials.finditer(text):
            ids.extend(self._encode_ordinary(text[start : match.start()]))
            ids.append(self.special_tokens[match.group()])
            start = match.end()
        ids.extend(self._encode_ordinary(text[start:]))
        return ids

    def encode_batch(self, texts, *, allowed_special="all"):
        """``encode`` for each text of a list; the piece cache is shared across them."""
        return [self.encode(text, allowed_special=allowed_special) for text in texts]

    def _encode_ordinary(self, text):
        ids, cache = [], self._piece_cache
        for piece in split_text(self._split_regex, text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = self._encode_piece(piece)
                if len(cache) >= PIECE_CACHE_SIZE:
                    cache.clear()
                cache[piece] = piece_ids
            ids.extend(piece_ids)
        return ids

    def _encode_piece(self, piece):
        data = piece.encode("utf-8")
        if self.ignore_merges and data in self._token_ids:
            return [self._token_ids[data]]
        return encode_with_merges([self._byte_ids[byte] for byte in data], self.merges, self._ranks)

    def _allowed_specials(self, allowed_special):
        if allowed_special == "all":
            return self._all_specials
        if allowed_special == "none":
            return None
        if isinstance(allowed_special, str):
            raise ValueError(
                f"allowed_special={allowed_special!r}: expected 'all', 'none' or a set of special tokens"
            )
        unknown = sorted(set(allowed_special) - set(self.special_tokens))
        if unknown:
            raise ValueError(
                f"allowed_special names {unknown}, which are not special tokens of this "
                f"tokenizer: expected some of {list(self.special_tokens)}"
            )
        return self._special_regex(allowed_special)

    @staticmethod
    def _special_regex(specials):
        # Longest first, so a special token that starts with another one wins (as HF matches).
        if not specials:
            return None
        return regex.compile(
            "|".join(regex.escape(text) for text in sorted(specials, key=len, reverse=True))
        )

    # --- decoding ------------------------------------------------------------------------------
    def decode_bytes(self, ids):
        """The bytes the tokens stand for (a token may hold part of a UTF-8 character)."""
        try:
            return b"".join([self._id_to_bytes[i] for i in ids])
        except KeyError as err:
            raise ValueError(
                f"token id {err.args[0]!r} is out of range: expected an id in "
                f"0..{self.vocab_size - 1} known to this tokenizer"
            ) from None

    def decode(self, ids, *, skip_special_tokens=False):
        """The text for ``ids``; bytes that are not valid UTF-8 become U+FFFD, as in HF.
        ``skip_special_tokens`` leaves the special tokens out of the text, as HF's option of
        that name does (a served reply shows no ``<|end|>``)."""
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # --- chat ----------------------------------------------------------------------------------
    def format_chat(self, messages, *, add_generation_prompt=False):
        """``chat.format_chat`` with this tokenizer: ``(ids, assistant_mask)``."""
        return chat.format_chat(self, messages, add_generation_prompt=add_generation_prompt)

    # --- files ---------------------------------------------------------------------------------
    def to_json(self):
        """The Hugging Face ``tokenizer.json`` content, as a dictionary."""
        return to_tokenizer_json(self.vocab, self.merges, self.pattern, self.special_tokens)

    @functools.cached_property
    def fingerprint(self):
        """A short hash of everything that decides the ids, for naming cached token files."""
        blob = json.dumps([self.to_json(), self.ignore_merges], sort_keys=True).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:16]

    def save(self, directory, *, model_max_length=None):
        """Write ``directory/tokenizer.json`` and the ``tokenizer_config.json`` that lets
        ``transformers.AutoTokenizer`` load the folder (with the chat template where the
        chat markers are special tokens; ``model_max_length``, the model's context length,
        where given), creating the directory and replacing each file atomically; returns
        the path of ``tokenizer.json``.

        Every folder tinyllm writes a tokenizer into (training runs, their checkpoints, the
        tokenizer cache, ``tinyllm tokenizer train``) goes through here.
        """
        directory = Path(directory)
        files = {
            "tokenizer.json": self.to_json(),
            "tokenizer_config.json": to_tokenizer_config(
                self.special_tokens, model_max_length=model_max_length
            ),
        }
        for name, content in files.items():
            with atomic_open(directory / name, "w", encoding="utf-8") as file:
                json.dump(content, file, ensure_ascii=False, indent=1)
        return directory / "tokenizer.json"

    @classmethod
    def load(cls, path):
        """Read a byte-level BPE ``tokenizer.json`` (or a directory holding one), such as one
        written by ``save``, by HF ``tokenizers``' BPE trainer, or GPT-2's."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"no tokenizer file at {path}: expected a tokenizer.json or a directory holding one"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            vocab, merges, pattern, special_tokens, ignore_merges = from_tokenizer_json(data)
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            detail = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
            raise ValueError(
                f"cannot read {path} as a byte-level BPE tokenizer.json: {detail}"
            ) from None
        return cls(
            vocab,
            merges,
            pattern=pattern,
            special_tokens=special_tokens,
            ignore_merges=ignore_merges,
        )
