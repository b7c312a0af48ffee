"""Every notebook runs top to bottom, as a learner would run it, and is stored with its outputs.

Each ``notebooks/*.ipynb`` is executed in a fresh ``python3`` kernel by
``notebooks/execute.py`` - the script that also writes the stored outputs - on a copy in
memory, so the file is not changed, two notebooks at a time; a cell that raises fails the
test with that cell's traceback. The stored file must hold the outputs of one clean run from the top: every code
cell executed, in order, none with an error. A notebook saved with its outputs stripped, or
after running cells out of order, fails here; ``python notebooks/execute.py`` repairs it.
New notebooks are picked up by the glob, with nothing to register.
"""

import importlib.util
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
MAX_BYTES = 600_000  # a stored notebook, figures included: modest figures keep it far below


def load_execute():
    spec = importlib.util.spec_from_file_location("notebooks_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


execute = load_execute()


def code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def run_notebook(path):
    """``(notebook, None)`` after running ``path`` top to bottom, or ``(None, error text)``."""
    notebook = nbformat.read(path, as_version=4)
    try:
        execute.execute(notebook)
    except nbclient.exceptions.CellExecutionError as err:
        return None, execute.ANSI_COLOUR.sub("", str(err))
    return notebook, None


@pytest.fixture(scope="module")
def executed(request):
    """The selected notebooks (``-k`` picks some), each run once, two at a time: each kernel is a
    process of its own using one BLAS thread, so two share two cores without slowing each
    other. A test waits for its own notebook."""
    selected = [
        item.callspec.params["path"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_notebook_runs_top_to_bottom"
    ]
    workers = max(1, min(2, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        yield {path: pool.submit(run_notebook, path) for path in selected}


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom(path, executed):
    notebook, error = executed[path].result()
    if error is not None:
        pytest.fail(f"{path.name}: a cell raised an error\n{error}", pytrace=False)
    assert [cell.execution_count for cell in code_cells(notebook)] == list(
        range(1, len(code_cells(notebook)) + 1)
    )


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_notebook_is_stored_with_the_outputs_of_one_clean_run(path):
    notebook = nbformat.read(path, as_version=4)
    cells = code_cells(notebook)
    counts = [cell.execution_count for cell in cells]
    rerun = f"run `python notebooks/execute.py {path.relative_to(REPO)}` and commit the result"
    assert counts == list(range(1, len(cells) + 1)), (
        f"{path.name}: execution counts {counts}, expected 1..{len(cells)} (every code cell "
        f"run once, top to bottom, in a fresh kernel): {rerun}"
    )
    for index, cell in enumerate(notebook.cells):
        errors = [out for out in cell.get("outputs", []) if out.output_type == "error"]
        assert not errors, f"{path.name}: cell {index} is stored with an error: {rerun}"
    assert sum(len(cell.outputs) for cell in cells) > 0, f"{path.name}: no outputs: {rerun}"
    text = path.read_text(encoding="utf-8")
    assert str(REPO) not in text, f"{path.name}: its outputs show this checkout's path {REPO}"
    size = path.stat().st_size
    assert size < MAX_BYTES, f"{path.name} is {size:,} bytes, expected under {MAX_BYTES:,}"


def test_kernel_environment_puts_this_checkout_first(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    env = execute.kernel_environment(tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO), "/elsewhere"]
    assert env["TINYLLM_CACHE"] == str(tmp_path)
    assert env["OPENBLAS_NUM_THREADS"] == "2"  # the caller's choice wins over the default
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    assert execute.kernel_environment(tmp_path)["OPENBLAS_NUM_THREADS"] == "1"


def test_the_script_writes_outputs_and_leaves_a_failing_notebook_alone(tmp_path, capsys):
    good, bad = tmp_path / "good.ipynb", tmp_path / "bad.ipynb"
    cells = [nbformat.v4.new_code_cell("print(6 * 7)"), nbformat.v4.new_code_cell("1 / 0")]
    nbformat.write(nbformat.v4.new_notebook(cells=cells[:1]), good)
    nbformat.write(nbformat.v4.new_notebook(cells=cells), bad)
    bad_before = bad.read_bytes()

    assert execute.main([str(good), str(bad)]) == 1
    (cell,) = nbformat.read(good, as_version=4).cells
    assert cell.execution_count == 1
    assert cell.outputs[0].text == "42\n"
    assert bad.read_bytes() == bad_before
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_the_script_names_a_path_that_is_not_a_notebook(tmp_path, capsys):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a notebook")
    with pytest.raises(SystemExit):
        execute.main([str(text_file)])
    assert (
        "notes.txt' is not a notebook file (expected an existing .ipynb)" in capsys.readouterr().err
    )
