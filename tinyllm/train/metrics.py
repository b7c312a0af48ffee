"""Metrics: one JSON object per line (JSONL) as training goes, and the loss curves as a PNG.

JSONL suits a log that grows: each line is written whole and flushed, so a killed run
keeps every line before the kill, and any tool (pandas, jq, a notebook) reads it back.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as tmp:
...     log = MetricsLog(pathlib.Path(tmp) / "metrics.jsonl")
...     log.write({"step": 1, "loss": 4.2})
...     log.write({"step": 2, "loss": 3.9, "val_loss": 4.0})
...     [row["loss"] for row in read_metrics(log.path)]
[4.2, 3.9]
"""

import json
import math
from pathlib import Path


class MetricsLog:
    """Appends metric rows to a JSONL file; ``resume_at(step)`` drops rows after ``step``."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row):
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(row) + "\n")

    def resume_at(self, step):
        """Keep only the rows up to ``step``: a resumed run rewrites what came after."""
        kept = [row for row in read_metrics(self.path) if row.get("step", 0) <= step]
        with open(self.path, "w", encoding="utf-8") as file:
            file.writelines(json.dumps(row) + "\n" for row in kept)


def read_metrics(path):
    """Every row of a metrics JSONL file (a torn last line from a kill is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def plot_losses(rows, path, title="training", measures=()):
    """Save train and validation loss against step, and the learning rate, as a PNG; below
    them, one small panel for each of ``measures`` (names of held-out measures in the rows,
    an accuracy say) against step."""
    from matplotlib.figure import Figure

    train = _series(rows, "loss")
    val = _series(rows, "val_loss")
    measures = [name for name in measures if _series(rows, name)]
    figure = Figure(figsize=(10, 3.6 + 2.6 * bool(measures)))  # no pyplot: no global state
    grid = figure.add_gridspec(1 + bool(measures), max(2, len(measures)))
    half = max(2, len(measures)) // 2
    left, right = figure.add_subplot(grid[0, :half]), figure.add_subplot(grid[0, half:])
    if train:
        left.plot(*zip(*train), label="train", linewidth=1)
    if val:
        left.plot(*zip(*val), "o-", label="validation", markersize=3)
        best = min(v for _, v in val)
        left.set_title(f"{title}: best val loss {best:.3f} (ppl {math.exp(min(best, 50)):.1f})")
    else:
        left.set_title(title)
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.grid(alpha=0.3)
    if train or val:
        left.legend()
    lr = _series(rows, "lr")
    if lr:
        right.plot(*zip(*lr), color="tab:green")
    right.set_xlabel("step")
    right.set_ylabel("learning rate")
    right.set_title("schedule")
    right.grid(alpha=0.3)
    for column, name in enumerate(measures):
        axes = figure.add_subplot(grid[1, column])
        axes.plot(*zip(*_series(rows, name)), "o-", color="tab:purple", markersize=3)
        axes.set_title(f"held out: {name}")
        axes.set_xlabel("step")
        axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _series(rows, name):
    """``(step, value)`` for each row that has ``name``."""
    return [(r["step"], r[name]) for r in rows if name in r]
