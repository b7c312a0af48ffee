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
else (a failure, an error, the stub's ``NotImplementedError``) earns none. A student's file
that imports the answers instead of writing them is rejected (``guard.py``): every test
that loads it earns nothing, and the score table says why.

When pytest has finished - after its failures and its summary line - the plugin prints the
score table, so the score is the last thing on screen; with ``--grade-json FILE`` it also
writes the Gradescope autograder ``results.json`` format.
"""

import importlib
import json
import time
from pathlib import Path

import pytest

from .guard import SOLUTIONS_PACKAGE, Rejected, load_exercise

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
    config._tinyllm_loaded = {}  # test id -> the exercise files it loaded
    config._tinyllm_rejected = {}  # exercise file name -> why it was rejected
    config._tinyllm_start = time.time()


@pytest.fixture
def exercise(request):
    """``exercise(name)`` -> the module being graded (the student's, or the solutions)."""

    config = request.config

    def load(name):
        if config.getoption("--solutions"):
            return importlib.import_module(f"{SOLUTIONS_PACKAGE}.{name}")
        config._tinyllm_loaded.setdefault(request.node.nodeid, set()).add(name)
        if name in config._tinyllm_rejected:
            raise Rejected(config._tinyllm_rejected[name])
        path = Path(request.path).parent / f"{name}.py"
        if not path.exists():
            raise FileNotFoundError(f"exercise file {path} is missing")
        try:
            return load_exercise(path, name)
        except Rejected as e:
            config._tinyllm_rejected[name] = str(e)
            raise

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


def results(grades, rejected=None):
    """Gradescope's results.json structure from the collected grades.

    ``rejected`` maps an exercise file's name to why it was rejected; each test that loaded
    a rejected file fails with that reason, whatever its outcome.
    """
    rejected = rejected or {}
    tests = []
    ordered = sorted(grades.items(), key=lambda kv: (_number_key(kv[1]["number"]), kv[0]))
    for _, g in ordered:
        reasons = [rejected[name] for name in sorted(g.get("loaded", ())) if name in rejected]
        passed = g["passed"] and not reasons
        tests.append(
            {
                "name": g["name"],
                "number": g["number"],
                "score": g["max_score"] if passed else 0.0,
                "max_score": g["max_score"],
                "status": "passed" if passed else "failed",
                "output": f"rejected: {reasons[0]}" if reasons else "" if passed else g["output"],
            }
        )
    res = {
        "score": round(sum(t["score"] for t in tests), 4),
        "max_score": round(sum(g["max_score"] for g in grades.values()), 4),
        "tests": tests,
        "visibility": "visible",
    }
    if rejected:
        res["output"] = "\n".join(f"rejected: {reason}" for _, reason in sorted(rejected.items()))
    return res


def _number_key(number):
    return tuple(int(p) if p.isdigit() else p for p in number.split("."))


def score_table(res):
    """The per-exercise score table printed after grading, rejected files first.

    >>> print(score_table(results({"t": {"number": "0.1", "name": "t", "max_score": 2.0,
    ...                                  "passed": True, "output": ""}})))
    exercise        points
    ----------------------
    0.1             2 / 2
    ----------------------
    total           2 / 2 (100%)
    """
    per_exercise = {}
    for t in res["tests"]:
        got, total = per_exercise.get(t["number"], (0.0, 0.0))
        per_exercise[t["number"]] = (got + t["score"], total + t["max_score"])
    lines = res["output"].splitlines() if res.get("output") else []
    lines += [f"{'exercise':<10}{'points':>12}", "-" * 22]
    for number, (got, total) in per_exercise.items():
        lines.append(f"{number:<10}{round(got, 4):>7g} / {round(total, 4):g}")
    lines.append("-" * 22)
    percent = 100.0 * res["score"] / res["max_score"] if res["max_score"] else 0.0
    lines.append(f"{'total':<10}{res['score']:>7g} / {res['max_score']:g} ({percent:.0f}%)")
    return "\n".join(lines)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Outside pytest's own: the table comes after its failures and its summary line."""
    result = yield
    config = session.config
    grades = config._tinyllm_grades
    if not grades:
        return result
    for nodeid, names in config._tinyllm_loaded.items():
        if nodeid in grades:
            grades[nodeid]["loaded"] = sorted(names)
    res = results(grades, config._tinyllm_rejected)
    path = config.getoption("--grade-json")
    if path:
        res["execution_time"] = round(time.time() - config._tinyllm_start, 2)
        Path(path).write_text(json.dumps(res, indent=2))
    mode = "reference solutions" if config.getoption("--solutions") else "exercises"
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        print(f"tinyllm grade ({mode})\n{score_table(res)}")
    else:
        reporter.write_sep("=", f"tinyllm grade ({mode})")
        for line in score_table(res).splitlines():
            reporter.write_line(line)
    return result
