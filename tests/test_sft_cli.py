"""`tinyllm sft`: a BPE-pretrained model folder in, a fine-tuned chat model folder out, with the
test accuracy before and after, exact resume through the Trainer, and named refusals; `tinyllm
lora` the same with adapters, written in PEFT's format."""

import json

import numpy as np
import pytest

from tinyllm.cli import main
from tinyllm.data.preferences import preference_rows
from tinyllm.data.tasks import preference_pairs, task_examples
from tinyllm.infer.evaluate import exact_match, task_measures
from tinyllm.models import Transformer
from tinyllm.models.adapters import load_adapter
from tinyllm.models.reward import RewardModel
from tinyllm.recipes import dpo as dpo_recipe
from tinyllm.recipes import lora as lora_recipe
from tinyllm.recipes import posttrain
from tinyllm.recipes.distill import DistillConfig
from tinyllm.recipes.dpo import DPOConfig, load_reference
from tinyllm.recipes.evaluation import EvalConfig
from tinyllm.recipes.lora import LoRAConfig
from tinyllm.recipes.posttrain import load_chat_model, split_off
from tinyllm.recipes.reward import RewardConfig, ranking_accuracy, scores
from tinyllm.recipes.sft import SFTConfig
from tinyllm.tokenizer import Tokenizer
from tinyllm.train import TrainConfig, latest_checkpoint, read_metrics
from tinyllm.train import trainer as trainer_module
from tinyllm.train.checkpoint import load_model

PRETRAIN = ["--steps", "2", "--batch-size", "4", "--eval-batches", "1", "--samples", "0",
            "--context-length", "48", "--no-progress"]  # fmt: skip
SFT = ["--steps", "4", "--batch-size", "4", "--examples", "40", "--eval-examples", "5",
       "--eval-interval", "2", "--log-interval", "1", "--no-progress", "--tasks", "add,sort"]  # fmt: skip


