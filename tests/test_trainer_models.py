"""The Trainer and its checkpoints with models that are not plain Transformers: a Linear
wrapped by a LoRA-style adapter, an extra scalar head, Buffers and dict children. Each is
killed mid-run, resumed into a freshly built model, and ends bit-identical to a run
that was not."""

import time

import numpy as np
import pytest

import tinyllm
from tinyllm.data import RandomBatches
from tinyllm.models import Transformer, get_preset
from tinyllm.nn import Buffer, Dropout, Linear, Module, Parameter, dropout_key
from tinyllm.optim import AdamW
from tinyllm.train import TrainConfig, Trainer, checkpoint, language_model_loss, read_metrics

TOKENS = np.random.default_rng(0).integers(0, 65, 4000)
SMALL = dict(n_layer=2, d_model=32, n_head=2, context_length=16, dropout=0.1)


def transformer(seed):
    return Transformer(get_preset("tiny", **SMALL), seed=seed)


class LowRankAdapted(Module):
    """``base(x) + (x @ A) @ B``: a frozen Linear and a trainable low-rank update (B starts
    at zero, so the model is unchanged at step 0)."""

    def __init__(self, base, rank, seed):
        self.base = base.freeze()
        rng = np.random.default_rng(seed)
        n_in, n_out = base.weight.shape
        self.lora_a = Parameter((rng.standard_normal((n_in, rank)) * 0.1).astype(np.float32))
        self.lora_b = Parameter(np.zeros((rank, n_out), np.float32))

    def forward(self, x):
        return self.base(x) + (x @ self.lora_a) @ self.lora_b


def adapted(seed):
    model = transformer(seed)
    for i, block in enumerate(model.blocks):
        block.attention.q_proj = LowRankAdapted(block.attention.q_proj, 2, seed + i)
    return model


class ScalarHead(Module):
    """A transformer with a scalar head on the last position's logits (a reward model's
    shape), its heads held in a dict."""

    def __init__(self, seed):
        self.body = transformer(seed)
        self.heads = {"score": Linear(65, 1, seed=seed + 1)}

    def forward(self, ids):
        logits, _ = self.body(ids)
        return self.heads["score"](logits[:, -1, :])  # (B, 1)


def score_loss(model, batch):
    """Squared error against the share of even tokens; reports it and a sign accuracy."""
    ids, _ = batch
    target = (ids % 2 == 0).mean(axis=1, keepdims=True).astype(np.float32) - 0.5
    error = model(ids) - target
    loss = (error * error).mean()
    return loss, {"mse": loss, "tokens": int(ids.size)}


class WithBuffers(Module):
    """A transformer whose logits get a fixed bias from a Buffer (saved, never trained)."""

    def __init__(self, seed):
        self.body = transformer(seed)
        bias = np.random.default_rng(seed).standard_normal(65).astype(np.float32)
        self.logit_bias = Buffer(bias)
        self.counts = Buffer(np.arange(65, dtype=np.int64))

    def forward(self, ids, targets):
        logits, _ = self.body(ids)
        logits = logits + self.logit_bias
        B, T, V = logits.shape
        return tinyllm.functional.cross_entropy(logits.reshape(B * T, V), targets.reshape(-1))


def buffer_loss(model, batch):
    ids, targets = batch
    return model(ids, targets), {"tokens": int(ids.size)}


KINDS = {
    "lora": (adapted, language_model_loss),
    "scalar-head": (ScalarHead, score_loss),
    "buffers": (WithBuffers, buffer_loss),
}


def config(**changes):
    base = dict(
        steps=6, batch_size=4, grad_accum=2, warmup_steps=2, lr=1e-2, eval_interval=3,
        log_interval=1, checkpoint_interval=2, progress=False,
    )  # fmt: skip
    return TrainConfig(**{**base, **changes})


def make_trainer(out, build, loss_fn, seed=0, **changes):
    c = config(**changes)
    batches = RandomBatches(TOKENS, c.micro_batch_size, 16, seed=c.seed)
    val = [next(RandomBatches(TOKENS, 4, 16, seed=99)) for _ in range(2)]
    return Trainer(build(seed), c, batches, val_batches=val, out_dir=out, loss_fn=loss_fn)


class Killed(Exception):
    """Stands for a kill: the process dies mid-step, with nothing saved since the last
    checkpoint."""


def killed_at(call, loss_fn):
    """``loss_fn`` whose ``call``-th call in training mode dies (evaluation runs it too)."""
    calls = {"n": 0}

    def dying(model, batch):
        calls["n"] += model.training
        if calls["n"] == call:
            raise Killed
        return loss_fn(model, batch)

    return dying


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_any_model_resumes_bit_identically(tmp_path, kind):
    build, loss_fn = KINDS[kind]
    straight_trainer = make_trainer(tmp_path / "straight", build, loss_fn)
    straight = straight_trainer.fit()
    killed = make_trainer(tmp_path / "resumed", build, killed_at(5 * 2, loss_fn))
    with pytest.raises(Killed):  # in step 5: step 4's checkpoint is the newest
        killed.fit()
    assert checkpoint.latest_checkpoint(tmp_path / "resumed").name == "step-000004"
    # a new process builds the model from another seed: the checkpoint decides everything
    resumed_trainer = make_trainer(tmp_path / "resumed", build, loss_fn, seed=7)
    resumed = resumed_trainer.fit(resume=True)
    assert resumed.step == 6
    rows = {
        name: read_metrics(tmp_path / name / "metrics.jsonl") for name in ("straight", "resumed")
    }
    assert [r["loss"] for r in rows["resumed"]] == [r["loss"] for r in rows["straight"]]
    assert resumed.val_loss == straight.val_loss
    a, b = straight_trainer.model.state_dict(), resumed_trainer.model.state_dict()
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    # the trained parts moved; the frozen or buffered parts did not
    fresh = build(0).state_dict()
    trained = [n for n in a if not np.array_equal(a[n], fresh[n])]
    assert trained
    if kind == "lora":
        assert all(".base." not in n for n in trained) and any("lora_b" in n for n in trained)
    if kind == "buffers":
        assert "logit_bias" not in trained and "counts" not in trained
        assert a["counts"].dtype == np.int64
    # only a plain Transformer has a Hugging Face export beside the checkpoints
    assert not (tmp_path / "straight" / "config.json").exists()


