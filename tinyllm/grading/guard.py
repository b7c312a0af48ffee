"""What an exercise file may use: never the reference answers, nor the library code it asks for.

Without a guard, an exercise file that says ``from tinyllm.grading.solutions.ex00_autograd
import *`` passes every test. So an exercise file is checked twice:

- before it runs, its source is read with ``ast``. Every tinyllm name it reaches - by
  ``import``, ``from ... import``, ``importlib.import_module("...")``, ``__import__``,
  ``getattr(module, "name")``, a dotted name such as ``tinyllm.functional.softmax``, or a
  variable bound to any of these - is looked up where it really lives (a re-export is
  followed to its home) and checked against the file's entry in ``RULES`` (``rules.py``).
  Code run from a string (``exec``, ``eval``) and imports of names computed at run time are
  refused outright;
- after it runs, each name its tests grade must be defined in the file itself: a function
  whose code sits in another file, or a class whose methods do, is somebody else's answer.

A file that fails either check is rejected: all its exercises score 0, and the reason says
which line did it.

>>> check_source("from tinyllm.grading.solutions.ex00_autograd import *", "ex00_autograd")
'ex00_autograd.py imports tinyllm.grading.solutions on line 1: the reference answers'
>>> print(check_source("import numpy as np\\nfrom tinyllm import Tensor", "ex02_attention"))
None
>>> check_source("import tinyllm as t\\nmerge = t.tokenizer.bpe.merge", "ex01_tokenization")
'ex01_tokenization.py uses tinyllm.tokenizer.bpe.merge on line 2: library code this file asks you to write'
"""

import ast
import functools
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

from .rules import RULES, Rules

GRADER_PACKAGE = "tinyllm.grading"
SOLUTIONS_PACKAGE = "tinyllm.grading.solutions"
SOLUTIONS_DIR = Path(__file__).resolve().parent / "solutions"

IMPORTERS = {"__import__", "builtins.__import__", "importlib.__import__", "importlib.import_module"}
RUNS_STRINGS = {"exec", "eval", "compile", "builtins.exec", "builtins.eval", "builtins.compile"}
BACK_DOORS = {
    "builtins",
    "importlib.machinery",
    "importlib.reload",
    "importlib.util",
    "runpy",
    "sys.modules",
}
DOTTED = re.compile(r"tinyllm(\.[A-Za-z_]\w*)+")
SOLUTIONS_PATH = re.compile(r"grading[./\\]+solutions")


class Rejected(Exception):
    """An exercise file that uses the answers instead of writing them."""


def load_exercise(path, name):
    """Check, run and check again the exercise file ``path``; return it as a module.

    Raises ``Rejected`` with the reason when the file uses what it should write.
    """
    path = Path(path)
    reason = check_source(path.read_text(encoding="utf-8"), name)
    if reason:
        raise Rejected(reason)
    spec = importlib.util.spec_from_file_location(f"tinyllm_exercise_{name}", path)
    module = importlib.util.module_from_spec(spec)
    before = set(sys.modules)
    spec.loader.exec_module(module)
    reason = _imported_solutions(set(sys.modules) - before, path)
    reason = reason or check_module(module, path, name)
    if reason:
        raise Rejected(reason)
    return module


