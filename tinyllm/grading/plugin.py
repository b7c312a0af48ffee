"""A pytest plugin that turns exercise tests into a score.

An exercise test takes the ``exercise`` fixture and carries a marker with its number and
points::

    @pytest.mark.exercise("0.1", points=2)
    def test_mul_backward(exercise):
        ex = exercise("ex00_autograd")   # the student's exercises/ex00_autograd.py
        ...

``exercise(name)`` loads the student's file from the test's own folder - or, under
``--solutions``, ``tinyllm.grading.solutions.<name>``, which re-exports the library's real
implementations under the exercise names. A test that passes earns its points; anything
else (a failure, an error, the stub's ``NotImplementedError``) earns none.

At the end the plugin prints a score table, and with ``--grade-json FILE`` writes the
Gradescope autograder ``results.json`` format.
"""

import importlib
import importlib.util
import json
import time
from pathlib import Path

import pytest

SOLUTIONS_PACKAGE = "tinyllm.grading.solutions"
_CASES = pytest.StashKey[int]()


def pytest_addoption(parser):
    group = parser.getgroup("tinyllm grading")
    group.addoption(
        "--solutions",
        action="store_true",
        help="grade tinyllm's reference implementations instead of the stubs",
    )
    group.addoption(
        "--grade-json",
        metavar="FILE",
        help="write a Gradescope results.json with the scores to FILE",
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "exercise(number, points=1): an exercise test worth `points` when it passes"
    )
    config._tinyllm_grades = {}
    config._tinyllm_start = time.time()


@pytest.fixture
def exercise(request):
    """``exercise(name)`` -> the module being graded (the student's, or the solutions)."""

    def load(name):
        if request.config.getoption("--solutions"):
            return importlib.import_module(f"{SOLUTIONS_PACKAGE}.{name}")
        path = Path(request.path).parent / f"{name}.py"
        if not path.exists():
            raise FileNotFoundError(f"exercise file {path} is missing")
        spec = importlib.util.spec_from_file_location(f"tinyllm_exercise_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def _marker(item):
    marker = item.get_closest_marker("exercise")
    if marker is None:
        return None
    points = marker.kwargs.get("points", marker.args[1] if len(marker.args) > 1 else 1)
    return str(marker.args[0]), float(points)


def pytest_collection_modifyitems(session, config, items):
    """A parametrized test shares its points among its cases: 2 points over 4 cases is 0.5 each."""
    cases = {}
    for item in items:
        key = (item.path, getattr(item, "originalname", item.name))
        cases[key] = cases.get(key, 0) + 1
    for item in items:
        item.stash[_CASES] = cases[(item.path, getattr(item, "originalname", item.name))]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    info = _marker(item)
    if info is None:
        return report
    grades = item.config._tinyllm_grades
    number, points = info
    doc = (item.function.__doc__ or "").strip().splitlines()
    case = item.name[len(item.originalname) :] if hasattr(item, "originalname") else ""
    entry = grades.setdefault(
        item.nodeid,
        {
            "number": number,
            "name": (doc[0] if doc else item.name) + case,
            "max_score": points / item.stash.get(_CASES, 1),
            "passed": True,
            "output": "",
        },
    )
    if report.failed or report.skipped:
        entry["passed"] = False
        if not entry["output"]:
            entry["output"] = _short_reason(report)
    return report


def _short_reason(report):
    """The last line of a failure: the exception, e.g. 'NotImplementedError: Exercise 0.1 ...'."""
    if report.skipped:
        return "skipped"
    text = str(report.longrepr) if report.longrepr is not None else "failed"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("E ")]
    return lines[-1][2:].strip() if lines else text.strip().splitlines()[-1]


def results(grades):
    """Gradescope's results.json structure from the collected grades."""
    tests = []
    ordered = sorted(grades.items(), key=lambda kv: (_number_key(kv[1]["number"]), kv[0]))
    for _, g in ordered:
        tests.append(
            {
                "name": g["name"],
                "number": g["number"],
                "score": g["max_score"] if g["passed"] else 0.0,
                "max_score": g["max_score"],
                "status": "passed" if g["passed"] else "failed",
                "output": "" if g["passed"] else g["output"],
            }
        )
    return {
        "score": round(sum(g["max_score"] for g in grades.values() if g["passed"]), 4),
        "max_score": round(sum(g["max_score"] for g in grades.values()), 4),
        "tests": tests,
        "visibility": "visible",
    }


def _number_key(number):
    return tuple(int(p) if p.isdigit() else p for p in number.split("."))


def score_table(res):
    """The per-exercise score table printed after grading."""
    per_exercise = {}
    for t in res["tests"]:
        got, total = per_exercise.get(t["number"], (0.0, 0.0))
        per_exercise[t["number"]] = (got + t["score"], total + t["max_score"])
    lines = [f"{'exercise':<10}{'points':>12}", "-" * 22]
    for number, (got, total) in per_exercise.items():
        lines.append(f"{number:<10}{round(got, 4):>7g} / {round(total, 4):<3g}")
    lines.append("-" * 22)
    percent = 100.0 * res["score"] / res["max_score"] if res["max_score"] else 0.0
    lines.append(f"{'total':<10}{res['score']:>7g} / {res['max_score']:<3g} ({percent:.0f}%)")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    grades = config._tinyllm_grades
    if not grades:
        return
    res = results(grades)
    mode = "reference solutions" if config.getoption("--solutions") else "exercises"
    terminalreporter.section(f"tinyllm grade ({mode})")
    terminalreporter.write_line(score_table(res))
    path = config.getoption("--grade-json")
    if path:
        res["execution_time"] = round(time.time() - config._tinyllm_start, 2)
        Path(path).write_text(json.dumps(res, indent=2))
