"""Evaluation on checkable tasks: exact match after a model has learned three answers by heart
(and not before), a sampled property's rate, response perplexity against the loss worked
out token by token, and the KL estimate of preference tuning on the sampled tokens."""

import math

import numpy as np
import pytest

import tinyllm
from tinyllm.data import RowBatches
from tinyllm.data.sft import pack, sft_tokens
from tinyllm.data.tasks import task_examples
from tinyllm.infer.evaluate import (
    answer_text,
    answer_tokens,
    answers,
    exact_match,
    property_rate,
    response_perplexity,
    sampled_measures,
)
from tinyllm.models import Transformer, get_preset
from tinyllm.tokenizer import Tokenizer
from tinyllm.tokenizer.chat import format_chat
from tinyllm.train import TrainConfig, Trainer
from tinyllm.train.sft import sft_loss


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("add: 12 + 34 = 46 sort 1 2 3 " * 30, vocab_size=300)


@pytest.fixture(scope="module")
def examples():
    return task_examples("add", 3, split="test", seed=0)


def model_of(tokenizer, seed=0):
    config = get_preset("tiny-llama", vocab_size=tokenizer.vocab_size, n_layer=2, d_model=48,
                        n_head=2, context_length=32)  # fmt: skip
    return Transformer(config, seed=seed)


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


def log_softmax_rows(model, ids):
    with tinyllm.no_grad():
        logits = model(np.array([ids]))[0].numpy()[0]  # (T, V)
    return logits - np.log(np.exp(logits).sum(-1, keepdims=True))


def test_the_kl_estimate_scores_the_sampled_tokens_themselves(tokenizer, examples):
    policy, reference = model_of(tokenizer, seed=0), model_of(tokenizer, seed=1)
    right, kl = sampled_measures(policy, reference, tokenizer, examples, samples=2, seed=3)
    prompts = [e.messages[:1] for e in examples]
    gaps, hits, encoded_back = [], [], []
    for k in range(2):  # the same draws: seeds 3 and 4
        for (prompt, new), e in zip(
            answer_tokens(policy, tokenizer, prompts, temperature=1.0, seed=3 + k), examples
        ):
            assert prompt == format_chat(tokenizer, e.messages[:1], add_generation_prompt=True).ids
            ids, text = prompt + new, answer_text(tokenizer, new)
            pi, ref = log_softmax_rows(policy, ids), log_softmax_rows(reference, ids)
            positions = range(len(prompt) - 1, len(ids) - 1)  # each predicts the next token
            gaps.append(sum(pi[p, ids[p + 1]] - ref[p, ids[p + 1]] for p in positions))
            hits.append(text.strip() == e.answer)
            answer = [*e.messages[:1], {"role": "assistant", "content": text}]
            encoded_back.append(format_chat(tokenizer, answer).ids[: len(ids)] == ids)
    assert kl == pytest.approx(np.mean(gaps), rel=1e-4, abs=1e-6)
    assert right == np.mean(hits)
    # An untrained model writes what its text does not encode back to (stray bytes, special
    # tokens): scoring the text again would score other tokens than those sampled.
    assert not all(encoded_back)
    assert sampled_measures(policy, policy, tokenizer, examples, samples=1)[1] == 0.0
    assert answers(policy, tokenizer, prompts, temperature=1.0, seed=3) == [
        answer_text(tokenizer, new)
        for _, new in answer_tokens(policy, tokenizer, prompts, temperature=1.0, seed=3)
    ]
