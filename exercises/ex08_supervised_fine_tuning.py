"""Exercises for lesson 08: supervised fine-tuning. Replace each ``raise NotImplementedError``.

Fine-tuning trains on conversations. The loss falls only on what the assistant says: the
targets are the next tokens there and -100 everywhere else (8.1). Conversations are short,
so several are packed one after another into a row of the context length (8.2), and an
attention mask keeps each one to its own tokens, as if it were alone (8.3). Before all that,
the chat template turns a conversation into token ids and says which ones are the
assistant's (8.4).

Everything here is plain Python and NumPy. Token ids are ints; a conversation is a list of
messages ``{"role": "system" | "user" | "assistant", "content": "..."}``.

Grade with ``tinyllm grade exercises -k ex08`` (lesson: lessons/08-supervised-fine-tuning.md).
"""

import numpy as np  # noqa: F401 - you will need it

IGNORE = -100  # a target that is not scored (PyTorch's ignore_index)
ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end|>"  # closes every turn; a turn opens with "<|system|>", "<|user|>", ...


# --- Exercise 8.1 ---------------------------------------------------------------------------
def assistant_targets(ids, assistant_mask, ignore_index=IGNORE):
    """The targets of one conversation for the assistant-only loss: a list as long as ``ids``.

    ids:            the conversation's token ids, what the model reads.
    assistant_mask: one bool per id, True where that token is the assistant's to learn (its
                    words and the ``<|end|>`` that closes its turn), False elsewhere (the
                    system and user turns, and every turn's opening marker).

    Position i predicts the token after it, so its target is that next token - if the next
    token is one the model should learn:

        targets[i] = ids[i + 1]       where assistant_mask[i + 1] is True
                   = ignore_index     otherwise, and always at the last position

    Raise ``ValueError`` if ``ids`` and ``assistant_mask`` differ in length.

    With u = 300 (<|user|>), a = 301 (<|assistant|>), e = 303 (<|end|>):
    ids  [300, 7, 8, 303, 301, 5, 303]   "<|user|>7 8<|end|><|assistant|>5<|end|>"
    mask [F,   F, F, F,   F,   T, T  ]
    ->   [-100, -100, -100, -100, 5, 303, -100]
    The ``<|assistant|>`` marker is given, not learned, yet the position holding it is where
    the model learns to say 5; and 5's position learns to say ``<|end|>`` - to stop.
    """
    raise NotImplementedError("Exercise 8.1: targets on the assistant's tokens, -100 elsewhere")


# --- Exercise 8.2 ---------------------------------------------------------------------------
def pack_examples(examples, context_length, pad_id=0):
    """Pack examples into rows of ``context_length`` tokens; return ``(ids, targets,
    positions, documents)``, four int64 arrays of shape (N, context_length).

    examples: a list of ``(ids, targets)`` pairs of equal-length lists (from 8.1), in order.

    Go through the examples in order. Each row takes whole examples one after another while
    the next one still fits; when it does not, the row is closed and the example starts the
    next row. (Never cut an example, never reorder them.) In each row:

        ids, targets   the examples' own, side by side
        positions      each token's position in its own example: 0, 1, 2, ... from each start
        documents      which example of the row a token belongs to: 0, 1, 2, ... in the row
        the rest       padding: ids ``pad_id``, targets -100, positions 0, documents -1

    Raise ``ValueError`` naming the example's index if an example is longer than
    ``context_length``.

    examples ([1, 2, 3], [2, 3, -100]) and ([4, 5], [5, -100]), context_length 6: one row,
    ids [[1, 2, 3, 4, 5, 0]], targets [[2, 3, -100, 5, -100, -100]],
    positions [[0, 1, 2, 0, 1, 0]], documents [[0, 0, 0, 1, 1, -1]].
    With lengths 4, 3, 2 and context_length 6: rows [4 + pad 2] and [3 + 2 + pad 1].
    """
    raise NotImplementedError("Exercise 8.2: whole examples into rows, positions restarting")


# --- Exercise 8.3 ---------------------------------------------------------------------------
def document_causal_mask(documents):
    """Which keys each query may attend to in packed rows: booleans (B, T, T).

    documents: (B, T) ints from 8.2 - the example each token belongs to, -1 on padding.

        mask[b, i, j] = True  exactly when  j <= i                        (causal)
                                       and  documents[b, i] == documents[b, j]  (same example)

    Each row's mask is block-diagonal, one causal triangle per example: a token sees the
    earlier tokens of its own conversation and nothing of the others. (Padding sees only
    earlier padding: never a row of all False, and it has no targets anyway.)

    documents [[0, 0, 1, 1, 1]]:
        [[1, 0, 0, 0, 0],
         [1, 1, 0, 0, 0],
         [0, 0, 1, 0, 0],
         [0, 0, 1, 1, 0],
         [0, 0, 1, 1, 1]]   (as booleans)
    """
    raise NotImplementedError("Exercise 8.3: one causal block per packed example")


# --- Exercise 8.4 ---------------------------------------------------------------------------
def format_chat(tokenizer, messages, add_generation_prompt=False):
    """The chat template: ``messages`` as token ids and an assistant mask, ``(ids, mask)``.

    tokenizer: has ``special_tokens`` (a dict: "<|user|>", "<|end|>", ... -> id) and
               ``encode(text, allowed_special="none")``, which encodes text with special
               tokens *disabled*: "<|end|>" in it is seven characters, not the marker.

    Each message becomes ``<|role|>content<|end|>``:

        [id of "<|" + role + "|>"]  +  encode(content, allowed_special="none")  +  [id of "<|end|>"]

    and the mask is False for the opening marker, and for the content and the ``<|end|>``
    it is True in an assistant turn, False in any other. With ``add_generation_prompt``,
    end with the id of "<|assistant|>" (mask False): the open turn the model completes.
    Raise ``ValueError`` naming the role of a message whose role is not in ``ROLES``.

    Encode each content on its own, never the whole rendered text at once: with special
    tokens enabled, a user who types "<|assistant|>" would get the real marker and could
    write the assistant's turn for it.

    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}] reads
    "<|user|>Hi<|end|><|assistant|>Hello!<|end|>", and the mask is True on "Hello!"'s tokens
    and on the last ``<|end|>`` only.
    """
    raise NotImplementedError("Exercise 8.4: the chat template and its assistant mask")