SEED = TrainConfig().seed  # the runs draw their data with the training seed


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A BPE model folder: what `tinyllm speedrun` leaves, made in seconds."""
    folder = tmp_path_factory.mktemp("base")
    args = ["pretrain", "--out", str(folder / "run"), "--tokenizer", "bpe", "--vocab-size", "300"]
    assert main([*args, *PRETRAIN]) == 0
    return folder / "run"


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def test_sft_writes_a_chat_model_with_its_accuracy(base, tmp_path, capsys):
    out = tmp_path / "sft"
    assert main(["sft", "--model", str(base), "--out", str(out), *SFT]) == 0
    printed = capsys.readouterr().out
    assert "on held-out test data:\n  accuracy: " in printed
    report = json.loads((out / "sft.json").read_text())
    model, tokenizer = load_chat_model(out)
    test = task_examples(["add", "sort"], 5, split="test", seed=SEED)
    pairs = preference_pairs(["add", "sort"], 5, split="test", seed=SEED)
    assert report["after"] == task_measures(model, tokenizer, test, pairs=pairs)
    assert set(report["before"]) == {"accuracy", "accuracy_add", "accuracy_sort",
                                     "sampled_right", "preference_accuracy"}  # fmt: skip
    assert report["config"]["tasks"] == "add,sort"
    rows = read_metrics(out / "metrics.jsonl")
    evaluated = [row for row in rows if "accuracy" in row]
    assert [row["step"] for row in evaluated] == [2, 4]
    assert all(row["response_ppl"] > 1 for row in evaluated)
    # four more steps continue the run from its last checkpoint
    assert (
        main(["sft", "--model", str(base), "--out", str(out), "--resume", *SFT[2:], "--steps", "6"])
        == 0
    )
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")][-2:] == [5, 6]


def test_lora_trains_adapters_alone_and_writes_them_in_peft_format(base, tmp_path, capsys):
    out = tmp_path / "lora"
    args = ["lora", "--model", str(base), "--out", str(out), "--r", "2", "--alpha", "4",
            "--targets", "q_proj,v_proj,mlp.*", "--merge"]  # fmt: skip
    assert main([*args, *SFT]) == 0
    assert "on held-out test data:\n  accuracy: " in capsys.readouterr().out
    report = json.loads((out / "lora.json").read_text())
    assert report["adapter_bytes"] == 4 * report["adapter_parameters"]
    assert report["adapter_parameters"] == report["trainable_parameters"]
    assert 0 < report["trainable_fraction"] < 0.1 and report["merged"] == str(out / "merged")
    model, tokenizer = load_chat_model(base)
    load_adapter(model, out)  # the adapter on its base gives the measures after
    test = task_examples(["add", "sort"], 5, split="test", seed=SEED)
    pairs = preference_pairs(["add", "sort"], 5, split="test", seed=SEED)
    assert report["after"] == task_measures(model, tokenizer, test, pairs=pairs)
    ids = np.random.default_rng(0).integers(0, 300, (1, 16))
    merged = Transformer.from_pretrained(out / "merged")
    np.testing.assert_allclose(merged(ids)[0].numpy(), model(ids)[0].numpy(), atol=1e-4, rtol=0)
    rebuilt = load_model(latest_checkpoint(out))  # the whole adapted model, base untouched
    state = {name.replace(".base.", "."): array for name, array in rebuilt.state_dict().items()}
    for name, array in Transformer.from_pretrained(base).state_dict().items():
        assert state[name].tobytes() == array.tobytes(), name
    assert main([*args, "--resume", *SFT[2:], "--steps", "6"]) == 0
    assert [row["step"] for row in read_metrics(out / "metrics.jsonl")][-2:] == [5, 6]
    with pytest.raises(ValueError, match="r=0: expected an integer >= 1"):
        LoRAConfig(r=0)
    with pytest.raises(ValueError, match="tokens='all': expected one of none, chat, data"):
        LoRAConfig(tokens="all")
    args = ["lora", "--model", str(base), "--out", str(tmp_path / "x"), "--targets", "query"]
    assert main(args) == 2
    assert "target 'query' names no Linear layer" in capsys.readouterr().err


def test_lora_in_a_process_other_than_0_writes_nothing(base, tmp_path, monkeypatch):
    """Over several processes only process 0 writes: the others train, gather and stop."""
    for module in (lora_recipe, posttrain, trainer_module):
        monkeypatch.setattr(module, "is_main_process", lambda: False)
    out = tmp_path / "lora"
    args = ["lora", "--model", str(base), "--out", str(out), "--r", "2", "--merge", *SFT]
    assert main(args) == 0
    assert not out.exists() or sorted(p.name for p in out.iterdir()) == []


def test_dpo_after_sft_records_its_measures_before_and_after(base, tmp_path, capsys, monkeypatch):
    sft_out, dpo_out = tmp_path / "sft", tmp_path / "dpo"
    assert main(["sft", "--model", str(base), "--out", str(sft_out), *SFT]) == 0
    sampled = []  # the prompts answered: 3 steps of 4 use 12 of the 40 pairs asked for

    def sampled_pairs(model, tokenizer, examples, **keywords):
        sampled.append(len(examples))
        return real_sampled_pairs(model, tokenizer, examples, **keywords)

    real_sampled_pairs = dpo_recipe.sampled_pairs
    monkeypatch.setattr(dpo_recipe, "sampled_pairs", sampled_pairs)
    args = ["dpo", "--model", str(sft_out), "--out", str(dpo_out), "--pairs", "40",
            "--eval-pairs", "4", "--samples", "1", "--tasks", "add", "--steps", "3", "--sft-weight", "0",
            "--batch-size", "4", "--eval-interval", "3", "--log-interval", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert sampled == [12]
    printed = capsys.readouterr().out
    assert "  preference_accuracy: " in printed and "kl: 0 before" in printed
    report = json.loads((dpo_out / "dpo.json").read_text())
    assert set(report["before"]) == {"accuracy", "accuracy_add", "sampled_right",
                                     "preference_accuracy", "kl"}  # fmt: skip
    assert report["before"]["kl"] == 0.0  # the policy starts as the reference
    rows = read_metrics(dpo_out / "metrics.jsonl")
    assert {"reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"} <= set(rows[0])
    assert abs(rows[0]["loss"] - 0.6931) < 1e-3  # log 2: no preference at the start
    assert "kl" in rows[-1] and rows[-1]["step"] == 3


def test_sft_and_dpo_refuse_what_they_cannot_use(base, tmp_path, capsys):
    char = tmp_path / "char"
    assert main(["pretrain", "--out", str(char), *PRETRAIN]) == 0
    capsys.readouterr()
    assert main(["sft", "--model", str(char), "--out", str(tmp_path / "x"), *SFT]) == 2
    assert "lacks the chat tokens" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown task 'divide'"):
        SFTConfig(tasks="add,divide")
    other = tmp_path / "other"  # another vocabulary: no reference for DPO
    args = ["pretrain", "--out", str(other), "--tokenizer", "bpe", "--vocab-size", "320"]
    assert main([*args, *PRETRAIN]) == 0
    capsys.readouterr()
    args = ["dpo", "--model", str(base), "--reference", str(other), "--out", str(tmp_path / "d")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"reference {other}: its architecture differs from the policy's in vocab_size" in err
    policy, tokenizer = load_chat_model(base)  # the same architecture, another tokenizer
    retrained = Tokenizer.train(["sort: 1 2 3"] * 20, vocab_size=tokenizer.vocab_size)
    with pytest.raises(ValueError, match="its tokenizer differs from the policy's"):
        load_reference(base, policy, retrained)
    with pytest.raises(ValueError, match="examples=0: expected an integer >= 1"):
        SFTConfig(examples=0)


def test_reward_ranks_held_out_pairs_and_reloads(base, tmp_path, capsys):
    out = tmp_path / "reward"
    args = ["reward", "--model", str(base), "--out", str(out), "--pairs", "16",
            "--eval-pairs", "6", "--tasks", "add,sort", "--steps", "3", "--batch-size", "4",
            "--eval-interval", "3", "--log-interval", "1", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "  pair_accuracy: " in capsys.readouterr().out
    report = json.loads((out / "reward.json").read_text())
    model = load_model(latest_checkpoint(out))
    assert isinstance(model, RewardModel)
    exported = RewardModel.from_pretrained(out)  # the run folder in Hugging Face form
    _, tokenizer = load_chat_model(base)
    test = preference_pairs(["add", "sort"], 6, split="test", seed=SEED)
    rows = preference_rows(tokenizer, test, model.config.context_length)
    assert report["after"]["pair_accuracy"] == ranking_accuracy(model, rows)
    chosen, rejected = scores(model, rows)
    assert chosen.shape == rejected.shape == (6,)
    np.testing.assert_allclose(scores(exported, rows)[0], chosen, rtol=1e-5, atol=1e-6)
    metrics = read_metrics(out / "metrics.jsonl")
    assert {"ranked_right", "margin"} <= set(metrics[0]) and "pair_accuracy" in metrics[-1]
    assert abs(metrics[0]["loss"] - 0.6931) < 0.2  # a fresh head: scores near each other


def test_eval_measures_a_chat_model_and_writes_them(base, tmp_path, capsys):
    args = ["eval", "--model", str(base), "--out", str(tmp_path), "--examples", "6",
            "--tasks", "add,sort", "--samples", "2"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    measures = json.loads((tmp_path / "eval.json").read_text())
    assert set(measures) == {"config", "accuracy", "accuracy_add", "accuracy_sort",
                             "sampled_right", "preference_accuracy", "response_ppl"}  # fmt: skip
    model, tokenizer = load_chat_model(base)
    test = task_examples(["add", "sort"], 6, split="test", seed=0)
    assert measures["accuracy"] == exact_match(model, tokenizer, test)[0]
    assert (
        measures["response_ppl"] > 1 and f"response_ppl: {measures['response_ppl']:.4g}" in printed
    )
    with pytest.raises(SystemExit):
        main([*args, "--split", "dev"])
    assert "invalid choice 'dev'; expected one of train, val, test" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config",
    [SFTConfig(), LoRAConfig(), RewardConfig(), DPOConfig(), EvalConfig(), DistillConfig()],
)
def test_the_default_runs_find_their_task_data(config):
    count = getattr(config, "examples", None) or config.pairs
    for split, n in (("train", count), ("val", 100), ("test", 100)):
        assert len(preference_pairs(config.task_names, n, split=split)) == n


def test_a_files_items_are_split_into_held_out_slices_and_the_rest():
    items = list(range(45))
    val, test, rest = split_off(items, "pairs.jsonl", held=2)
    assert (val, test, rest) == (items[:2], items[2:4], items[4:])  # 5% each, from the front
    assert split_off(items[:3], "chats.jsonl") == ([0], [1, 2])  # one at least
    with pytest.raises(ValueError, match=r"pairs.jsonl: 2 items are too few: expected at least 3"):
        split_off(items[:2], "pairs.jsonl", held=2)
