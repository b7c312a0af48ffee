"""Preference tuning: the Bradley-Terry and DPO losses and their gradients against PyTorch
and TRL, response log-probabilities token by token, the reward model's head and checkpoint,
and the preference data shapes with their errors."""

import collections
import json
import types

import numpy as np
import pytest

import tinyllm
from tinyllm import Tensor
from tinyllm.data import RowBatches
from tinyllm.data.preferences import load_conversations, load_preferences, preference_rows
from tinyllm.data.tasks import task_examples
from tinyllm.models import Transformer, get_preset
from tinyllm.models.reward import RewardModel
from tinyllm.tokenizer import Tokenizer
from tinyllm.train import TrainConfig, Trainer, checkpoint
from tinyllm.train.preference import (
    bradley_terry_loss,
    dpo_loss,
    dpo_loss_from_logps,
    measured_logps,
    reference_logps,
    reward_loss,
    sequence_logps,
)

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train("add: 12 + 34 = 46 sort 1 2 3 yes no " * 30, vocab_size=300)


PAIRS = [
    {"prompt": "add: 1 + 2", "chosen": "3", "rejected": "4"},
    {"prompt": [{"role": "user", "content": "sort: 3 1 2"}], "chosen": "1 2 3",
     "rejected": [{"role": "assistant", "content": "3 2 1"}]},
    {"prompt": [{"role": "system", "content": "yes or no"}, {"role": "user", "content": "1 < 2?"}],
     "chosen": [{"role": "user", "content": "1 < 2?"}, {"role": "assistant", "content": "yes"}],
     "rejected": "no no"},
]  # fmt: skip


def lm(tokenizer, seed=0):
    config = get_preset("tiny-llama", vocab_size=tokenizer.vocab_size, n_layer=2, d_model=32,
                        n_head=2, context_length=32)  # fmt: skip
    return Transformer(config, seed=seed)


def bradley_terry_case(seed=0):
    """Scores of 5 pairs, and our loss with its gradients w.r.t. them."""
    rng = np.random.default_rng(seed)
    chosen, rejected = rng.normal(size=5) * 3, rng.normal(size=5) * 3
    ours_c, ours_r = Tensor(chosen, requires_grad=True), Tensor(rejected, requires_grad=True)
    loss = bradley_terry_loss(ours_c, ours_r)
    loss.backward()
    return (chosen, rejected), loss.item(), (ours_c.grad, ours_r.grad)


def test_bradley_terry_equals_torch_with_its_gradients():
    (chosen, rejected), loss, grads = bradley_terry_case()
    theirs_c = torch.tensor(chosen, requires_grad=True)
    theirs_r = torch.tensor(rejected, requires_grad=True)
    expected = -torch.nn.functional.logsigmoid(theirs_c - theirs_r).mean()
    expected.backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-12)
    np.testing.assert_allclose(grads[0], theirs_c.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(grads[1], theirs_r.grad.numpy(), rtol=1e-12)


def dpo_case(beta, seed=1):
    """Log-probabilities of 6 pairs (pi_c, pi_r, ref_c, ref_r), and our loss with its
    gradients w.r.t. the policy's two and the implicit rewards."""
    rng = np.random.default_rng(seed)
    logps = [rng.normal(size=6) * 10 - 20 for _ in range(4)]
    ours = [Tensor(x, requires_grad=True) for x in logps[:2]]
    loss, chosen, rejected = dpo_loss_from_logps(*ours, *logps[2:], beta)
    loss.backward()
    return logps, loss.item(), [t.grad for t in ours], (chosen.numpy(), rejected.numpy())


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_equals_the_formula_in_torch_with_its_gradients(beta):
    logps, loss, grads, (chosen, rejected) = dpo_case(beta)
    theirs = [torch.tensor(x, requires_grad=i < 2) for i, x in enumerate(logps)]
    pi_c, pi_r, ref_c, ref_r = theirs
    expected = -torch.nn.functional.logsigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))).mean()
    expected.backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-12)
    for ours_grad, theirs_t in zip(grads, theirs[:2]):
        np.testing.assert_allclose(ours_grad, theirs_t.grad.numpy(), rtol=1e-10)
    np.testing.assert_allclose(chosen, beta * (logps[0] - logps[2]))
    np.testing.assert_allclose(rejected, beta * (logps[1] - logps[3]))


