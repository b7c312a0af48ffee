"""Pre-tokenization: cut text into pieces with a regex before any merging happens.

BPE never merges across a piece boundary, so the split pattern decides what a token *can*
be: with the GPT-2 pattern " dog", "dog" and "." are separate pieces, so no token will ever
glue a word to the punctuation after it. GPT-4's pattern adds case-insensitive
contractions, caps digit runs at three ("2024" -> "202" + "4") and keeps newlines apart.

>>> split_text(compile_pattern("gpt2"), "Hello world, it's 2024!")
['Hello', ' world', ',', ' it', "'s", ' 2024', '!']
>>> split_text(compile_pattern("gpt4"), "Hello world, it's 2024!")
['Hello', ' world', ',', ' it', "'s", ' ', '202', '4', '!']
"""

import regex

# The pattern GPT-2 was trained with (also what HF's ByteLevel pre-tokenizer uses).
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# The cl100k pattern (GPT-3.5 / GPT-4), as published in tiktoken.
GPT4_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)

SPLIT_PATTERNS = {"gpt2": GPT2_PATTERN, "gpt4": GPT4_PATTERN}


def resolve_pattern(pattern):
    """The regex source for ``pattern``: a name in ``SPLIT_PATTERNS`` or a compiled regex.

    A custom pattern is passed compiled, so a misspelt name can never be mistaken for a
    regex that happens to match only itself.

    >>> resolve_pattern("gpt2") == GPT2_PATTERN
    True
    >>> resolve_pattern(regex.compile(r"\\w+|\\W+"))
    '\\\\w+|\\\\W+'
    >>> resolve_pattern("gpt3")
    Traceback (most recent call last):
    ...
    ValueError: unknown split pattern name 'gpt3': expected one of ['gpt2', 'gpt4'], or a compiled regex (regex.compile(...)) for a custom pattern
    """
    if isinstance(pattern, regex.Pattern):
        return pattern.pattern
    if isinstance(pattern, str) and pattern in SPLIT_PATTERNS:
        return SPLIT_PATTERNS[pattern]
    raise ValueError(
        f"unknown split pattern name {pattern!r}: expected one of {sorted(SPLIT_PATTERNS)}, "
        "or a compiled regex (regex.compile(...)) for a custom pattern"
    )


def pattern_name(source):
    """The name of a built-in pattern with this regex source, or ``"custom"``.

    >>> pattern_name(GPT4_PATTERN), pattern_name(r"\\w+")
    ('gpt4', 'custom')
    """
    for name, known in SPLIT_PATTERNS.items():
        if source == known:
            return name
    return "custom"


def compile_pattern(pattern):
    """Compile a pattern name or a compiled regex (returned as is).

    >>> compile_pattern("gpt2").findall("a b")
    ['a', ' b']
    """
    return (
        pattern if isinstance(pattern, regex.Pattern) else regex.compile(resolve_pattern(pattern))
    )


def split_text(compiled, text):
    """Cut ``text`` into pieces: every regex match, and any text the regex skipped between
    matches as a piece of its own (Hugging Face's "Isolated" split), so no character is lost.

    >>> split_text(regex.compile(r"[a-z]+"), "ab, cd!")
    ['ab', ', ', 'cd', '!']
    """
    if compiled.groups == 0:  # fast path: findall gives whole matches, and built-ins match all
        pieces = compiled.findall(text)
        if sum(map(len, pieces)) == len(text):
            return pieces
    pieces, end = [], 0
    for match in compiled.finditer(text):
        start, stop = match.span()
        if start > end:
            pieces.append(text[end:start])
        if stop > start:
            pieces.append(match.group())
        end = stop
    if end < len(text):
        pieces.append(text[end:])
    return pieces
