"""Grading the exercises: ``tinyllm grade`` runs pytest with the grading plugin.

``exercises/`` holds stub files for students and the tests that grade them; the plugin
(``plugin.py``) adds up points, prints a table and writes Gradescope's ``results.json``;
the guard (``guard.py``) rejects an exercise file that imports the answers instead of
writing them, by the table of what each set asks for (``rules.py``).
``grade(..., solutions=True)`` grades the library's own implementations, which is how CI
proves the tests are right: the reference scores 100% and the untouched stubs score 0.
"""

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class GradeReport:
    score: float
    max_score: float
    tests: list
    collected: bool

    @property
    def percent(self):
        return 100.0 * self.score / self.max_score if self.max_score else 0.0


def grade(path="exercises", solutions=False, json_path=None, keyword=None, quiet=False):
    """Run the exercise tests under ``path`` and return a ``GradeReport``.

    Prints pytest's output, then the score table last; writes Gradescope JSON to ``json_path``.
    """
    try:
        import pytest
    except ImportError as e:
        raise ImportError(
            "tinyllm grade runs the exercise tests with pytest: pip install pytest"
        ) from e

    target = Path(path)
    if not target.exists():
        raise FileNotFoundError(
            f"no exercises at {target}; run from the tinyllm repository root or pass the "
            "exercises folder"
        )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(json_path) if json_path else Path(tmp) / "results.json"
        args = [
            str(target),
            "-p",
            "tinyllm.grading.plugin",
            "--grade-json",
            str(out),
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(target if target.is_dir() else target.parent),
        ]
        args += ["-q", "--no-header", "-rN", "--tb=no"] if quiet else ["--tb=line"]
        if solutions:
            args.append("--solutions")
        if keyword:
            args += ["-k", keyword]
        pytest.main(args)
        if not out.exists():
            return GradeReport(0.0, 0.0, [], collected=False)
        res = json.loads(out.read_text())
    return GradeReport(res["score"], res["max_score"], res["tests"], collected=bool(res["tests"]))
