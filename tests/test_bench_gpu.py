"""``benchmarks/bench_gpu.py --quick`` on this machine: every column of the GPU benchmark runs
or says why it cannot, and its figures add up, so that the one run on a GPU machine is not
lost to a mistake in the script. The timings themselves are read by people, not asserted."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the GPU benchmark compares against PyTorch (the 'dev' extra)")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _works(module):
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """``(stdout, figures)`` of one ``--quick`` run with ``--out``."""
    out = tmp_path_factory.mktemp("bench_gpu") / "figures.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "bench_gpu.py", "--quick", "--budget", "100000", "--out", str(out)],
        cwd=BENCHMARKS, capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


@pytest.fixture
def bench_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import bench_gpu

    return bench_gpu


def test_every_training_column_runs_or_says_why(quick_run, bench_gpu):
    stdout, figures = quick_run
    rows = {(row["column"], row["dtype"]): row for row in figures["train"]}
    assert set(rows) >= {(label, dtype) for label, _, dtype in bench_gpu.TRAIN_COLUMNS}
    for key in [("torch eager", "float32"), ("torch eager", "bfloat16"),
                ("torch.compile", "float32"), ("torch.compile", "bfloat16")]:  # fmt: skip
        assert rows[key]["status"] == "ok", rows[key]
    # tinyllm's columns in float32 and in each backend's 16 bits (CuPy has no bfloat16)
    assert {("tinyllm-JAX", "bfloat16"), ("tinyllm-CuPy", "float16")} <= set(rows)
    if _works("jax"):
        for dtype in ("float32", "bfloat16"):
            assert rows["tinyllm-JAX", dtype]["status"] == "ok", rows["tinyllm-JAX", dtype]
    if not _works("cupy"):  # no CuPy here: the column says so, and the run goes on
        for dtype in ("float32", "float16"):
            status = rows["tinyllm-CuPy", dtype]["status"]
            assert status.startswith("unavailable: ") and "cupy" in status.lower(), status
    for row in figures["train"]:
        assert row["status"] == "ok" or row["status"].split(":")[0] in ("unavailable", "error")
        assert row["status"].split(":")[0] != "error", row  # a failure here is a bug in the script
    assert "| torch eager | float32 |" in stdout and "MFU" in stdout


def test_the_figures_add_up(quick_run, bench_gpu):
    """Tokens/s from the step time, MFU from the achieved FLOP/s and the measured peaks."""
    _, figures = quick_run
    rates = figures["matmul_tflops"]
    assert isinstance(rates["torch bfloat16"], float) and rates["torch bfloat16"] > 0
    context, batch = bench_gpu.QUICK_CHANGES["context_length"], bench_gpu.QUICK_BATCH
    for row in (r for r in figures["train"] if r["status"] == "ok"):
        assert row["tokens_per_s"] == pytest.approx(batch * context / (row["step_ms"] / 1000))
        assert row["mfu_bf16"] == pytest.approx(row["tflops"] / rates["torch bfloat16"])
        assert row["mfu_own"] == pytest.approx(row["tflops"] / rates[row["own_rate"]])
        assert row["steps"] >= 3 and row["compile_s"] >= 0


def test_generation_columns(quick_run):
    _, figures = quick_run
    rows = {row["column"]: row for row in figures["generate"]}
    expected = {"tinyllm-JAX": _works("jax"), "torch (transformers)": _works("transformers")}
    for column, runs in expected.items():
        if runs:
            assert rows[column]["status"] == "ok", rows[column]
            assert rows[column]["tokens_per_s"] > 0 and rows[column]["batch"] == 1


def test_a_column_past_its_limit_is_stopped_and_reported(bench_gpu, monkeypatch):
    class Slow:
        def run(self, n):
            time.sleep(30)

        def sync(self):
            pass

    monkeypatch.setattr(bench_gpu, "train_runner", lambda *args: Slow())
    args = bench_gpu.parse_args(["--quick", "--column-limit", "1"])
    start = time.perf_counter()
    row = bench_gpu.train_column("slow", "eager", "float32", (None, 1, [], 1), {}, args)
    assert row["status"] == "stopped: over its 1 s limit"
    assert time.perf_counter() - start < 20


def test_the_json_holds_every_row_as_soon_as_it_is_measured(bench_gpu, tmp_path):
    path = tmp_path / "figures.json"
    report = bench_gpu.Report(path, device="cpu")
    report.add("train", {"column": "a", "status": "ok"})
    assert json.loads(path.read_text())["train"] == [{"column": "a", "status": "ok"}]
    report.add("generate", {"column": "b", "status": "unavailable: no GPU"})
    saved = json.loads(path.read_text())
    assert saved["device"] == "cpu" and len(saved["train"]) == len(saved["generate"]) == 1


def test_columns_past_the_budget_are_skipped_and_reported(bench_gpu, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # main sets it; restored after
    out = tmp_path / "figures.json"
    bench_gpu.main(["--quick", "--budget", "0", "--out", str(out)])
    figures = json.loads(out.read_text())
    rows = figures["train"] + figures["generate"]
    assert len(figures["train"]) >= len(bench_gpu.TRAIN_COLUMNS) and figures["generate"]
    assert all(row["status"] == "skipped: the run's --budget of 0 s is spent" for row in rows)
    assert "skipped: the run's --budget" in capsys.readouterr().out


def test_the_fusion_table_runs_or_says_why(bench_gpu, capsys):
    """One row per chain on CuPy (fused and unfused times, their ratio), or, without a GPU,
    one row saying why."""
    report = bench_gpu.Report(None)
    args = bench_gpu.parse_args(["--quick"])
    bench_gpu.fusion(args, report, lambda: 60, "skipped")
    rows = report.data["fusion"]
    works, detail = __import__("tinyllm").available_backends()["cupy"]
    if works:
        assert [row["chain"] for row in rows] == list(bench_gpu.FUSION_CASES)
        for row in rows:
            assert row["status"] == "ok", row
            assert row["ratio"] == pytest.approx(row["unfused_us"] / row["fused_us"])
    else:
        assert (
            len(rows) == 1
            and rows[0]["status"] == f"unavailable: {detail}"[: len(rows[0]["status"])]
        )
        assert rows[0]["status"].startswith("unavailable: ")
    assert "Fusion on CuPy" in capsys.readouterr().out
