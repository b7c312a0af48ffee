"""The training loop: exact resume, signals, NaN stops, checkpoints that survive a kill, the
compiled JAX step, metrics and plots, and clear errors for bad runs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tinyllm
from tinyllm.data import RandomBatches
from tinyllm.models import Transformer, get_preset
from tinyllm.optim import AdamW
from tinyllm.train import (
    TrainConfig,
    Trainer,
    TrainingDiverged,
    checkpoint,
    language_model_loss,
    latest_checkpoint,
    list_checkpoints,
    plot_losses,
    read_metrics,
)
from tinyllm.train import trainer as trainer_module

TOKENS = np.random.default_rng(0).integers(0, 65, 4000)
SMALL = dict(n_layer=2, d_model=32, n_head=2, context_length=16)


def small_model(seed=0, **changes):
    return Transformer(get_preset("tiny", **{**SMALL, **changes}), seed=seed)


def make_trainer(out, config, model=None, loss_fn=language_model_loss, seed=0):
    model = model or small_model(seed=seed, dropout=0.1)
    batches = RandomBatches(TOKENS, config.micro_batch_size, 16, seed=config.seed)
    val = [next(RandomBatches(TOKENS, 4, 16, seed=99)) for _ in range(2)]
    return Trainer(model, config, batches, val_batches=val, out_dir=out, loss_fn=loss_fn)


def config(**changes):
    base = dict(
        steps=6, batch_size=4, grad_accum=2, warmup_steps=2, lr=1e-2, eval_interval=0,
        log_interval=1, checkpoint_interval=0, progress=False,
    )  # fmt: skip
    return TrainConfig(**{**base, **changes})


def losses(out):
    return [row["loss"] for row in read_metrics(out / "metrics.jsonl")]


def stop_at(step, signum=signal.SIGINT):
    """A loss function that sends ``signum`` to this process during micro-batch call ``step``."""
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] == step:
            signal.raise_signal(signum)
        return language_model_loss(model, batch)

    return loss_fn


def test_resume_continues_exactly(tmp_path):
    """N steps, a Ctrl-C, then a resume for M more: the same losses as N + M at once
    (dropout, gradient accumulation, AdamW moments, schedule and data order all restored)."""
    straight = make_trainer(tmp_path / "straight", config()).fit()
    assert straight.step == 6
    interrupted = make_trainer(tmp_path / "resumed", config(), loss_fn=stop_at(3 * 2))
    first = interrupted.fit()
    assert (first.stopped_by, first.step) == ("SIGINT", 3)  # finishes the step, then stops
    assert latest_checkpoint(tmp_path / "resumed").name == "step-000003"
    # A fresh process would build the model from another seed: the checkpoint decides.
    resumed = make_trainer(tmp_path / "resumed", config(), seed=5).fit(resume=True)
    assert resumed.step == 6 and resumed.stopped_by is None
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")  # exactly
    assert resumed.val_loss == straight.val_loss
    a = Transformer.from_pretrained(tmp_path / "straight").state_dict()
    b = Transformer.from_pretrained(tmp_path / "resumed").state_dict()
    assert all(np.array_equal(a[name], b[name]) for name in a)


def test_sigterm_saves_a_checkpoint_before_stopping(tmp_path):
    result = make_trainer(tmp_path, config(), loss_fn=stop_at(4 * 2, signal.SIGTERM)).fit()
    assert (result.stopped_by, result.step) == ("SIGTERM", 4)
    assert result.checkpoint.name == "step-000004"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers are put back


@pytest.mark.parametrize("stage", ["_read_back", "save"])
def test_a_signal_after_a_step_was_checked_still_saves_before_stopping(
    tmp_path, monkeypatch, stage
):
    """A signal that lands after the loop decided what the step does (its reading back, a
    periodic save) is not lost: the next step finishes, is saved, and the run stops there."""
    trainer = make_trainer(tmp_path, config(checkpoint_interval=2))
    during = getattr(trainer, stage)

    def signalled(*args, **kwargs):
        if trainer.step == 2:
            signal.raise_signal(signal.SIGINT)
        return during(*args, **kwargs)

    monkeypatch.setattr(trainer, stage, signalled)
    result = trainer.fit()
    assert (result.stopped_by, result.step) == ("SIGINT", 3)
    assert result.checkpoint.name == "step-000003"
    assert latest_checkpoint(tmp_path).name == "step-000003"
    assert [row["step"] for row in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]


@pytest.mark.parametrize("progress", [False, True])
def test_training_starts_no_daemon_thread(tmp_path, monkeypatch, progress):
    """tqdm starts a monitor thread for any bar, even a disabled one; a daemon thread that
    wakes while Python shuts down can abort the process. The trainer's bar has none."""
    import tqdm
    from tqdm import _monitor

    started = []
    monkeypatch.setattr(tqdm.tqdm, "monitor", None)  # as in a fresh process
    monkeypatch.setattr(_monitor.TMonitor, "start", lambda thread: started.append(thread))
    make_trainer(tmp_path, config(steps=2, progress=progress)).fit()
    assert started == []


