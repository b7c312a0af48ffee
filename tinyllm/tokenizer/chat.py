"""Chat formatting: a conversation as one token sequence, and which tokens the model learns.

A conversation is a list of messages ``{"role": ..., "content": ...}`` with roles system,
user and assistant. Each turn becomes ``<|role|>content<|end|>``, the markers being special
tokens. Message content is always encoded with special tokens *disabled*, so a user who
types "<|assistant|>" gets those characters, never the marker: no text can forge a turn.

Supervised fine-tuning takes the loss only on what the assistant says: its content and the
``<|end|>`` closing it (the model must learn when to stop), not the prompt, nor the
``<|assistant|>`` marker that the prompt supplies. ``format_chat`` returns that mask.

>>> render_chat([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
'<|user|>Hi<|end|><|assistant|>Hello!<|end|>'

``CHAT_TEMPLATE`` is the same format in Jinja, the language of Hugging Face chat templates:
a saved tokenizer carries it, so ``transformers``' ``apply_chat_template`` gives the ids and,
through its ``{% generation %}`` block, the assistant mask of ``format_chat``. One
difference stays: transformers renders the conversation to text and then encodes it, so a
user's "<|assistant|>" becomes the marker there, unless it is called with
``sanitize_control_tokens=True`` (which encodes such text as text, as ``format_chat`` does).
"""

from typing import NamedTuple

ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end|>"
CHAT_SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", END_OF_TURN)


CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{- raise_exception('message ' ~ loop.index0 ~ ' has role ' ~ message['role'] ~"
    " ': expected system, user or assistant') -}}"
    "{%- endif -%}"
    "{%- if message['content'] is not string -%}"
    "{{- raise_exception('message ' ~ loop.index0 ~ ' content is not a string') -}}"
    "{%- endif -%}"
    "{{- '<|' ~ message['role'] ~ '|>' -}}"
    "{%- if message['role'] == 'assistant' -%}"  # what the model learns to say
    "{%- generation -%}{{- message['content'] ~ '<|end|>' -}}{%- endgeneration -%}"
    "{%- else -%}"
    "{{- message['content'] ~ '<|end|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


def role_token(role):
    """The special token that opens a turn by ``role``.

    >>> role_token("assistant")
    '<|assistant|>'
    """
    return f"<|{role}|>"


def check_messages(messages):
    """Raise a clear error unless ``messages`` is a list of {role, content} dictionaries.

    >>> check_messages([{"role": "robot", "content": "beep"}])
    Traceback (most recent call last):
    ...
    ValueError: message 0 has role 'robot': expected one of ('system', 'user', 'assistant')
    """
    if isinstance(messages, (str, dict)):
        raise TypeError(
            f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise ValueError(
                f"message {index} is {message!r}: expected a dict with keys 'role' and 'content'"
            )
        if message["role"] not in ROLES:
            raise ValueError(
                f"message {index} has role {message['role']!r}: expected one of {ROLES}"
            )
        if not isinstance(message["content"], str):
            raise TypeError(
                f"message {index} content is {type(message['content']).__name__}: expected str"
            )


def render_chat(messages, *, add_generation_prompt=False):
    """The conversation as text with the markers spelled out; with ``add_generation_prompt``
    it ends with an open ``<|assistant|>`` turn for the model to complete.

    >>> render_chat([{"role": "system", "content": "Be brief."}], add_generation_prompt=True)
    '<|system|>Be brief.<|end|><|assistant|>'
    """
    check_messages(messages)
    text = "".join(role_token(m["role"]) + m["content"] + END_OF_TURN for m in messages)
    return text + role_token("assistant") if add_generation_prompt else text


class ChatTokens(NamedTuple):
    """Token ids of a conversation and, for each, whether it is the assistant's to learn."""

    ids: list
    assistant_mask: list


def format_chat(tokenizer, messages, *, add_generation_prompt=False):
    """Encode a conversation with ``tokenizer``: a ``ChatTokens(ids, assistant_mask)``.

    For text with no special-token look-alikes, ``ids`` equals
    ``tokenizer.encode(render_chat(messages, ...))``.
    """
    check_messages(messages)
    missing = [t for t in CHAT_SPECIAL_TOKENS if t not in tokenizer.special_tokens]
    if missing:
        raise ValueError(
            f"tokenizer lacks the chat special tokens {missing}: train or load one that has "
            f"{list(CHAT_SPECIAL_TOKENS)}"
        )
    special = tokenizer.special_tokens
    ids, mask = [], []
    for message in messages:
        learned = message["role"] == "assistant"
        content = tokenizer.encode(message["content"], allowed_special="none")
        ids += [special[role_token(message["role"])], *content, special[END_OF_TURN]]
        mask += [False, *[learned] * len(content), learned]
    if add_generation_prompt:
        ids.append(special[role_token("assistant")])
        mask.append(False)
    return ChatTokens(ids, mask)
