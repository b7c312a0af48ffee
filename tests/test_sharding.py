"""Training over several JAX devices equals training on one: data parallel, ZeRO-1, FSDP,
and two ``tinyllm pretrain`` processes joined by ``jax.distributed`` (``--coordinator``);
the compiled step traces once and donates.

JAX fixes its device count when it starts, so the runs over several devices are child
Pythons started with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``: this file is
also their script (``python tests/test_sharding.py '{...}'`` prints the losses as JSON),
and the two processes are the ``tinyllm`` command itself.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyllm
from tinyllm.data import RandomBatches
from tinyllm.models import Transformer, get_preset
from tinyllm.train import TrainConfig, Trainer, language_model_loss, read_metrics
from tinyllm.train import step as step_module

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[1]
TOKENS = np.tile(np.arange(24), 200)  # a pattern: the loss falls within a few steps
MODEL = dict(n_layer=1, d_model=32, n_head=2, context_length=16)
MODES = ("dp", "zero1", "fsdp")
# Float32 sums added in another order differ in the last bits; five AdamW steps keep that
# far below what a wrong gradient (a batch counted twice, a shard left out) would show.
NOISE = 3e-5  # measured: at most 2.4e-6 on losses near 4


def train_config(**changes):
    base = dict(steps=5, batch_size=8, lr=1e-2, warmup_steps=1, eval_interval=0,
                checkpoint_interval=0, log_interval=1, progress=False)  # fmt: skip
    return TrainConfig(**{**base, **changes})


def run(out, **changes):
    """Train the test model; returns (per-step losses, validation loss, trainer)."""
    with tinyllm.use_backend("jax"):
        model = Transformer(get_preset("tiny", **MODEL), seed=0)
        config = train_config(**changes)
        batches = RandomBatches(TOKENS, config.micro_batch_size, 16, seed=0)
        # (6 rows do not split over 4 devices: that batch is evaluated whole on each)
        val = [next(RandomBatches(TOKENS, rows, 16, seed=9)) for rows in (8, 6)]
        trainer = Trainer(model, config, batches, val_batches=val, out_dir=out)
        result = trainer.fit()
    losses = [row["loss"] for row in read_metrics(Path(out) / "metrics.jsonl")]
    return losses, result.val_loss, trainer


def worker(spec):
    """A child run: train once per mode in ``spec``."""
    out = {}
    for mode in spec["modes"]:  # "single", a layout, or a layout "+recompute"
        shard = None if mode == "single" else mode.removesuffix("+recompute")
        losses, val_loss, trainer = run(
            Path(spec["out"]) / mode,
            shard=shard,
            gradient_checkpointing=mode.endswith("+recompute"),
        )
        out[mode] = {
            "losses": losses,
            "val_loss": val_loss,
            "plan": trainer.plan and trainer.plan.describe(),
            "layout": layout(trainer),
            "collectives": collectives(trainer),
        }
    print(json.dumps(out))


def layout(trainer):
    """Into how many pieces the trained token embedding (65, 32) and its first moment are
    cut: 1 when each device holds all of it, 4 when each holds a quarter."""
    name = "token_embedding.weight"
    arrays = {"param": dict(trainer.model.named_parameters())[name].data}
    arrays["moment"] = trainer.opt_state["exp_avg"][name]
    return {key: a.size // a.addressable_shards[0].data.size for key, a in arrays.items()}


def collectives(trainer):
    """How many of each collective operation XLA put into the compiled training step."""
    program = trainer.step_program.as_text()
    return {op: program.count(f" {op}(") for op in ("all-reduce", "all-gather")}


def child(argv, devices):
    """Start ``python argv...`` in a child that sees ``devices`` CPU devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "OPENBLAS_NUM_THREADS": "1"}
    # (the run's XLA_FLAGS kept: conftest.py's fewer LLVM passes, the same in every child)
    env["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={devices} {env.get('XLA_FLAGS', '')}"
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def output_of(process, timeout=600):
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stderr[-3000:]
    return stdout


def result_of(process):
    return json.loads(output_of(process).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    """One device, then dp, zero1 and fsdp over 4 (and fsdp recomputing each block), in one
    child that sees 4 CPU devices."""
    out = tmp_path_factory.mktemp("four")
    spec = {"modes": ["single", *MODES, "fsdp+recompute"], "out": str(out)}
    return result_of(child([__file__, json.dumps(spec)], devices=4))


def max_difference(a, b):
    assert len(a) == len(b) == train_config().steps
    return float(np.max(np.abs(np.subtract(a, b))))


@pytest.mark.parametrize("mode", MODES)
def test_sharded_runs_equal_the_single_device_run(four_devices, mode):
    single, sharded = four_devices["single"], four_devices[mode]
    assert single["plan"] is None and sharded["plan"] == f"{mode} over 4 devices"
    pieces = {"dp": (1, 1), "zero1": (1, 4), "fsdp": (4, 4)}[mode]  # (parameter, moment)
    assert (sharded["layout"]["param"], sharded["layout"]["moment"]) == pieces
    assert single["collectives"] == {"all-reduce": 0, "all-gather": 0}
    assert sharded["collectives"]["all-reduce"] > 0  # the gradients summed over the devices
    if mode != "dp":  # and cut parameters or updates gathered whole: more all-gathers
        gathers = four_devices["dp"]["collectives"]["all-gather"]
        assert sharded["collectives"]["all-gather"] > gathers
    assert max_difference(sharded["losses"], single["losses"]) < NOISE
    assert abs(sharded["val_loss"] - single["val_loss"]) < NOISE
    assert single["losses"][-1] < single["losses"][0]  # it learned something


def test_fsdp_recomputing_each_block_equals_the_single_device_run(four_devices):
    """Activation checkpointing inside the sharded step: the recomputation waits on a
    gradient that is itself cut over the devices, and the losses are still one device's."""
    single, recomputed = four_devices["single"], four_devices["fsdp+recompute"]
    assert recomputed["plan"] == "fsdp over 4 devices"
    assert max_difference(recomputed["losses"], single["losses"]) < NOISE
    assert abs(recomputed["val_loss"] - single["val_loss"]) < NOISE


# A short run of `tinyllm pretrain`, the same on every host (no samples: their compiled
# programs would double the time the test takes)
PRETRAIN = (
    "pretrain --preset tiny --context-length 16 --steps 4 --batch-size 8 --lr 1e-2 "
    "--warmup-steps 1 --eval-interval 0 --eval-batches 1 --log-interval 1 --samples 0 "
    "--checkpoint-interval 0 --no-progress"
).split()
# A NumPy run against JAX over 4 devices: float32 sums in other orders, four AdamW steps
HOSTS_NOISE = 1e-4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_pretrain_processes_train_as_one_process_would(tmp_path):
    """Two hosts on one machine: two `tinyllm pretrain` processes of 2 CPU devices each,
    joined over loopback, train FSDP over 4 devices as one process trains on the same
    batches; only process 0 writes the run folder, its checkpoint gathered whole."""
    from tinyllm.cli import main
    from tinyllm.models.weights import read_safetensors

    hosts = f"--backend jax --shard fsdp --coordinator 127.0.0.1:{free_port()} --num-processes 2"
    argv = ["-m", "tinyllm.cli", *PRETRAIN, "--out", str(tmp_path / "two"), *hosts.split()]
    processes = [child([*argv, "--process-id", str(rank)], devices=2) for rank in range(2)]
    try:
        for process in processes:
            output_of(process)
    finally:  # one failed: the other would wait for it
        for process in processes:
            if process.poll() is None:
                process.kill()
    assert main([*PRETRAIN, "--out", str(tmp_path / "one"), "--backend", "numpy"]) == 0
    one, two = (read_metrics(tmp_path / name / "metrics.jsonl") for name in ("one", "two"))
    assert [row["step"] for row in two] == [1, 2, 3, 4]  # one writer: each step logged once
    for key in ("loss", "val_loss"):
        ours, theirs = [r[key] for r in two if key in r], [r[key] for r in one if key in r]
        assert len(ours) == len(theirs) > 0
        assert float(np.max(np.abs(np.subtract(ours, theirs)))) < HOSTS_NOISE, key
    weights = [read_safetensors(tmp_path / name / "model.safetensors") for name in ("one", "two")]
    assert weights[0].keys() == weights[1].keys()
    for name, array in weights[0].items():  # cut over two hosts in training, whole here
        # (AdamW moves a weight whose gradient is near 0 by up to lr either way: compare the
        # whole tensor; a piece missing or doubled would be off by its own size)
        difference = np.linalg.norm(weights[1][name] - array) / np.linalg.norm(array)
        assert difference < 1e-3, name
    assert [p.name for p in (tmp_path / "two" / "checkpoints").iterdir()] == ["step-000004"]


def test_clear_errors_for_runs_over_several_processes(capsys):
    from tinyllm.cli import main

    with pytest.raises(ValueError, match="num_processes and process_id go together; process_id "
                       "is missing"):  # fmt: skip
        train_config(coordinator="10.0.0.1:1234", num_processes=2)
    with pytest.raises(ValueError, match=r"process_id=2 is not in 0 \.\. 1 \(num_processes=2\)"):
        train_config(coordinator="10.0.0.1:1234", num_processes=2, process_id=2)
    with pytest.raises(ValueError, match="coordinator='10.0.0.1': expected HOST:PORT"):
        train_config(coordinator="10.0.0.1", num_processes=2, process_id=0)
    with pytest.raises(ValueError, match="num_processes=0 must be an integer >= 1"):
        train_config(coordinator="10.0.0.1:1234", num_processes=0, process_id=0)
    hosts = "--coordinator 127.0.0.1:1234 --num-processes 2 --process-id 1".split()
    assert main(["pretrain", "--backend", "numpy", *hosts]) == 2  # before any data is read
    err = capsys.readouterr().err
    assert "several processes needs the JAX backend, but the backend is 'numpy'" in err
    with tinyllm.use_backend("jax"):  # the config says 2 processes; this one joined none
        model = Transformer(get_preset("tiny", **MODEL), seed=0)
        config = train_config(coordinator="127.0.0.1:1234", num_processes=2, process_id=0)
        with pytest.raises(ValueError, match="num_processes=2, but this process has joined 1; "
                           "call tinyllm.train.sharding.join_processes"):  # fmt: skip
            Trainer(model, config, RandomBatches(TOKENS, 8, 16, seed=0))


# --- one device, in this process -----------------------------------------------------------
def test_the_compiled_step_traces_once_donates_and_times_its_compile(tmp_path):
    traces = []

    def counting_loss(model, batch):  # runs only while jax.jit traces the step
        traces.append(1)
        return language_model_loss(model, batch)

    with tinyllm.use_backend("jax"):
        model = Transformer(get_preset("tiny", **MODEL), seed=0)
        config = train_config(steps=3)
        batches = RandomBatches(TOKENS, 8, 16, seed=0)
        trainer = Trainer(model, config, batches, out_dir=tmp_path, loss_fn=counting_loss)
        before = model.token_embedding.weight.data
        result = trainer.fit()
        assert before.is_deleted()  # donated: the step wrote the new weights in its place
        assert len(traces) == 1 and result.step == 3
        assert result.compile_seconds > 0
        rows = read_metrics(tmp_path / "metrics.jsonl")
        assert rows[0]["compile_seconds"] == result.compile_seconds
        assert all("compile_seconds" not in row for row in rows[1:])
        trainer.config = config.replace(steps=5)  # two more, from the checkpoint: no new trace
        assert trainer.fit(resume=True).step == 5
        assert len(traces) == 1


@pytest.mark.parametrize("by_branch", [True, False], ids=["branch", "select"])
def test_a_nan_step_keeps_the_donated_weights(tmp_path, monkeypatch, by_branch):
    """Both ways the compiled step can keep a skipped step's arrays (``skips_by_branch``:
    the CPU's, and a GPU's select) leave the donated weights as they were."""
    monkeypatch.setattr(step_module, "skips_by_branch", lambda backend: by_branch)

    def nan_loss(model, batch):
        loss, metrics = language_model_loss(model, batch)
        return loss * float("nan"), metrics

    with tinyllm.use_backend("jax"):
        model = Transformer(get_preset("tiny", **MODEL), seed=0)
        weights = {name: p.numpy() for name, p in model.named_parameters()}
        trainer = Trainer(model, train_config(), RandomBatches(TOKENS, 8, 16, seed=0),
                          loss_fn=nan_loss)  # fmt: skip
        with pytest.raises(FloatingPointError, match="the weights were not updated"):
            trainer.fit()
        assert ("conditional" in trainer.step_program.as_text()) == by_branch
        for name, p in model.named_parameters():
            np.testing.assert_array_equal(p.numpy(), weights[name], err_msg=name)


def test_clear_errors_for_runs_over_devices():
    with pytest.raises(ValueError, match=r"micro-batch of 6 sequences .* devices=4"):
        train_config(batch_size=6, devices=4)
    with pytest.raises(ValueError, match="unknown shard 'ddp'; expected one of dp, zero1, fsdp"):
        train_config(shard="ddp")
    with pytest.raises(ValueError, match="devices=0 must be an integer >= 1"):
        train_config(devices=0)
    model = Transformer(get_preset("tiny", **MODEL), seed=0)  # on NumPy
    batches = RandomBatches(TOKENS, 8, 16, seed=0)
    with pytest.raises(ValueError, match="needs the JAX backend, but the model is on 'numpy'"):
        Trainer(model, train_config(shard="fsdp"), batches)
    with tinyllm.use_backend("jax"):
        import jax

        model = Transformer(get_preset("tiny", **MODEL), seed=0)
        n = len(jax.devices())
        with pytest.raises(ValueError, match=rf"devices={n + 7}, but JAX sees {n} device.*"
                           rf"xla_force_host_platform_device_count={n + 7}"):  # fmt: skip
            Trainer(model, train_config(batch_size=8 * (n + 7), devices=n + 7), batches)


def test_pretrain_flags_devices_and_shard(capsys):
    from tinyllm.cli import build_parser
    from tinyllm.cli.flags import dataclass_from_flags

    parser = build_parser()
    args = parser.parse_args(["pretrain", "--devices", "4", "--shard", "zero1"])
    config = dataclass_from_flags(TrainConfig, args)
    assert (config.devices, config.shard) == (4, "zero1")
    assert dataclass_from_flags(TrainConfig, parser.parse_args(["pretrain"])).shard is None
    with pytest.raises(SystemExit):
        parser.parse_args(["pretrain", "--shard", "ddp"])
    assert "invalid choice 'ddp'; expected one of dp, zero1, fsdp" in capsys.readouterr().err


def test_split_axis_cuts_the_largest_divisible_axis():
    from tinyllm.train.sharding import split_axis

    assert split_axis((65, 128), 4) == 1
    assert split_axis((128, 512), 4) == 1
    assert split_axis((512, 128), 4) == 0
    assert split_axis((64, 64), 4) == 0  # a tie: the first axis
    assert split_axis((65, 3), 4) is None  # nothing divides: whole on every device
    assert split_axis((64,), 1) is None


def test_each_mode_cuts_what_it_says():
    from tinyllm.train.sharding import layout_summary, split_axes

    assert split_axes("dp", (65, 32), 4) == (None, None)
    assert split_axes("zero1", (65, 32), 4) == (None, 1)  # moments cut, the parameter whole
    assert split_axes("fsdp", (65, 32), 4) == (1, 1)
    assert split_axes("fsdp", (65,), 4) == (None, None)  # nothing divides: whole
    shapes = {"w": (64, 32), "b": (65,)}
    assert layout_summary("dp", 4, shapes) == (
        "each device holds 100% of the parameters and 100% of each AdamW moment"
    )
    assert layout_summary("fsdp", 4, shapes).endswith("(no axis divides by 4): b")


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
