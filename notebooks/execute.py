"""Run the notebooks top to bottom in a clean kernel and save them with their outputs.

    python notebooks/execute.py                                # every notebook here
    python notebooks/execute.py notebooks/04-pretraining.ipynb  # some of them

The notebooks are stored with their outputs (text and PNG figures), so that they read in
full where the repository is browsed. After changing a notebook, or the library code it
shows, run this to bring its outputs up to date; ``tests/test_notebooks.py`` fails on a
notebook saved without them.

Each notebook runs in a fresh ``python3`` kernel whose working directory is this folder,
with this checkout's ``tinyllm`` first on the path, an empty temporary ``TINYLLM_CACHE``
(the run starts from what a new user has, and leaves no cache behind), figures drawn as PNG
by the inline backend, and one BLAS thread unless ``OPENBLAS_NUM_THREADS`` says otherwise:
the notebooks' models are small, and on a machine shared with other busy processes BLAS
worker threads that spin between matrix products slow every cell several times over. A
notebook with a failing cell is not written: the error is printed and the exit status is
1. Running needs nbclient, nbformat and ipykernel (the ``dev`` extra), not Jupyter itself.
"""

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbclient
import nbformat

NOTEBOOKS = Path(__file__).resolve().parent
REPO = NOTEBOOKS.parent
CELL_TIMEOUT_S = 600  # generous: the notebooks are kept fast, this only stops a hung cell
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # IPython colours its tracebacks


def kernel_environment(cache_dir):
    """This process's environment, with what a notebook run needs on top."""
    python_path = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {
        "OPENBLAS_NUM_THREADS": "1",  # a default: the caller's setting wins
        "MKL_NUM_THREADS": "1",
        **os.environ,
        "PYTHONPATH": os.pathsep.join(python_path),  # this checkout's tinyllm
        "TINYLLM_CACHE": str(cache_dir),
        # The inline backend renders each figure to PNG (so drawing errors surface) and
        # needs no display, whatever MPLBACKEND the caller has.
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
    }


def execute(notebook, timeout=CELL_TIMEOUT_S):
    """Run ``notebook`` (a NotebookNode, changed in place) top to bottom in a fresh kernel.

    Returns ``{cell index: seconds}`` for the code cells. A cell that raises raises
    ``nbclient.exceptions.CellExecutionError``, with that cell's traceback.
    """
    started, seconds = {}, {}

    def on_cell_execute(cell, cell_index):
        started[cell_index] = time.perf_counter()

    def on_cell_executed(cell, cell_index, execute_reply):
        seconds[cell_index] = time.perf_counter() - started[cell_index]

    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=timeout,
        startup_timeout=300,  # nbclient's default, 60 s, is short on a busy machine
        record_timing=False,  # no timestamps in the saved file
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the kernel's working directory
        on_cell_execute=on_cell_execute,
        on_cell_executed=on_cell_executed,
    )
    with tempfile.TemporaryDirectory(prefix="tinyllm-cache-") as cache_dir:
        client.execute(env=kernel_environment(cache_dir))
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "paths",
        nargs="*",
        type=Path,
        help="notebooks to run (default: every notebooks/*.ipynb)",
    )
    parser.add_argument("--timeout", type=int, default=CELL_TIMEOUT_S, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = args.paths or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        if path.suffix != ".ipynb" or not path.is_file():
            parser.error(f"{str(path)!r} is not a notebook file (expected an existing .ipynb)")

    failed = []
    for path in paths:
        notebook = nbformat.read(path, as_version=4)
        start = time.perf_counter()
        try:
            seconds = execute(notebook, timeout=args.timeout)
        except nbclient.exceptions.CellExecutionError as err:
            print(
                f"{path.name}: a cell raised, the file is left as it was\n{ANSI_COLOUR.sub('', str(err))}"
            )
            failed.append(path.name)
            continue
        nbformat.write(notebook, path)
        slowest = max(seconds, key=seconds.get, default=None)
        print(
            f"{path.name}: {len(seconds)} code cells in {time.perf_counter() - start:.0f} s, "
            f"the slowest cell {slowest} ({seconds.get(slowest, 0.0):.0f} s); "
            f"{path.stat().st_size / 1e3:.0f} kB written"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