# --- before it runs: the source ---------------------------------------------------------------
def check_source(source, name):
    """Why the exercise file ``name``.py with this ``source`` is rejected, or None.

    >>> check_source("from tinyllm.autograd import Function", "ex00_autograd") is None
    True
    >>> check_source("from tinyllm.functional import elementwise", "ex00_autograd")
    'ex00_autograd.py imports tinyllm.functional.elementwise on line 1: library code this file asks you to write'
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None  # the file fails to load, and every test with it
    rules = RULES.get(name, Rules())
    aliases = _aliases(tree)
    for line, verb, ref in sorted(_references(tree, aliases), key=lambda r: r[0]):
        if ref is None:
            return f"{name}.py {verb} on line {line}: write the code out instead"
        if any(_under(ref, door) for door in BACK_DOORS):
            return f"{name}.py {verb} {ref} on line {line}: a back door to imported code"
        found = off_limits(ref, rules)
        if found:
            shown, why = found
            return f"{name}.py {verb} {shown} on line {line}: {why}"
    return None


def off_limits(ref, rules):
    """``(name to show, why)`` if the dotted name ``ref`` is off limits under ``rules``, else None.

    >>> off_limits("tinyllm.nn.MoE", RULES["ex03_moe"])   # a re-export, followed to its home
    ('tinyllm.nn.MoE (that is tinyllm.nn.moe.MoE)', 'library code this file asks you to write')
    >>> print(off_limits("tinyllm.nn.Linear", RULES["ex03_moe"]))
    None
    """
    if ref.split(".")[0] != "tinyllm":
        return None
    if _under(ref, GRADER_PACKAGE):  # decided as written: never import the answers to look
        return _grader_part(ref)
    where = _home(ref) or ref
    if _under(where, GRADER_PACKAGE):
        return _grader_part(where)
    if any(_under(where, prefix) for prefix in rules.off_limits) and not _given(where, rules):
        shown = ref if where == ref else f"{ref} (that is {where})"
        return shown, "library code this file asks you to write"
    return None


def _grader_part(name):
    if _under(name, SOLUTIONS_PACKAGE):
        return SOLUTIONS_PACKAGE, "the reference answers"
    return name, "the grader itself"


def _under(name, prefix):
    return name == prefix or name.startswith(prefix + ".")


def _given(name, rules):
    """A given name, or a module that holds one (reaching inside it is checked on its own)."""
    return any(g == name or g.startswith(name + ".") for g in rules.given)


@functools.lru_cache(maxsize=None)
def _home(ref):
    """Where the object named ``ref`` is defined (``module.qualname``), or None if unknown."""
    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:  # not a module (or not importable): try the shorter prefix
            continue
        for attr in parts[i:]:
            try:
                obj = getattr(obj, attr)
            except Exception:
                return None
        return _qualified(obj)
    return None


def _qualified(obj):
    if inspect.ismodule(obj):
        return obj.__name__
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}.{qualname}"
    return None


def _aliases(tree):
    """Each name the file binds to a dotted name: ``import a.b as x``, ``x = a.b``, ..."""
    aliases = {}
    for _ in range(3):  # x = tinyllm; y = x.nn: a few rounds reach chains of assignments
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        aliases[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        aliases[top] = top
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for a in node.names:
                    names = _public_names(node.module) if a.name == "*" else [a.name]
                    for n in names:
                        aliases[a.asname or n] = f"{node.module}.{n}"
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value:
                ref = _dotted(node.value, aliases)
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if ref and isinstance(target, ast.Name):
                        aliases[target.id] = ref
    return aliases


def _dotted(node, aliases):
    """The dotted name an expression stands for (``F.softmax`` -> ``tinyllm.functional.softmax``)."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id)
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    if isinstance(node, ast.Call):
        callee = _callee(node.func, aliases)
        if callee in IMPORTERS:
            return _imported_name(node)
        if callee in ("getattr", "builtins.getattr") and len(node.args) >= 2:
            base, attr = _dotted(node.args[0], aliases), _constant(node.args[1])
            return f"{base}.{attr}" if base and attr else None
    return None


def _callee(func, aliases):
    if isinstance(func, ast.Name) and func.id not in aliases:
        return func.id  # a builtin: __import__, getattr, exec
    return _dotted(func, aliases)


def _constant(node):
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _imported_name(call):
    """The module an ``import_module``/``__import__`` call names, or None if computed."""
    args = {i: a for i, a in enumerate(call.args)} | {k.arg: k.value for k in call.keywords}
    name = _constant(args.get(0, args.get("name")))
    if name is None:
        return None
    package = _constant(args.get(1, args.get("package"))) if name.startswith(".") else None
    try:
        return importlib.util.resolve_name(name, package) if name.startswith(".") else name
    except (ImportError, ValueError):
        return None


