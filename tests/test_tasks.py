"""The checkable instruction tasks: right answers (worked out here independently), splits
that never share a prompt, seeded draws, wrong answers that are wrong, and named errors."""

import pytest

from tinyllm.data.tasks import (
    ORDINALS,
    TASKS,
    UNITS,
    preference_pairs,
    split_of,
    task_examples,
)


def right_answer(task, prompt):
    body = prompt.split(": ", 1)[1]
    if task == "add":
        a, b = body.split(" + ")
        return str(int(a) + int(b))
    if task == "sort":
        return " ".join(sorted(body.split(), key=int))
    if task == "reverse":
        return " ".join(reversed(body.split()))
    if task == "convert":
        amount, big, _, small = body.split()
        return str(int(amount) * UNITS[(big, small)])
    return body.split()[ORDINALS.index(prompt.split()[0])]


@pytest.mark.parametrize("task", TASKS)
def test_answers_are_right_and_splits_disjoint(task):
    n = {"convert": 40}.get(task, 60)  # convert has 792 prompts in all: ~79 in a small split
    drawn = {
        split: task_examples(task, n, split=split, seed=1) for split in ("train", "val", "test")
    }
    prompts = {split: {e.prompt for e in examples} for split, examples in drawn.items()}
    for split, examples in drawn.items():
        assert len(prompts[split]) == n  # distinct
        for example in examples:
            assert example.answer == right_answer(task, example.prompt)
            assert split_of(example.prompt) == split
    assert not (prompts["train"] & prompts["val"] or prompts["train"] & prompts["test"])
    assert not prompts["val"] & prompts["test"]


def test_draws_are_seeded_and_tasks_mix():
    assert task_examples("add", 5, seed=3) == task_examples("add", 5, seed=3)
    assert task_examples("add", 5, seed=3) != task_examples("add", 5, seed=4)
    mixed = task_examples(["add", "sort", "reverse"], 6)
    assert [e.task for e in mixed] == ["add", "sort", "reverse"] * 2


@pytest.mark.parametrize("task", TASKS)
def test_rejected_answers_are_wrong(task):
    for pair in preference_pairs(task, 30, seed=2):
        prompt = pair["prompt"][0]["content"]
        assert pair["chosen"] == right_answer(task, prompt) != pair["rejected"]
        assert pair["prompt"][0]["role"] == "user" and len(pair["prompt"]) == 1


def test_bad_requests_are_named():
    with pytest.raises(ValueError, match="unknown task 'multiply': expected one of add, sort"):
        task_examples("multiply", 3)
    with pytest.raises(ValueError, match="split='dev': expected one of train, val, test"):
        task_examples("add", 3, split="dev")
    with pytest.raises(ValueError, match="fewer than 500 distinct prompts in the test split"):
        task_examples("convert", 500, split="test")
    with pytest.raises(ValueError, match="n=-1: expected an integer >= 0"):
        task_examples("add", -1)