def test_a_nan_loss_stops_and_leaves_the_last_checkpoint_intact(tmp_path):
    def poisoned(model, batch):
        loss, metrics = language_model_loss(model, batch)
        return (loss * float("nan") if trainer.step == 3 else loss), metrics

    trainer = make_trainer(tmp_path, config(checkpoint_interval=1, keep_checkpoints=5))
    trainer.loss_fn = poisoned
    good = None

    with pytest.raises(TrainingDiverged, match=r"step 4: the loss is nan.*step-000003"):
        trainer.fit()
    good = tmp_path / "checkpoints" / "step-000003"
    assert [p.name for p in list_checkpoints(tmp_path)][-1] == "step-000003"
    weights = checkpoint.load_model(good).state_dict()
    now = trainer.model.state_dict()
    assert all(np.array_equal(weights[k], now[k]) for k in now)  # the bad step changed nothing
    assert all(np.isfinite(v).all() for v in now.values())


def test_checkpoints_are_kept_as_asked_and_the_run_folder_is_a_model(tmp_path):
    trainer = make_trainer(tmp_path, config(checkpoint_interval=2, keep_checkpoints=2))
    result = trainer.fit()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    files = {p.name for p in (tmp_path / "checkpoints" / "step-000006").iterdir()}
    assert files == {"model.json", "model.safetensors", "optimizer.safetensors",
                     "trainer_state.json"}  # fmt: skip
    state = json.loads((tmp_path / "checkpoints/step-000006/trainer_state.json").read_text())
    assert state["step"] == 6 and state["data"]["batches_drawn"] == 12  # 2 micro-batches a step
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["val_loss"] == pytest.approx(result.val_loss)
    assert {"lr", "grad_norm", "tokens_per_s", "tokens"} <= set(rows[0])
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    exported = Transformer.from_pretrained(tmp_path)  # the run folder is a model folder
    ids = TOKENS[:16].reshape(1, 16)
    with tinyllm.no_grad():
        expected = trainer.model.eval()(ids)[0].numpy()
        np.testing.assert_allclose(exported(ids)[0].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_a_kill_while_old_checkpoints_are_deleted_leaves_only_whole_ones(tmp_path, monkeypatch):
    make_trainer(
        tmp_path, config(steps=3, warmup_steps=0, checkpoint_interval=1, keep_checkpoints=3)
    ).fit()
    real_rmtree = checkpoint.shutil.rmtree

    def killed_midway(path, **kwargs):  # deletes one file, then the process "dies"
        next(Path(path).rglob("model.safetensors")).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.prune_checkpoints(tmp_path, keep=1)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)
    survivors = list_checkpoints(tmp_path)
    assert [p.name for p in survivors] == ["step-000002", "step-000003"]
    for path in survivors:
        checkpoint.load_model(path)
    assert checkpoint.clean_partial(tmp_path)[0].startswith(".step-000001.")
    assert not list((tmp_path / "checkpoints").glob(".*"))


