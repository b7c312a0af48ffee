"""`tinyllm pretrain`, `tinyllm sample` and `tinyllm speedrun`: flags onto dataclasses, a run
folder the library and transformers read, clear errors that leave nothing behind."""

import importlib.util
import json
import os
import stat

import numpy as np
import pytest

from tinyllm.cli import main
from tinyllm.data import load_tokenizer
from tinyllm.models import Transformer
from tinyllm.tokenizer import Tokenizer
from tinyllm.train import read_metrics

QUICK = ["--steps", "3", "--batch-size", "4", "--eval-batches", "1", "--samples", "1",
         "--sample-tokens", "5", "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "cache"))


def test_pretrain_writes_a_model_folder_that_sample_and_transformers_read(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--out", str(out), "--context-length", "32", "--lr", "3e-3", *QUICK]
    assert main(args) == 0
    assert "step 3: train loss" in capsys.readouterr().out
    model = Transformer.from_pretrained(out)
    assert model.config.context_length == 32 and model.config.vocab_size == 65
    assert load_tokenizer(out).vocab_size == 65
    state = json.loads((out / "checkpoints/step-000003/trainer_state.json").read_text())
    assert state["train_config"]["lr"] == 3e-3  # the flag reached TrainConfig
    assert state["train_config"]["warmup_steps"] == 0  # a tenth of 3 steps: no warmup error
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert set(modes.values()) == {0o666 & ~umask}, modes  # as any file the user writes

    assert main(["sample", str(out), "--prompt", "ROMEO:", "--tokens", "20", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.rstrip("\n")) == len("ROMEO:") + 20
    greedy = ["sample", str(out), "--prompt", "ROMEO:", "--tokens", "20", "--temperature", "0"]
    assert main([*greedy, "--repetition-penalty", "1.5", "--min-p", "0.1"]) == 0
    penalized = capsys.readouterr().out  # greedy: the penalty alone decides the difference
    assert main(greedy) == 0
    plain = capsys.readouterr().out
    assert main([*greedy, "--repetition-penalty", "0"]) == 2  # checked before any output
    refused = capsys.readouterr()
    assert (
        refused.out == "" and "repetition_penalty=0.0: expected a finite number > 0" in refused.err
    )
    assert main(["generate", str(out), "--prompt", "ROMEO:", "--max-new-tokens", "5"]) == 0
    streamed = capsys.readouterr()  # "sample" is the same command under its first name
    assert streamed.out.startswith("ROMEO:") and "5 tokens in " in streamed.err
    assert "tokens/s)" in streamed.err and "tokens/s" not in streamed.out
    assert main(["generate", str(out), "--prompt", ""]) == 2
    assert "--prompt '' has no tokens" in capsys.readouterr().err
    errors = []
    for speculation in (["--draft", str(out), "--draft-tokens", "3"], ["--prompt-lookup"]):
        assert main([*greedy, *speculation]) == 0
        speculated = capsys.readouterr()
        assert speculated.out == plain  # greedy: the same text with and without speculation
        errors.append(speculated.err)
    # the model as its own draft keeps all: 5 rounds of 3 proposals and 1 more token each
    assert "100% of 15 proposed tokens accepted, 4.00 tokens per forward pass" in errors[0]
    assert "proposed tokens accepted" in errors[1]
    repeats = len(load_tokenizer(out).encode(plain)) > len(set(load_tokenizer(out).encode(plain)))
    assert repeats and penalized != plain  # a 3-step model repeats itself; the penalty acts

    if importlib.util.find_spec("transformers"):
        import torch
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(out)
        ids = np.arange(10).reshape(1, 10)
        with torch.no_grad():
            expected = hf(torch.tensor(ids)).logits.numpy()
        np.testing.assert_allclose(model(ids)[0].numpy(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--preset", "huge"], "invalid choice 'huge'; expected one of tiny, small"),
        (["--corpus", "no-such-corpus"], "unknown corpus 'no-such-corpus'"),
        (["--corpus", "texts/missing.txt"], "corpus file 'texts/missing.txt' does not exist"),
        (["--context-length", "5000"], "does not fit the data"),
        (["--tokenizer", "words"], "invalid choice 'words'; expected one of char, bpe"),
        (["--schedule", "cosin"], "invalid choice 'cosin'"),
        (["--top-k", "0"], "top_k=0: expected an integer >= 1 or None"),
    ],
)
def test_bad_pretrain_flags_are_clear_errors(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("To be, or not to be: that is the question.\n" * 20)
    corpus = ["--corpus", str(tiny)] if "--corpus" not in flags else []
    try:
        code = main(["pretrain", "--out", str(out), *corpus, *QUICK, *flags])
    except SystemExit as exit:  # refused by argparse, before anything runs
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (out / "checkpoints").exists()  # nothing was written


def test_pretrain_into_an_existing_run_needs_resume(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["pretrain", "--out", str(out), "--context-length", "16", *QUICK]
    assert main(base) == 0
    before = (out / "model.safetensors").read_bytes()
    assert main(base) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before
    assert main([*base, "--steps", "5", "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "step 5:" in printed and "finished at step 5 (resumed from step 3)" in printed
    assert main([*base, "--steps", "5", "--resume"]) == 0  # finished: nothing to train
    printed = capsys.readouterr().out
    assert "this run had already finished at step 5; nothing was trained" in printed
    last = read_metrics(out / "metrics.jsonl")[-1]
    assert f"train loss {last['loss']:.4f}, val loss {last['val_loss']:.4f} (step 5)" in printed
    assert "nan" not in printed and "throughput - tokens/s" in printed


def test_speedrun_writes_a_report(tmp_path, capsys):
    out = tmp_path / "speedrun"
    short = ["--steps", "2", "--sft-steps", "2", "--dpo-steps", "2", "--eval-examples", "4"]
    assert main(["speedrun", "--out", str(out), *short, "--no-progress"]) == 0
    assert f"wrote {out / 'report.md'}" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    for part in ("# tinyllm speedrun", "byte-level BPE, 1,024 tokens", "2 steps", "![loss curves]",
                 "## Samples", "### train_config"):  # fmt: skip
        assert part in report
    facts = json.loads((out / "report.json").read_text())
    assert facts["steps"] == 2 and np.isfinite(facts["val_loss"])
    last = [row for row in read_metrics(out / "metrics.jsonl") if "samples" in row][-1]
    assert facts["samples"] == last["samples"] and len(facts["samples"]) == 2  # the last eval's
    assert (out / "loss.png").exists() and (out / "tokenizer.json").exists()
    assert Transformer.from_pretrained(out).config.vocab_size == 1024
    exported = json.loads((out / "config.json").read_text())  # the tokenizer's own end of text
    end_of_text = Tokenizer.load(out).special_tokens["<|endoftext|>"]
    assert exported["eos_token_id"] == end_of_text < 1024 and exported["bos_token_id"] is None
    assert facts["outcome"] == "finished at step 2" and facts["train_config"]["warmup_steps"] == 0
    # post-training: SFT from the pretrained folder, DPO from the SFT folder, each measured
    post = facts["post_training"]
    assert list(post) == ["sft", "dpo"] and set(facts["stage_seconds"]) == {"pretrain", *post}
    sft_run = json.loads((out / "sft" / "sft.json").read_text())
    dpo_run = json.loads((out / "dpo" / "dpo.json").read_text())
    assert sft_run["config"]["model"] == str(out) and dpo_run["config"]["model"] == str(out / "sft")
    assert post["sft"]["after"] == sft_run["after"] and post["dpo"]["after"] == dpo_run["after"]
    assert post["dpo"]["before"]["kl"] == 0.0 and len(sft_run["after"]) == 6  # 3 tasks
    assert post["sft"]["outcome"] == post["dpo"]["outcome"] == "finished at step 2"
    report = (out / "report.md").read_text()
    for part in (
        "## Post-training",
        "| after sft | ",
        "| after dpo | ",
        "![sft curves](sft/loss.png)",
    ):
        assert part in report
    assert (out / "stages.png").exists() and (out / "dpo" / "loss.png").exists()

    # --resume on the finished run (the "already holds a run" error suggests it)
    assert main(["speedrun", "--out", str(out), *short, "--resume", "--no-progress"]) == 0
    again = json.loads((out / "report.json").read_text())
    said = "this run had already finished at step 2; nothing was trained"
    assert again["outcome"] == said and said in (out / "report.md").read_text()
    assert again["train_loss"] == last["loss"] and again["val_loss"] == facts["val_loss"]
    assert again["samples"] == facts["samples"] and again["tokens_per_second"] is None
    assert "nan" not in (out / "report.md").read_text()
    nothing = "this run had already finished at step 2; nothing was trained"
    assert [stage["outcome"] for stage in again["post_training"].values()] == [nothing] * 2


def test_the_speedrun_runs_every_stage_on_jax(tmp_path):
    """The whole pipeline on the JAX backend: each stage's compiled step, and the held-out
    measures that feed NumPy targets to a JAX model (SFT and DPO once failed there)."""
    pytest.importorskip("jax")
    out = tmp_path / "speedrun"
    short = ["--steps", "2", "--sft-steps", "2", "--dpo-steps", "2", "--eval-examples", "4"]
    assert main(["speedrun", "--out", str(out), "--backend", "jax", *short, "--no-progress"]) == 0
    facts = json.loads((out / "report.json").read_text())
    assert facts["backend"].startswith("JAX") and facts["outcome"] == "finished at step 2"
    stages = facts["post_training"]
    assert [stage["outcome"] for stage in stages.values()] == ["finished at step 2"] * 2
    assert all(np.isfinite(v) for v in stages["dpo"]["after"].values())


def test_the_speedrun_preset_follows_the_device_not_the_array_library():
    from tinyllm.backend import get_backend
    from tinyllm.recipes.speedrun import preset_for

    assert preset_for(get_backend("numpy")) == "cpu"
    if importlib.util.find_spec("jax"):
        import jax

        expected = "cpu" if jax.default_backend() == "cpu" else "gpu"
        assert preset_for(get_backend("jax")) == expected  # JAX on a CPU: the cpu preset
