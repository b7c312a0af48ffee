"""What ``pip install -e .`` brings must be what the library imports.

Every third-party module imported anywhere in ``tinyllm/`` is declared in ``setup.cfg``:
in ``install_requires`` when it is imported at the top of a module (or by a command the
README's first lines run, such as ``tinyllm grade``), else in an extra, imported inside the
function that needs it so that a plain install still imports every module.
"""

import ast
import configparser
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"cupy": "cupy-cuda12x", "cupyx": "cupy-cuda12x", "llama_cpp": "llama-cpp-python"}
# optional with a fallback written beside the import: used when present, never required
OPTIONAL = {"scipy"}


def declared():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")

    def names(text):
        return {
            re.split(r"[<>=!~\[; ]", line.strip())[0] for line in text.splitlines() if line.strip()
        }

    required = names(parser["options"]["install_requires"])
    extras = {key: names(value) for key, value in parser["options.extras_require"].items()}
    return required, extras


def imports():
    """{(top-level module, file, at module level)} for every third-party import."""
    found = set()
    for path in sorted((ROOT / "tinyllm").rglob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top not in sys.stdlib_module_names and top != "tinyllm":
                    found.add((top, path.relative_to(ROOT).as_posix(), id(node) in top_level))
    return found


def test_every_import_is_declared_and_extras_are_imported_lazily():
    required, extras = declared()
    in_extras = set().union(*extras.values())
    for module, path, at_top in imports():
        dist = DISTRIBUTIONS.get(module, module)
        if module in OPTIONAL:
            continue
        assert dist in required | in_extras, f"{path} imports {module}, which setup.cfg lacks"
        if at_top:
            assert dist in required, f"{path} imports {module} at the top, but it is only an extra"


def test_grading_runs_on_a_plain_install():
    """``tinyllm grade`` runs pytest: a plain install must bring it, not only ``dev``."""
    required, _ = declared()
    graders = {module for module, path, _ in imports() if path.startswith("tinyllm/grading/")}
    assert "pytest" in graders
    assert graders <= required
