"""Character-level tokens: one id per distinct character, the simplest tokenizer there is.

nanoGPT's ``shakespeare_char`` recipe uses exactly this: the 65 characters of the corpus,
sorted, give ids 0..64. Every character is one token, so sequences are long and the
vocabulary tiny - the opposite trade-off to BPE (lesson 01).

>>> vocab = CharVocab.from_text("hello")
>>> vocab.chars, vocab.encode("hole"), vocab.decode([1, 0, 2, 2, 3])
('ehlo', [1, 3, 2, 0], 'hello')
"""

import hashlib
import json
from pathlib import Path

from ..files import atomic_open


class CharVocab:
    """Ids for the characters of ``chars`` (sorted and de-duplicated), in order."""

    def __init__(self, chars):
        self.chars = "".join(sorted(set(chars)))
        self._ids = {char: i for i, char in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text):
        """The vocabulary of every character that occurs in ``text``."""
        return cls(text)

    @property
    def vocab_size(self):
        return len(self.chars)

    @property
    def fingerprint(self):
        """A short hash of the characters, for naming cached token files."""
        return hashlib.sha256(self.chars.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]

    def __repr__(self):
        return f"CharVocab(vocab_size={self.vocab_size})"

    def encode(self, text):
        """The id of each character of ``text``.

        >>> CharVocab("ab").encode("abc")
        Traceback (most recent call last):
        ...
        ValueError: character 'c' (at index 2) is not in this vocabulary of 2 characters: expected one of 'ab'
        """
        try:
            return [self._ids[char] for char in text]
        except KeyError as err:
            char = err.args[0]
            raise ValueError(
                f"character {char!r} (at index {text.index(char)}) is not in this vocabulary of "
                f"{self.vocab_size} characters: expected one of {self.chars[:80]!r}"
            ) from None

    def decode(self, ids, *, skip_special_tokens=False):
        """The characters for ``ids``. A character vocabulary has no special tokens, so
        ``skip_special_tokens`` (the BPE tokenizer's option) changes nothing.

        >>> CharVocab("ab").decode([0, 2])
        Traceback (most recent call last):
        ...
        ValueError: token id 2 is out of range: expected an id in 0..1
        """
        chars = []
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(
                    f"token id {i} is out of range: expected an id in 0..{self.vocab_size - 1}"
                )
            chars.append(self.chars[i])
        return "".join(chars)

    # --- files ---------------------------------------------------------------------------------
    FILE_NAME = "char_vocab.json"

    def save(self, directory, *, model_max_length=None):
        """Write ``directory/char_vocab.json`` (atomically); returns its path.

        ``model_max_length`` is taken as ``Tokenizer.save`` takes it, and left out: a
        character vocabulary has no ``transformers`` form to write it in."""
        path = Path(directory) / self.FILE_NAME
        with atomic_open(path, "w", encoding="utf-8") as file:
            json.dump({"type": "char", "chars": self.chars}, file, ensure_ascii=False)
        return path

    @classmethod
    def load(cls, path):
        """Read a ``char_vocab.json`` written by ``save`` (or a directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / cls.FILE_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("type") != "char" or not isinstance(data.get("chars"), str):
                raise ValueError("expected {'type': 'char', 'chars': '...'}")
        except (OSError, ValueError, AttributeError) as err:
            raise ValueError(f"cannot read {path} as a character vocabulary: {err}") from None
        return cls(data["chars"])
