"""Every notebook runs top to bottom, as a learner would run it.

Each ``notebooks/*.ipynb`` is executed in a fresh ``python3`` kernel with nbclient, from
the notebooks folder; a cell that raises fails the test with that cell's traceback. New
notebooks are picked up by the glob, with nothing to register.
"""

import os
import re
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT_S = 900  # hang guards, generous: a busy machine runs a cell several times slower
STARTUP_TIMEOUT_S = 300
ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # IPython colours its tracebacks


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    # The kernel inherits this process's environment. Figures go to the inline backend,
    # which renders them to PNG (so drawing errors surface) and needs no display, whatever
    # MPLBACKEND the caller has; tinyllm is imported from this checkout.
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    python_path = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(python_path))

    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=CELL_TIMEOUT_S,
        startup_timeout=STARTUP_TIMEOUT_S,  # nbclient's default, 60 s, is short on a busy machine
        resources={"metadata": {"path": str(NOTEBOOKS)}},  # the kernel's working directory
    )
    error = None
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as err:
        error = ANSI_COLOUR.sub("", str(err))
    if error:
        pytest.fail(f"{path.name}: a cell raised an error\n{error}", pytrace=False)
