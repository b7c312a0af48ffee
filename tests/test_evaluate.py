"""Evaluation on checkable tasks: exact match after a model has learned three answers by heart
(and not before), a sampled property's rate, and response perplexity against the loss worked
out token by token."""

import math

import numpy as np
import pytest

import tinyllm
from tinyllm.data import RowBatches
from tinyllm.data.sft import pack, sft_tokens
from tinyllm.data.tasks import task_examples
from tinyllm.infer.evaluate import answers, exact_match, property_rate, response_perplexity
from tinyllm.models import Transformer, get_preset
from tinyllm.tokenizer import Tokenizer
from tinyllm.train import TrainConfig, Trainer
from tinyllm.train.sft import sft_loss


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("add: 12 + 34 = 46 sort 1 2 3 " * 30, vocab_size=300)


@pytest.fixture(scope="module")
def examples():
    return task_examples("add", 3, split="test", seed=0)


def model_of(tokenizer):
    config = get_preset("tiny-llama", vocab_size=tokenizer.vocab_size, n_layer=2, d_model=48,
                        n_head=2, context_length=32)  # fmt: skip
    return Transformer(config, seed=0)


@pytest.fixture(scope="module")
def memorized(tokenizer, examples):
    """A model trained on the three examples until it says their answers."""
    model = model_of(tokenizer)
    rows = pack([sft_tokens(tokenizer, e.messages) for e in examples], 32)
    config = TrainConfig(steps=150, batch_size=3, lr=1e-2, warmup_steps=10, eval_interval=0,
                         log_interval=150, progress=False)  # fmt: skip
    Trainer(model, config, RowBatches(rows, 3, seed=0), loss_fn=sft_loss).fit()
    return model


def test_exact_match_counts_right_answers(tokenizer, examples, memorized):
    accuracy, got = exact_match(memorized, tokenizer, examples, max_new_tokens=8, batch_size=2)
    assert accuracy == 1.0 and got == [e.answer for e in examples]
    untrained, _ = exact_match(model_of(tokenizer), tokenizer, examples, max_new_tokens=8)
    assert untrained == 0.0


def test_property_rate_counts_sampled_answers(tokenizer, examples, memorized):
    right = lambda example, answer: answer == example.answer  # noqa: E731
    assert property_rate(memorized, tokenizer, examples, right, samples=2, temperature=0.3) == 1.0
    assert property_rate(memorized, tokenizer, examples, lambda e, a: False) == 0.0
    hot = property_rate(memorized, tokenizer, examples, right, samples=4, temperature=50.0)
    assert hot < 0.5  # far from the learned answers when sampling is nearly uniform


def test_response_perplexity_is_the_assistant_tokens_loss(tokenizer, examples):
    model = model_of(tokenizer)
    chats = [e.messages for e in examples]
    total = count = 0.0
    with tinyllm.no_grad():
        for chat in chats:
            ids, targets = sft_tokens(tokenizer, chat)
            logits = model(np.array([ids]))[0].numpy()[0]  # (T, V)
            log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            for position, target in enumerate(targets):
                if target != -100:
                    total -= log_probs[position, target]
                    count += 1
    expected = math.exp(total / count)
    assert response_perplexity(model, tokenizer, chats, batch_size=2) == pytest.approx(
        expected, rel=1e-4
    )


def test_a_prompt_without_room_to_answer_is_named(tokenizer):
    long = [[{"role": "user", "content": "1 2 3 " * 20}]]
    with pytest.raises(ValueError, match="leaves no room in the context of 32"):
        answers(model_of(tokenizer), tokenizer, long)
