"""Corpora: the one tinyllm ships, local text files, and Hugging Face datasets when online.

>>> text = load_corpus("tinyshakespeare")
>>> len(text), text[:14]
(1115394, 'First Citizen:')

A name resolves in this order: a corpus shipped in the package (``SHIPPED_CORPORA``); a
path to a local text file; a known Hugging Face dataset (``HUB_CORPORA``, e.g.
``"tinystories"``) or any dataset as ``"hf:<name>"``, loaded through ``datasets`` - which
downloads, so only when the user asks for it by name and is online. A name that looks like a
path (it holds a folder separator or has a suffix such as ``.txt``) and names no file is a
``FileNotFoundError``, not an unknown corpus.
"""

import importlib.resources
import os
from pathlib import Path

SHIPPED_CORPORA = {"tinyshakespeare": "tinyshakespeare.txt"}
HUB_CORPORA = {"tinystories": "roneneldan/TinyStories"}


def load_corpus(name, *, split="train", text_field="text", separator="\n\n", **dataset_options):
    """The text of corpus ``name`` as one string.

    For Hugging Face datasets, ``split`` (any ``datasets`` split spec, such as
    ``"train[:1%]"``) picks the rows, ``text_field`` the column, ``separator`` goes between
    documents (use ``"<|endoftext|>"`` to mark them for a BPE tokenizer), and
    ``dataset_options`` go to ``datasets.load_dataset`` (``data_files=``, ``cache_dir=``...).

    >>> load_corpus("data/shakespeare.txt")
    Traceback (most recent call last):
    ...
    FileNotFoundError: corpus file 'data/shakespeare.txt' does not exist
    >>> load_corpus("shakespeare")
    Traceback (most recent call last):
    ...
    ValueError: unknown corpus 'shakespeare': expected one of ['tinyshakespeare'], a path to a text file, one of ['tinystories'] or 'hf:<dataset name>' (downloads through the datasets library)
    """
    name = str(name)
    if name in SHIPPED_CORPORA:
        resource = importlib.resources.files("tinyllm.data") / SHIPPED_CORPORA[name]
        return resource.read_text(encoding="utf-8")
    path = Path(name).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if name in HUB_CORPORA or name.startswith("hf:"):
        dataset = HUB_CORPORA.get(name, name.removeprefix("hf:"))
        return load_hub_corpus(
            dataset, split=split, text_field=text_field, separator=separator, **dataset_options
        )
    if _looks_like_a_path(name):
        reason = "is a folder, not a text file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"corpus file {name!r} {reason}")
    raise ValueError(
        f"unknown corpus {name!r}: expected one of {sorted(SHIPPED_CORPORA)}, a path to a text file, "
        f"one of {sorted(HUB_CORPORA)} or 'hf:<dataset name>' (downloads through the datasets library)"
    )


def _looks_like_a_path(name):
    """``True`` for ``"notes.txt"``, ``"data/notes"`` or ``"~/notes"``; not for ``"tinystories"``.

    >>> [_looks_like_a_path(name) for name in ("notes.txt", "data/notes", "tinystories")]
    [True, True, False]
    """
    separators = {"/", os.sep, os.altsep} - {None}
    return Path(name).suffix != "" or any(sep in name for sep in separators) or name[:1] == "~"


def load_hub_corpus(
    dataset, *, split="train", text_field="text", separator="\n\n", **dataset_options
):
    """Load a Hugging Face dataset through ``datasets.load_dataset`` and join one text column.

    Works offline for the builders ``datasets`` ships (``"json"``, ``"text"``, ``"csv"``) given
    local ``data_files``; hub names download on first use and are cached by ``datasets``.
    """
    try:
        import datasets
    except ImportError:
        raise ImportError(
            "loading Hugging Face datasets needs the datasets library: pip install 'tinyllm[hf]'"
        ) from None
    rows = datasets.load_dataset(dataset, split=split, **dataset_options)
    if text_field not in rows.column_names:
        raise ValueError(
            f"dataset {dataset!r} has no column {text_field!r}: expected one of {rows.column_names}"
        )
    return separator.join(rows[text_field])