# --- TRL's own loss code, called on the same numbers ------------------------------------------
class OneProcess:
    """What TRL's loss methods ask of ``accelerate.Accelerator``, for a single process."""

    device = torch.device("cpu")

    @staticmethod
    def gather(tensor):
        return tensor

    gather_for_metrics = gather


def trl_self(**attributes):
    """A stand-in ``self`` for calling a TRL trainer's loss method directly: the attributes
    it reads, without building a trainer (which wants a model, a dataset and arguments)."""
    return types.SimpleNamespace(
        model=torch.nn.Module(),  # in training mode: the "train" metrics
        accelerator=OneProcess(),
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
        **attributes,
    )


def test_bradley_terry_equals_trl_reward_trainer_with_its_gradients():
    reward_trainer = pytest.importorskip("trl.trainer.reward_trainer")
    (chosen, rejected), loss, grads = bradley_terry_case()
    scores = torch.tensor(np.concatenate([chosen, rejected])[:, None], requires_grad=True)
    outputs = types.SimpleNamespace(logits=scores)  # (2N, 1): chosen rows, then rejected
    trainer = trl_self(args=types.SimpleNamespace(center_rewards_coefficient=None))
    inputs = {"attention_mask": torch.ones(len(scores), 1, dtype=torch.long)}
    theirs = reward_trainer.RewardTrainer.compute_loss(trainer, lambda **_: outputs, inputs)
    theirs.backward()
    np.testing.assert_allclose(loss, theirs.item(), rtol=1e-12)
    np.testing.assert_allclose(np.concatenate(grads), scores.grad[:, 0].numpy(), rtol=1e-12)
    accuracy = trainer._metrics["train"]["accuracy"][0]
    assert accuracy == pytest.approx((chosen > rejected).mean())


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_dpo_loss_equals_trl_dpo_trainer_with_its_gradients(beta):
    """TRL's ``DPOTrainer._compute_loss`` sums the policy's per-token log-probabilities over
    each completion; rows of one completion token carry our sequence log-probabilities, the
    chosen rows first, and the reference's come precomputed, as tinyllm's do."""
    dpo_trainer = pytest.importorskip("trl.trainer.dpo_trainer")
    logps, loss, grads, (chosen, rejected) = dpo_case(beta)
    policy = torch.tensor(np.concatenate(logps[:2])[:, None], requires_grad=True)  # (2N, 1)
    zeros = torch.zeros_like(policy)
    outputs = types.SimpleNamespace(
        log_probs=policy, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
    )
    rows = len(policy)
    inputs = {
        "input_ids": torch.zeros(rows, 2, dtype=torch.long),  # a prompt token, a completion token
        "attention_mask": torch.ones(rows, 2, dtype=torch.long),
        "completion_mask": torch.tensor([[0, 1]] * rows),
        "ref_chosen_logps": torch.tensor(logps[2]),
        "ref_rejected_logps": torch.tensor(logps[3]),
    }
    trainer = trl_self(
        beta=beta, loss_types=["sigmoid"], loss_weights=[1.0], f_divergence_type="reverse_kl",
        precompute_ref_logps=True, ld_alpha=None, use_weighting=False, aux_loss_enabled=False,
    )  # fmt: skip
    theirs = dpo_trainer.DPOTrainer._compute_loss(
        trainer, lambda **_: outputs, inputs, return_outputs=False
    )
    theirs.backward()
    np.testing.assert_allclose(loss, theirs.item(), rtol=1e-12)
    np.testing.assert_allclose(np.concatenate(grads), policy.grad[:, 0].numpy(), rtol=1e-10)
    metrics = trainer._metrics["train"]
    assert metrics["rewards/chosen"][0] == pytest.approx(chosen.mean(), rel=1e-12)
    assert metrics["rewards/rejected"][0] == pytest.approx(rejected.mean(), rel=1e-12)
    assert metrics["rewards/accuracies"][0] == pytest.approx((chosen > rejected).mean())


