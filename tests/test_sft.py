"""Supervised fine-tuning data and loss: targets only on the assistant's tokens, packing that
changes nothing (the same loss and gradients as unpacked), resumable batches, named errors."""

import numpy as np
import pytest

from tinyllm.data import RowBatches
from tinyllm.data.sft import IGNORE, document_mask, pack, sft_tokens
from tinyllm.models import Transformer, get_preset
from tinyllm.tokenizer import Tokenizer
from tinyllm.train.sft import sft_loss


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("add: 1 + 2 sort: 3 1 2 the quick brown fox " * 20, vocab_size=300)


CHATS = [
    [{"role": "user", "content": "add: 1 + 2"}, {"role": "assistant", "content": "3"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "sort: 3 1 2"},
     {"role": "assistant", "content": "1 2 3"}],
    [{"role": "user", "content": "fox?"}, {"role": "assistant", "content": "the quick fox"},
     {"role": "user", "content": "more"}, {"role": "assistant", "content": "brown"}],
]  # fmt: skip


def test_targets_fall_on_the_assistant_tokens_and_their_end(tokenizer):
    ids, targets = sft_tokens(tokenizer, CHATS[2])
    scored = [t for t in targets if t != IGNORE]
    end = tokenizer.special_tokens["<|end|>"]
    expected = tokenizer.encode("the quick fox") + [end] + tokenizer.encode("brown") + [end]
    assert scored == expected
    assert targets[-1] == IGNORE and len(ids) == len(targets)
    for i, target in enumerate(targets[:-1]):  # every scored target is the next token
        assert target in (IGNORE, ids[i + 1])


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_packed_batches_give_the_loss_and_gradients_of_unpacked_ones(tokenizer, preset):
    model = Transformer(get_preset(preset, vocab_size=tokenizer.vocab_size, n_layer=2,
                                   d_model=32, n_head=2, context_length=64), seed=0)  # fmt: skip
    examples = [sft_tokens(tokenizer, chat, context_length=64) for chat in CHATS]
    rows = pack(examples, context_length=64)
    assert len(rows.ids) == 1  # all three in one row
    loss, metrics = sft_loss(model, tuple(rows))
    loss.backward()
    packed = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.zero_grad()
    T = max(len(ids) for ids, _ in examples)  # unpacked: one padded row each
    ids = np.array([ids + [0] * (T - len(ids)) for ids, _ in examples])
    targets = np.array([t + [IGNORE] * (T - len(t)) for _, t in examples])
    _, unpacked_loss = model(ids, targets)
    unpacked_loss.backward()
    np.testing.assert_allclose(loss.item(), unpacked_loss.item(), rtol=1e-5)
    for name, param in model.named_parameters():
        np.testing.assert_allclose(packed[name], param.grad, atol=1e-6, err_msg=name)
    assert metrics == {"tokens": 64}


def test_rows_take_whole_conversations_and_the_mask_keeps_them_apart():
    examples = [([1] * 4, [IGNORE] * 4), ([2] * 3, [IGNORE] * 3), ([3] * 2, [IGNORE] * 2)]
    rows = pack(examples, context_length=6)
    assert rows.ids.tolist() == [[1, 1, 1, 1, 0, 0], [2, 2, 2, 3, 3, 0]]
    assert rows.documents.tolist() == [[0, 0, 0, 0, -1, -1], [0, 0, 0, 1, 1, -1]]
    mask = document_mask(rows.documents)
    assert mask.shape == (2, 1, 6, 6)
    assert not mask[1, 0, 3, :3].any() and mask[1, 0, 4, 3:5].all()


def test_batches_resume_exactly_and_cover_every_row_each_epoch():
    rows = pack([([i] * 2, [IGNORE] * 2) for i in range(1, 8)], context_length=2)
    batches = RowBatches(rows, 3, seed=0)
    first_epoch = [next(batches)[0][:, 0] for _ in range(2)]
    saved = batches.state_dict()
    later = [next(batches)[0] for _ in range(4)]
    resumed = RowBatches(rows, 3, seed=99).load_state_dict(saved)
    for expected in later:
        np.testing.assert_array_equal(next(resumed)[0], expected)
    seen = np.concatenate(first_epoch + [later[0][:1, 0]])  # 2 x 3 + 1 = the 7 rows
    assert sorted(seen.tolist()) == list(range(1, 8))


def test_bad_examples_are_named(tokenizer):
    with pytest.raises(ValueError, match="SFT example 4 has no assistant turn"):
        sft_tokens(tokenizer, [{"role": "user", "content": "hi"}], index=4)
    with pytest.raises(ValueError, match="SFT example 1 is .* tokens, longer than the context"):
        sft_tokens(tokenizer, CHATS[2], context_length=5, index=1)
    with pytest.raises(ValueError, match="message 1 has role 'bot'"):
        sft_tokens(tokenizer, [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"},
                               {"role": "assistant", "content": "c"}])  # fmt: skip
    with pytest.raises(
        ValueError, match="example 0 is 9 tokens, longer than the context_length of 4"
    ):
        pack([([1] * 9, [IGNORE] * 9)], context_length=4)