def test_a_failed_resave_of_a_step_keeps_the_earlier_save(tmp_path, monkeypatch):
    model = small_model()
    checkpoint.save_checkpoint(tmp_path, model=model, optimizer=AdamW(model), state={"step": 3})
    real_replace = checkpoint.os.replace

    def fail_into_place(src, dst):  # the new folder's final rename fails (a full disk, say)
        if Path(dst).name == "step-000003" and ".tmp" in Path(src).name:
            raise OSError("no space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", fail_into_place)
    with pytest.raises(OSError, match="no space left"):
        checkpoint.save_checkpoint(tmp_path, model=model, optimizer=AdamW(model), state={"step": 3})
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000003"]
    checkpoint.load_model(latest_checkpoint(tmp_path))
    assert not list((tmp_path / "checkpoints").glob(".*"))


def test_an_existing_run_is_not_overwritten(tmp_path):
    make_trainer(tmp_path, config(steps=2, warmup_steps=0)).fit()
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="already holds a run.*step-000002.*resume"):
        make_trainer(tmp_path, config(steps=2, warmup_steps=0)).fit()
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path):
    make_trainer(tmp_path, config(steps=2, warmup_steps=0)).fit()
    other = make_trainer(tmp_path, config(steps=4), model=small_model(d_model=64))
    with pytest.raises(ValueError, match=r"another architecture: d_model=32\.0 \(this model: 64"):
        other.fit(resume=True)


def test_a_truncated_checkpoint_is_a_clear_error(tmp_path):
    make_trainer(tmp_path, config(steps=2, warmup_steps=0)).fit()
    weights = tmp_path / "checkpoints" / "step-000002" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="model.safetensors: not a valid safetensors file"):
        make_trainer(tmp_path, config(steps=4)).fit(resume=True)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by grad_accum=4"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        TrainConfig(schedule="cosin")
    with pytest.raises(ValueError, match="warmup_steps=50 is more than steps=10"):
        TrainConfig(steps=10, warmup_steps=50)
    with pytest.raises(ValueError, match="lr=-1 must be a number >= 0"):
        TrainConfig(lr=-1)


def test_the_loss_plot_is_redrawn_after_evaluations_at_the_end_and_every_half_minute(
    tmp_path, monkeypatch
):
    """Drawing loss.png takes most of a second: a run that checkpoints every step redraws it
    only after an evaluation, at the end, and when PLOT_INTERVAL_S has passed since the last."""
    drawn = []
    monkeypatch.setattr(
        trainer_module, "plot_losses", lambda rows, *a, **k: drawn.append(rows[-1]["step"])
    )
    make_trainer(tmp_path, config(checkpoint_interval=1, eval_interval=3, steps=7)).fit()
    assert drawn == [3, 6, 7]
    monkeypatch.setattr(trainer_module, "PLOT_INTERVAL_S", 0.0)
    drawn.clear()
    make_trainer(tmp_path / "often", config(checkpoint_interval=1, steps=4)).fit()
    assert drawn == [1, 2, 3, 4]


def test_compiled_jax_step_equals_the_eager_numpy_step(tmp_path):
    pytest.importorskip("jax")
    eager = make_trainer(None, config(), model=small_model()).fit()
    runs = {}
    for name in ("numpy", "jax"):
        with tinyllm.use_backend(name):
            trainer = make_trainer(tmp_path / name, config(), model=small_model())
            assert trainer.compiled == (name == "jax")
            runs[name] = (trainer.fit(), losses(tmp_path / name), trainer.model.state_dict())
    eager_losses = runs["numpy"][1]
    assert runs["numpy"][0].train_loss == eager.train_loss
    np.testing.assert_allclose(runs["jax"][1], eager_losses, rtol=2e-4)
    for key, value in runs["numpy"][2].items():  # (atol: the key bias's true gradient is 0,
        # so AdamW turns float32 noise into ~1e-5 updates that differ between the two)
        np.testing.assert_allclose(runs["jax"][2][key], value, rtol=1e-3, atol=1e-4, err_msg=key)
    with tinyllm.use_backend("jax"):  # the compiled loop's optimizer state checkpoints too
        more = make_trainer(tmp_path / "jax", config(steps=8), model=small_model()).fit(resume=True)
    assert more.step == 8 and np.isfinite(more.train_loss)