def _references(tree, aliases):
    """``(line, verb, dotted name)`` for each name the file reaches; name None: refused outright."""
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name) and node.id == "__builtins__":
            yield line, "uses", "builtins"
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield line, "imports", a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for a in node.names:  # the names first: the most telling reason
                names = _public_names(node.module) if a.name == "*" else [a.name]
                for n in names:
                    yield line, "imports", f"{node.module}.{n}"
            yield line, "imports", node.module
        elif isinstance(node, ast.Attribute):
            ref = _dotted(node, aliases)
            if ref and ref.startswith("tinyllm") and node.attr == "__dict__":
                yield line, f"reaches for code through {ref}", None
            elif ref:
                yield line, "uses", ref
        elif isinstance(node, ast.Call):
            callee = _callee(node.func, aliases)
            if callee in RUNS_STRINGS:
                yield line, f"runs code from a string ({callee})", None
            elif callee in IMPORTERS:
                ref = _imported_name(node)
                yield (line, "imports", ref) if ref else (line, "imports a computed name", None)
            elif callee in ("getattr", "builtins.getattr") and len(node.args) >= 2:
                ref, base = _dotted(node, aliases), _dotted(node.args[0], aliases) or ""
                if ref:
                    yield line, "uses", ref
                elif base.startswith("tinyllm"):
                    yield line, f"reads a computed attribute of {base} (getattr)", None
            elif callee in ("vars", "builtins.vars") and node.args:
                ref = _dotted(node.args[0], aliases)
                if ref and ref.startswith("tinyllm"):
                    yield line, f"reaches for code through vars({ref})", None
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if DOTTED.fullmatch(node.value):
                yield line, "names", node.value
            elif SOLUTIONS_PATH.search(node.value):
                yield line, "names", SOLUTIONS_PACKAGE


def _public_names(module_name):
    """The names ``from module import *`` binds (none for a module that does not import)."""
    if _under(module_name, GRADER_PACKAGE) or module_name.split(".")[0] != "tinyllm":
        return []  # the module itself is reported; never import the answers to look inside
    try:
        module = importlib.import_module(module_name)
    except Exception:
        return []
    names = getattr(module, "__all__", None)
    return list(names) if names is not None else [n for n in vars(module) if not n[0] == "_"]


# --- after it runs: the graded names ----------------------------------------------------------
def _imported_solutions(new_modules, path):
    """Why loading ``path`` is rejected if it brought in the reference answers, else None."""
    for module_name in sorted(new_modules, key=len, reverse=True):
        module_file = getattr(sys.modules.get(module_name), "__file__", None) or ""
        if _under(module_name, SOLUTIONS_PACKAGE) or Path(module_file).parent == SOLUTIONS_DIR:
            return f"{path.name} imports {SOLUTIONS_PACKAGE} at run time: the reference answers"
    return None


def check_module(module, path, name):
    """Why the loaded exercise ``module`` (from ``path``) is rejected, or None.

    Each name the tests grade must be written in the file: a function whose code is in
    another file, or a class with such a method or an off-limits base, is not.
    """
    rules = RULES.get(name, Rules())
    for attr in rules.writes:
        obj = getattr(module, attr, None)
        if obj is None:
            continue  # missing: its tests fail on their own
        origin = _defined_elsewhere(obj, module, path, rules)
        if origin is None:
            continue
        if _under(origin, SOLUTIONS_PACKAGE) or SOLUTIONS_DIR.as_posix() in origin:
            return f"{path.name} imports {SOLUTIONS_PACKAGE}: the reference answers ({attr} is {origin})"
        return f"{path.name}: {attr} comes from {origin}, not from {path.name}"
    return None


def _defined_elsewhere(obj, module, path, rules):
    """Where ``obj`` comes from, if not from ``path``; None when the file defines it."""
    if inspect.isclass(obj):
        if obj.__module__ != module.__name__:
            return _qualified(obj) or repr(obj)
        for base in obj.__mro__[1:]:
            home = _qualified(base) or ""
            if base.__module__ != module.__name__ and off_limits(home, rules):
                return home
        for member in vars(obj).values():
            func = getattr(member, "__func__", getattr(member, "fget", member))
            if inspect.isfunction(func) and func.__code__.co_filename != str(path):
                return _qualified(func) or func.__code__.co_filename
        return None
    if inspect.isfunction(obj):
        if obj.__code__.co_filename == str(path):
            return None
        return _qualified(obj) or obj.__code__.co_filename
    if callable(obj):
        return _qualified(obj) or type(obj).__name__
    return None