def test_the_sft_term_adds_the_chosen_tokens_mean_cross_entropy(tokenizer):
    policy, reference = lm(tokenizer), lm(tokenizer)
    rows = preference_rows(tokenizer, PAIRS, context_length=32)
    batch = (*rows, *reference_logps(reference, rows, batch_size=2))
    plain, _ = dpo_loss(beta=0.1)(policy, batch)
    with_sft, metrics = dpo_loss(beta=0.1, sft_weight=0.5)(policy, batch)
    with tinyllm.no_grad():
        logits = policy(rows.chosen_ids)[0].numpy().astype(np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    scored = rows.chosen_targets != -100
    picked = np.take_along_axis(log_probs, np.maximum(rows.chosen_targets, 0)[..., None], -1)
    nll = -picked[..., 0][scored].mean()  # TRL's "sft" loss type: the mean over tokens
    np.testing.assert_allclose(metrics["chosen_nll"], nll, rtol=1e-5)
    np.testing.assert_allclose(with_sft.item() - plain.item(), 0.5 * nll, rtol=1e-4)
    with pytest.raises(ValueError, match="sft_weight=-1: expected a number >= 0"):
        dpo_loss(beta=0.1, sft_weight=-1)


def test_response_logps_add_up_the_response_tokens_only(tokenizer):
    model = lm(tokenizer)
    rows = preference_rows(tokenizer, PAIRS, context_length=32)
    with tinyllm.no_grad():
        ours = sequence_logps(model, rows.chosen_ids, rows.chosen_targets).numpy()
        logits = model(rows.chosen_ids)[0].numpy()
    for row in range(len(PAIRS)):
        log_probs = logits[row] - np.log(np.exp(logits[row]).sum(-1, keepdims=True))
        scored = [(p, t) for p, t in enumerate(rows.chosen_targets[row]) if t != -100]
        assert len(scored) == len(tokenizer.encode(["3", "1 2 3", "yes"][row])) + 1  # + <|end|>
        np.testing.assert_allclose(ours[row], sum(log_probs[p, t] for p, t in scored), rtol=1e-5)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_measuring_runs_compiled_under_jax_once_per_shape(tokenizer, backend):
    """What evaluation, DPO's reference and distillation's teacher use (``measuring``): a
    function of the model run in eval mode, giving an array. Under JAX one compiled program
    per shape, kept for later calls (op by op, DPO's held-out measures took twice NumPy's
    time); NumPy runs it each time."""
    if backend == "jax":
        pytest.importorskip("jax")
    from tinyllm.nn.module import inference, measuring

    runs = []

    def counted(model, ids, targets):
        runs.append(1)
        return sequence_logps(model, ids, targets)

    measured = measuring(counted)
    rows = preference_rows(tokenizer, PAIRS, context_length=32)
    chosen, rejected = (
        (rows.chosen_ids, rows.chosen_targets),
        (rows.rejected_ids, rows.rejected_targets),
    )
    with tinyllm.use_backend(backend):
        model = lm(tokenizer).train()  # measured in eval mode all the same
        with inference(model):
            expected = sequence_logps(model, *chosen).numpy()
        first, again = measured(model, *chosen), measured(model, *rejected)
        shorter = measured(model, rows.chosen_ids[:, :-2], rows.chosen_targets[:, :-2])
        library = tinyllm.to_numpy(measured_logps(model, *chosen))
    assert model.training and tinyllm.to_numpy(first).shape == (len(PAIRS),)
    np.testing.assert_allclose(tinyllm.to_numpy(first), expected, rtol=1e-5)
    np.testing.assert_allclose(library, expected, rtol=1e-5)
    assert not np.allclose(tinyllm.to_numpy(again), expected) and shorter.shape == (len(PAIRS),)
    assert len(runs) == (2 if backend == "jax" else 3)  # traced for two shapes, or run thrice


def test_dpo_starts_at_log2_with_the_reference_as_policy_and_learns(tokenizer):
    policy, reference = lm(tokenizer), lm(tokenizer)
    rows = preference_rows(tokenizer, PAIRS, context_length=32)
    ref_c, ref_r = reference_logps(reference, rows, batch_size=2)
    batch = (*rows, ref_c, ref_r)
    loss, metrics = dpo_loss(beta=0.5)(policy, batch)
    np.testing.assert_allclose(loss.item(), np.log(2), rtol=1e-5)  # no preference yet
    assert metrics["reward_margin"] == pytest.approx(0, abs=1e-5)
    config = TrainConfig(steps=30, batch_size=3, lr=3e-3, warmup_steps=0, eval_interval=0,
                         log_interval=30, progress=False)  # fmt: skip
    result = Trainer(policy, config, RowBatches(batch, 3, seed=0), loss_fn=dpo_loss(0.5)).fit()
    assert result.metrics["reward_accuracy"] == 1.0 and result.metrics["reward_margin"] > 1.0
    assert result.metrics["reward_chosen"] > result.metrics["reward_rejected"]


def test_the_reward_model_reads_the_last_token_and_learns_the_pairs(tokenizer, tmp_path):
    model = RewardModel.from_language_model(lm(tokenizer))
    rows = preference_rows(tokenizer, PAIRS, context_length=32)
    scores = model(rows.chosen_ids, rows.chosen_lengths).numpy()
    for row in range(len(PAIRS)):  # the same as scoring the row alone, unpadded
        alone = rows.chosen_ids[row : row + 1, : rows.chosen_lengths[row]]
        np.testing.assert_allclose(
            scores[row], model(alone, [alone.shape[1]]).numpy()[0], rtol=1e-5
        )
    config = TrainConfig(steps=40, batch_size=3, lr=3e-3, warmup_steps=0, eval_interval=0,
                         log_interval=40, progress=False)  # fmt: skip
    result = Trainer(model, config, RowBatches(tuple(rows), 3, seed=0), loss_fn=reward_loss,
                     out_dir=tmp_path / "rm").fit()  # fmt: skip
    assert result.metrics["ranked_right"] == 1.0
    loaded = checkpoint.load_model(result.checkpoint)
    np.testing.assert_allclose(
        loaded(rows.rejected_ids, rows.rejected_lengths).numpy(),
        model(rows.rejected_ids, rows.rejected_lengths).numpy(), rtol=1e-6,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"lengths \[0, 2\] must be \(2,\) values in 1..3"):
        model([[1, 2, 3], [4, 5, 6]], lengths=[0, 2])


def test_held_out_reward_scores_on_jax_are_numpys_and_compiled_once_per_shape(
    tokenizer, monkeypatch
):
    """The reward recipe's held-out ranking scores through ``measuring``: under JAX the
    reward model is traced once per batch shape (op by op, the measures took about as long
    as the 100 training steps), and the scores are NumPy's."""
    pytest.importorskip("jax")
    from tinyllm.recipes.reward import scores

    rows = preference_rows(tokenizer, PAIRS * 3, context_length=32)  # 9 pairs: batches 4, 4, 1
    model = RewardModel.from_language_model(lm(tokenizer))
    expected = scores(model, rows, batch_size=4)
    calls = []
    forward = RewardModel.forward
    monkeypatch.setattr(RewardModel, "forward", lambda m, *a: calls.append(1) or forward(m, *a))
    with tinyllm.use_backend("jax"):
        on_jax = RewardModel.from_language_model(lm(tokenizer))
        got = scores(on_jax, rows, batch_size=4)
    assert len(calls) == 2  # the shapes (4, 32) and (1, 32), for chosen and rejected alike
    for ours, theirs in zip(got, expected):
        assert ours.shape == (9,)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", ["dpo-with-sft-term", "reward"])
def test_the_compiled_jax_step_trains_preferences_as_numpy_does(tokenizer, tmp_path, task):
    """Under ``jax.jit`` a batch's targets and lengths are traced: the SFT term counts the
    chosen tokens, and the reward model picks each row's last token, in array operations.
    (Both once read the values with NumPy and failed to compile: ``tinyllm speedrun
    --backend jax`` stopped at DPO, ``tinyllm reward --backend jax`` at its first step.) The
    reference's log-probabilities take NumPy targets into a JAX model. The losses follow
    NumPy's, step by step."""
    pytest.importorskip("jax")
    from tinyllm.train import read_metrics

    rows = preference_rows(tokenizer, PAIRS, context_length=32)
    losses = {}
    for backend in ("numpy", "jax"):
        with tinyllm.use_backend(backend):
            if task == "reward":
                model, loss_fn = RewardModel.from_language_model(lm(tokenizer)), reward_loss
                data = tuple(rows)
            else:
                model, loss_fn = lm(tokenizer), dpo_loss(0.5, sft_weight=0.5)
                data = (*rows, *reference_logps(lm(tokenizer, seed=1), rows, batch_size=2))
            config = TrainConfig(steps=3, batch_size=3, lr=3e-3, warmup_steps=0,
                                 eval_interval=0, log_interval=1, progress=False)  # fmt: skip
            out = tmp_path / backend
            Trainer(model, config, RowBatches(data, 3, seed=0), loss_fn=loss_fn, out_dir=out).fit()
        rows_logged = read_metrics(out / "metrics.jsonl")
        losses[backend] = [row["loss"] for row in rows_logged]
        if task != "reward":
            assert all(np.isfinite(row["chosen_nll"]) for row in rows_logged)
    assert len(losses["jax"]) == 3
    np.testing.assert_allclose(losses["jax"], losses["numpy"], rtol=1e-4)


def test_preference_files_in_trl_and_chat_shapes_load(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(p) for p in PAIRS) + "\n\n")
    loaded = load_preferences(path)
    assert loaded[0] == ([{"role": "user", "content": "add: 1 + 2"}], "3", "4")
    assert loaded[1][2] == "3 2 1" and loaded[2][1] == "yes"
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": "yo"}]}))  # fmt: skip
    assert load_conversations(chats)[0][1]["content"] == "yo"