# --- whole runs in a child process: kill -9, SIGTERM -----------------------------------------
def pretrain_command(out, *extra):
    return [
        sys.executable, "-m", "tinyllm.cli", "pretrain", "--out", str(out), "--context-length",
        "32", "--steps", "40", "--warmup-steps", "2", "--batch-size", "4", "--eval-interval",
        "0", "--eval-batches", "2", "--samples", "1", "--sample-tokens", "8", "--no-progress",
        "--checkpoint-interval", "1", "--keep-checkpoints", "2", *extra,
    ]  # fmt: skip


def wait_for_checkpoint(out, process, least=3, timeout=600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = list_checkpoints(out)
        if done and int(done[-1].name.split("-")[1]) >= least:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError("no checkpoint appeared")


@pytest.fixture
def child_env(tmp_path):
    return {**os.environ, "TINYLLM_CACHE": str(tmp_path / "cache")}


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path, child_env):
    out = tmp_path / "run"  # (a long first run: on a busy machine it must not end by itself)
    child = subprocess.Popen(pretrain_command(out, "--steps", "100000"), env=child_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    wait_for_checkpoint(out, child)
    child.send_signal(signal.SIGKILL)  # checkpoints every step: likely mid-write
    child.wait()
    survivors = list_checkpoints(out)
    for path in survivors:  # whatever was written completely loads
        checkpoint.load_model(path)
    finished = subprocess.run(pretrain_command(out, "--resume"), env=child_env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "step 40:" in finished.stdout
    assert not list((out / "checkpoints").glob(".*"))  # no half-written folder left behind
    assert [p.name for p in list_checkpoints(out)] == ["step-000039", "step-000040"]
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")][-1] == 40
    Transformer.from_pretrained(out)


def test_sigterm_to_a_run_saves_and_exits_cleanly(tmp_path, child_env):
    out = tmp_path / "run"
    child = subprocess.Popen(pretrain_command(out, "--steps", "100000"), env=child_env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    wait_for_checkpoint(out, child)
    child.send_signal(signal.SIGTERM)
    output, _ = child.communicate(timeout=600)
    assert child.returncode == 0, output
    assert "stopped by SIGTERM" in output
    step = int(output.split("step ")[1].split(":")[0])
    assert latest_checkpoint(out).name == f"step-{step:06d}"


def test_eval_fn_metrics_are_logged_at_each_evaluation(tmp_path):
    calls = []

    def eval_fn(model):
        calls.append(model.training)
        return {"accuracy": len(calls) / 10}

    run = tmp_path / "run"
    trainer = make_trainer(run, config(eval_interval=3, log_interval=4))
    trainer.val_batches, trainer.eval_fn = [], eval_fn  # measures alone, off the log interval
    trainer.fit()
    rows = read_metrics(run / "metrics.jsonl")
    assert [(row["step"], row.get("accuracy")) for row in rows] == [(3, 0.1), (4, None), (6, 0.2)]
    assert trainer.measure_names == ["accuracy"]
    # the plot gains a row of panels for the measures: a taller picture
    plain = plot_losses(rows, tmp_path / "plain.png")
    assert png_height(run / "loss.png") > png_height(plain)


def png_height(path):
    """The height in pixels of a PNG (from its IHDR chunk)."""
    return int.from_bytes(Path(path).read_bytes()[20:24], "big")
