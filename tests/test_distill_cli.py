"""`tinyllm distill`: a chat model folder (the teacher) in, a smaller student folder out with
the teacher's tokenizer, the held-out measures of both, both modes, and named refusals."""

import json
import math

import pytest

from tinyllm.cli import main
from tinyllm.data.tasks import preference_pairs, task_examples
from tinyllm.infer.evaluate import answers, response_perplexity, task_measures
from tinyllm.recipes.distill import DistillConfig, prompt_of, teacher_generations
from tinyllm.recipes.posttrain import load_chat_model
from tinyllm.train import TrainConfig, read_metrics

PRETRAIN = ["--steps", "2", "--batch-size", "4", "--eval-batches", "1", "--samples", "0",
            "--context-length", "48", "--no-progress", "--tokenizer", "bpe", "--vocab-size", "300"]  # fmt: skip
TRAIN = ["--steps", "3", "--batch-size", "4", "--examples", "24", "--eval-examples", "4",
         "--eval-interval", "3", "--log-interval", "1", "--no-progress", "--tasks", "add,sort"]  # fmt: skip
STUDENT = ["--student-d-model", "16", "--student-n-layer", "1"]
SEED = TrainConfig().seed


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A chat model folder made in seconds: `tinyllm pretrain`, then `tinyllm sft`."""
    folder = tmp_path_factory.mktemp("teacher")
    assert main(["pretrain", "--out", str(folder / "base"), *PRETRAIN]) == 0
    assert main(["sft", "--model", str(folder / "base"), "--out", str(folder / "sft"), *TRAIN]) == 0
    return folder / "sft"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def distill(teacher, out, *flags):
    return main(["distill", "--teacher", str(teacher), "--out", str(out), *TRAIN, *STUDENT, *flags])


@pytest.mark.parametrize("top_k", [None, 8])
def test_distill_writes_a_smaller_student_with_both_models_measures(
    teacher, tmp_path, capsys, top_k
):
    out = tmp_path / "student"
    flags = ["--top-k", "none" if top_k is None else str(top_k)]
    assert distill(teacher, out, "--alpha", "0.7", "--temperature", "1.5", *flags) == 0
    printed = capsys.readouterr().out
    assert "on held-out test data:\n  val_loss: " in printed and " teacher, " in printed
    report = json.loads((out / "distill.json").read_text())
    names = {"val_loss", "accuracy", "accuracy_add", "accuracy_sort", "sampled_right",
             "preference_accuracy"}  # fmt: skip
    assert set(report["teacher"]) == set(report["student"]) == names
    assert report["config"]["top_k"] == top_k and report["conversations"] == 24
    student, tokenizer = load_chat_model(out)  # the run folder, with the teacher's tokenizer
    teacher_model, teacher_tokenizer = load_chat_model(teacher)
    assert tokenizer.to_json() == teacher_tokenizer.to_json()
    assert (student.config.d_model, student.config.n_layer) == (16, 1)
    assert student.config.vocab_size == teacher_model.config.vocab_size
    test = task_examples(["add", "sort"], 4, split="test", seed=SEED)
    pairs = preference_pairs(["add", "sort"], 4, split="test", seed=SEED)
    measured = task_measures(student, tokenizer, test, pairs=pairs)
    assert {k: v for k, v in report["student"].items() if k != "val_loss"} == measured
    val = [e.messages for e in task_examples(["add", "sort"], 4, split="val", seed=SEED)]
    expected = math.log(response_perplexity(student, tokenizer, val))
    assert report["student"]["val_loss"] == pytest.approx(expected, rel=1e-6)
    rows = read_metrics(out / "metrics.jsonl")
    assert {"kl", "hard_loss"} <= set(rows[0]) and "response_ppl" in rows[-1]
    assert rows[0]["kl"] > 0


def test_black_box_distillation_fine_tunes_on_the_teachers_answers(teacher, tmp_path):
    model, tokenizer = load_chat_model(teacher)
    prompts = [e.messages[:1] for e in task_examples("add", 3, split="train", seed=0)]
    conversations = teacher_generations(model, tokenizer, prompts, max_new_tokens=8)
    written = answers(model, tokenizer, prompts, temperature=0, max_new_tokens=8)
    assert [c[-1]["content"] for c in conversations] == written  # greedy: its own answers
    assert [c[:-1] for c in conversations] == prompts
    sample = dict(temperature=1.0, seed=3, max_new_tokens=8)
    sampled = teacher_generations(model, tokenizer, prompts, **sample)
    assert sampled == teacher_generations(model, tokenizer, prompts, **sample)
    out = tmp_path / "student"
    assert distill(teacher, out, "--mode", "generations", "--max-new-tokens", "8") == 0
    report = json.loads((out / "distill.json").read_text())
    assert 0 < report["conversations"] <= 24 and "accuracy" in report["student"]
    assert "kl" not in read_metrics(out / "metrics.jsonl")[0]  # the SFT loss alone
    system = [{"role": "system", "content": "Be brief."}, *prompts[0]]
    assert prompt_of([*system, {"role": "assistant", "content": "3"}]) == system


def test_answers_too_long_for_the_context_are_left_out(teacher, tmp_path, capsys, monkeypatch):
    from tinyllm.recipes import distill as recipe

    model, tokenizer = load_chat_model(teacher)
    prompts = [e.messages[:1] for e in task_examples("add", 3, split="train", seed=0)]
    written = ["12", "9 " * 40, "7"]  # the second, with its prompt, is over 48 tokens
    monkeypatch.setattr(recipe, "answers", lambda *args, **options: written)
    kept = teacher_generations(model, tokenizer, prompts)
    assert [c[-1]["content"] for c in kept] == ["12", "7"]
    monkeypatch.setattr(
        recipe, "answers", lambda model, tok, prompts, **o: ["9 " * 40] * len(prompts)
    )
    assert distill(teacher, tmp_path / "c", "--mode", "generations") == 2
    assert (
        "none of the teacher's 24 answers fits the context of 48 tokens" in capsys.readouterr().err
    )


def test_distill_refuses_what_it_cannot_use(teacher, tmp_path, capsys):
    other = tmp_path / "other"  # another tokenizer, the same size: no student of this teacher
    args = ["pretrain", "--out", str(other), *PRETRAIN, "--corpus", str(_text(tmp_path))]
    assert main(args) == 0
    capsys.readouterr()
    assert distill(teacher, tmp_path / "a", "--model", str(other)) == 2
    assert "the teacher's and the student's tokenizers differ" in capsys.readouterr().err
    assert distill(teacher, tmp_path / "b", "--student-d-model", "30") == 2
    assert "d_model=30 is not divisible by n_head=4" in capsys.readouterr().err
    for settings, message in [
        (dict(alpha=1.5), "alpha=1.5: expected a weight from 0"),
        (dict(temperature=0.0), "temperature=0.0: expected a number > 0"),
        (dict(mode="soft"), "mode='soft': expected 'logits' or 'generations'"),
        (dict(student_preset="huge"), "student_preset='huge': expected one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            DistillConfig(**settings)


def _text(folder):
    """A small corpus unlike the shipped one: a BPE trained on it has other merges."""
    path = folder / "numbers.txt"
    path.write_text(" ".join(str(i * 7919 % 1000) for i in range(4000)))
    return path
