"""The grader cannot be fooled: the reference scores 100%, untouched stubs score 0,
and a partly solved exercise file earns exactly the points of what it solved."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXERCISES = Path(__file__).resolve().parent.parent / "exercises"


def run_grade(path, tmp_path, *flags):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tinyllm.cli", "grade", str(path), "--json", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def stub_results(tmp_path_factory):
    return run_grade(EXERCISES, tmp_path_factory.mktemp("stubs"))


def test_reference_solutions_score_full_marks(tmp_path):
    results, stdout = run_grade(EXERCISES, tmp_path, "--solutions")
    assert results["max_score"] > 0
    assert results["score"] == results["max_score"]
    assert all(t["status"] == "passed" for t in results["tests"])
    assert "(100%)" in stdout


def test_untouched_stubs_score_zero(stub_results):
    results, stdout = stub_results
    assert results["max_score"] > 0
    assert results["score"] == 0
    assert all(t["status"] == "failed" for t in results["tests"])
    assert "(0%)" in stdout


def test_results_json_has_the_gradescope_fields(stub_results):
    results, _ = stub_results
    assert {"score", "tests", "visibility", "execution_time"} <= set(results)
    for t in results["tests"]:
        assert {"name", "number", "score", "max_score", "status", "output"} <= set(t)
    names = [t["name"] for t in results["tests"]]
    assert len(names) == len(set(names)), "each graded test needs a distinct name"
    stub_messages = [t["output"] for t in results["tests"] if t["number"] == "0.1"]
    assert any("Exercise 0.1" in m for m in stub_messages)


def test_partly_solved_file_earns_only_its_points(tmp_path, stub_results):
    work = tmp_path / "exercises"
    shutil.copytree(EXERCISES, work, ignore=shutil.ignore_patterns("__pycache__"))
    stub = work / "ex00_autograd.py"
    text = stub.read_text()
    solved = text.replace(
        'raise NotImplementedError("Exercise 0.1: implement Mul.backward")',
        "a, b = ctx.saved\n        return grad * b, grad * a",
    )
    assert solved != text
    stub.write_text(solved)

    results, _ = run_grade(work, tmp_path)
    earned = {t["number"] for t in results["tests"] if t["status"] == "passed"}
    assert earned == {"0.1"}
    full = sum(t["max_score"] for t in stub_results[0]["tests"] if t["number"] == "0.1")
    assert results["score"] == pytest.approx(full)


def test_missing_exercises_folder_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tinyllm.cli", "grade", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert "no exercises at" in proc.stderr and "nowhere" in proc.stderr
