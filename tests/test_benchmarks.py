"""Every benchmark script still runs against the current library (their ``--quick`` mode).

Their figures are read by people, not asserted: a timing test would fail on a busy machine.
What is checked is that each script finishes and prints its comparison with the peer, so an
API change cannot leave a benchmark broken until someone next needs its numbers.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="the benchmarks compare against PyTorch (the 'dev' extra)")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# bench_gpu.py's --quick run is tests/test_bench_gpu.py's, with its figures checked
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py") if p.name != "bench_gpu.py")
# the word each script's comparison names (the peer it is measured against); default torch
PEER = {
    "bench_tokenizer.py": "HF",
    "bench_speedrun.py": "busy",
    "bench_generate.py": "transformers",
    "bench_serve.py": "static",
    "bench_quant.py": "fp32",
    "bench_gguf.py": "llama.cpp",
}


def test_benchmark_scripts_are_found():
    assert len(SCRIPTS) >= 6, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_quick(script):
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, script, "--quick"],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert PEER.get(script, "torch") in done.stdout, done.stdout
    assert re.search(r"\d+\.\d+", done.stdout), done.stdout