@pytest.mark.parametrize(
    "record, message",
    [
        ({"prompt": "a", "chosen": "b"}, "preference record 0 has no 'rejected'"),
        ({"prompt": "a", "chosen": 3, "rejected": "c"}, "record 0: 'chosen' is '3': expected a string"),
        ({"prompt": [{"role": "bot", "content": "a"}], "chosen": "b", "rejected": "c"},
         "record 0: prompt: message 0 has role 'bot'"),
    ],
)  # fmt: skip
def test_bad_preference_records_are_named(tmp_path, record, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(record) + "\n")
    with pytest.raises(ValueError, match=message):
        load_preferences(path)


def test_bad_files_and_settings_are_named(tmp_path, tokenizer):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"messages": []}\n{not json\n')
    with pytest.raises(ValueError, match="broken.jsonl, line 2: not JSON"):
        load_conversations(path)
    with pytest.raises(ValueError, match="is not a file: expected a .jsonl file or hf:<dataset>"):
        load_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="beta=0: expected a number > 0"):
        dpo_loss(0)
    with pytest.raises(ValueError, match="SFT example 0 is .* longer than the context_length of 4"):
        preference_rows(tokenizer, PAIRS, context_length=4)


def test_sampled_pairs_reject_the_models_own_first_wrong_answer(monkeypatch):
    from tinyllm.recipes import dpo

    examples = task_examples("sort", 3, split="train", seed=0)
    draws = {  # seed -> the answers "sampled" for the three prompts
        0: [examples[0].answer, "9 9", examples[2].answer],
        1: ["1 0", "8 8", examples[2].answer],
    }
    monkeypatch.setattr(dpo, "answers", lambda model, tok, prompts, temperature, seed: draws[seed])
    monkeypatch.setattr(dpo, "fits_context", lambda model, tok, prompt, answer: answer != "9 9")
    pairs = dpo.sampled_pairs(None, None, examples, samples=2, seed=0)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [
        (examples[0].answer, "1 0"),  # right at first, wrong in the second sample
        (examples[1].answer, "8 8"),  # the first wrong sample that fits the context
    ]  # the third prompt was always answered right: no pair
    assert pairs[0]["prompt"] == examples[0].messages[:1]
