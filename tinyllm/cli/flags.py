"""Command-line flags: from a config dataclass's fields, and the checked number types,
sampling flags and ``--dtype`` that several commands share."""

import argparse
import dataclasses
import math
import types

from tinyllm.backend.precision import COMPUTE_DTYPES, DTYPE_HELP


def add_dataclass_flags(parser, cls, title, defaults=None):
    """One ``--field-name`` flag per field of dataclass ``cls``: typed from its annotation,
    explained by its ``help`` metadata, and held to its ``choices`` metadata where it has one.
    ``defaults`` (a dict by field name) overrides some of the class's own defaults."""
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(cls):
        default = (defaults or {}).get(field.name, field.default)
        flag = "--" + field.name.replace("_", "-")
        if "help" not in field.metadata:
            raise TypeError(f"{cls.__name__}.{field.name} has no help text in its metadata")
        text = field.metadata["help"]
        choices = field.metadata.get("choices")
        if choices:
            text += f"; one of: {', '.join(choices)}"
        text += " (default: %(default)s)"
        if field.type is bool:
            group.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=default, help=text
            )
            continue
        group.add_argument(
            flag,
            type=flag_type(field.type, choices),
            default=default,
            metavar=field.name.upper(),
            help=text,
        )


def dataclass_from_flags(cls, args, **fixed):
    """An instance of ``cls`` from the parsed flags that name its fields."""
    values = {
        f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)
    }
    return cls(**{**values, **fixed})


def flag_type(annotation, choices=None):
    """The argparse ``type`` for a field annotated ``int``, ``float``, ``str`` or ``X | None``
    (where the word "none" gives None), refusing a value outside ``choices``."""
    optional = isinstance(annotation, types.UnionType)
    if optional:
        (annotation,) = [t for t in annotation.__args__ if t is not type(None)]

    def convert(text):
        if optional and text.lower() == "none":
            return None
        value = annotation(text)
        if choices and value not in choices:
            raise argparse.ArgumentTypeError(
                f"invalid choice {text!r}; expected one of {', '.join(choices)}"
            )
        return value

    convert.__name__ = annotation.__name__  # argparse names the type in its error messages
    return convert


def integer(least):
    """An argparse type: an integer >= ``least``."""

    def integer(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= {least}")
        return value

    return integer


def number(least):
    """An argparse type: a finite number >= ``least``."""

    def number(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= least):
            raise argparse.ArgumentTypeError(f"{text!r} is not a number >= {least}")
        return value

    return number


def probability(text):
    """An argparse type: a probability in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a probability in (0, 1]")
    return value


SAMPLING_FLAGS = {  # name: (type, default, help): the sampling rules' flags
    "temperature": (
        number(0), 0.8,
        "below 1 safer, above 1 more surprising; 0 always picks the likeliest token "
        "(default: 0.8)",
    ),
    "top_k": (
        integer(1), None,
        "sample among the k likeliest tokens only (default: all)",
    ),
    "top_p": (
        probability, None,
        "sample among the likeliest tokens that together hold probability p, in (0, 1] "
        "(default: all)",
    ),
    "min_p": (
        probability, None,
        "drop tokens less likely than min-p times the likeliest one, in (0, 1] "
        "(default: none dropped)",
    ),
    "repetition_penalty": (
        number(0), None,
        "above 1, tokens already in the text become less likely (default: none)",
    ),
}  # fmt: skip


def add_sampling_flags(parser, *names):
    """The flags of the sampling rules ``names`` (keys of ``SAMPLING_FLAGS``), one each."""
    for name in names:
        kind, default, text = SAMPLING_FLAGS[name]
        parser.add_argument("--" + name.replace("_", "-"), type=kind, default=default, help=text)


def add_dtype_flag(parser):
    """``--dtype``: the compute dtype of the command's forwards (and of its training, for
    ``speedrun``), as ``TrainConfig.dtype`` is for the training commands. Which backend
    allows which dtype is checked when the command runs (``backend/precision.py``)."""
    parser.add_argument(
        "--dtype",
        choices=COMPUTE_DTYPES,
        default="float32",
        help=f"{DTYPE_HELP} (default: %(default)s)",
    )