def test_a_loss_fn_reports_its_metrics_and_tokens(tmp_path):
    make_trainer(tmp_path, ScalarHead, score_loss).fit()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert all("mse" in row for row in rows)
    assert [row["step"] for row in rows if "val_mse" in row] == [3, 6]
    assert rows[-1]["tokens"] == 6 * 4 * 16  # summed over micro-batches, not averaged
    assert abs(rows[0]["mse"] - rows[0]["loss"]) < 1e-6  # averaged like the loss


def test_a_checkpoint_refuses_a_model_it_does_not_fit(tmp_path):
    make_trainer(tmp_path, adapted, language_model_loss, steps=2, eval_interval=0).fit()
    path = checkpoint.latest_checkpoint(tmp_path)
    plain = transformer(0)
    with pytest.raises(ValueError, match="LowRankAdapted|missing|unexpected"):
        checkpoint.load_checkpoint(path, model=plain, optimizer=AdamW(plain))
    with pytest.raises(ValueError, match="a .*transformer.Transformer, not of a .*ScalarHead"):
        model = ScalarHead(0)
        checkpoint.load_checkpoint(path, model=model, optimizer=AdamW(model))
    with pytest.raises(ValueError, match="cannot rebuild"):
        checkpoint.load_model(path)  # an adapted transformer is still described as one...


def test_load_model_rebuilds_a_transformer(tmp_path):
    trainer = make_trainer(tmp_path, transformer, language_model_loss, steps=2, eval_interval=0)
    trainer.fit()
    rebuilt = checkpoint.load_model(checkpoint.latest_checkpoint(tmp_path))
    assert rebuilt.config == trainer.model.config
    ours = trainer.model.state_dict()
    assert all(np.array_equal(v, ours[k]) for k, v in rebuilt.state_dict().items())
    exported = Transformer.from_pretrained(tmp_path).state_dict()  # the Hugging Face export
    assert all(np.array_equal(v, ours[k]) for k, v in exported.items())


def test_a_finished_run_resumed_reports_its_saved_losses(tmp_path):
    done = make_trainer(tmp_path, transformer, language_model_loss, steps=2, eval_interval=0).fit()
    again = make_trainer(tmp_path, transformer, language_model_loss, steps=2, eval_interval=0)
    result = again.fit(resume=True)
    assert result.steps_this_session == 0 and result.tokens_per_second is None
    assert result.train_loss == done.train_loss and result.val_loss == done.val_loss


def test_tokens_per_second_counts_training_steps_only(tmp_path):
    def slow_samples(model):
        time.sleep(0.5)
        return ["..."]

    trainer = make_trainer(None, transformer, language_model_loss, eval_interval=1)
    trainer.sample_fn = slow_samples
    started = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - started
    tokens = 6 * 4 * 16
    assert result.tokens_per_second > tokens / (wall - 6 * 0.5)  # six evaluations left out


def test_layers_built_without_a_seed_differ_and_dropout_masks_come_from_keys():
    assert not np.array_equal(Linear(4, 4).weight.numpy(), Linear(4, 4).weight.numpy())
    model = transformer(0)
    x = np.ones((2, 16, 32), np.float32)
    first, second = model.blocks[0].dropout, model.blocks[1].dropout
    with dropout_key(model, (1, 2, 0)):
        a, b = first(x).numpy(), second(x).numpy()
    with dropout_key(model, (1, 2, 0)):
        again = first(x).numpy()
    with dropout_key(model, (1, 3, 0)):
        next_step = first(x).numpy()
    assert np.array_equal(a, again)  # the key decides the mask
    assert not np.array_equal(a, b)  # two layers never share one
    assert not np.array_equal(a, next_step)
    assert first.key is None  # the key lives for the block only
    unseeded = Dropout(0.5), Dropout(0.5)
    assert unseeded[0].seed != unseeded[1].seed


def test_dict_children_buffers_and_moving_a_module():
    model = WithBuffers(0)
    names = [name for name, _ in model.named_parameters()]
    assert "logit_bias" not in names and "counts" not in names
    assert [name for name, _ in model.named_buffers()] == ["logit_bias", "counts"]
    assert {"logit_bias", "counts"} <= set(model.state_dict())
    head = ScalarHead(0)
    assert "heads.score.weight" in dict(head.named_parameters())
    assert "heads.score.weight" in {n for n, _ in AdamW(head).named_parameters()}
    with pytest.raises(TypeError, match="string keys"):
        bad = Module()
        bad.heads = {1: Linear(2, 2, seed=0)}
        list(bad.named_parameters())
    pytest.importorskip("jax")
    model.to("jax")
    assert {t.backend.name for _, t in [*model.named_parameters(), *model.named_buffers()]} == {
        "jax"
    }
    model.to("numpy")  # (JAX keeps 32-bit integers unless x64 is switched on)
    assert model.counts.backend.name == "numpy" and np.issubdtype(model.counts.dtype, np.integer)
    np.testing.assert_array_equal(model.counts.numpy(), np.arange(65))
