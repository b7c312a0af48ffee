"""Supervised fine-tuning's loss: next-token cross-entropy on the assistant's tokens only,
over rows of packed conversations (``tinyllm.data.sft``).

A batch is ``(ids, targets, positions, documents)``: the targets are -100 wherever the
next token is not the assistant's; ``documents`` becomes the mask that keeps each packed
conversation to its own keys, and ``positions`` restart at 0 with each. The loss is the
mean over the scored tokens of the whole batch - the same number, and the same gradients,
as the same conversations unpacked and padded.
"""

import numpy as np

from ..data.sft import document_mask


def sft_loss(model, batch):
    """``loss_fn`` for the ``Trainer``: the masked loss of a packed batch, and its size."""
    ids, targets, positions, documents = batch
    _, loss = model(ids, targets, mask=document_mask(documents), positions=positions)
    return loss, {"tokens": int(np.size(ids))}
