"""The grader cannot be fooled: the reference scores 100%, untouched stubs score 0, a
partly solved exercise file earns exactly the points of what it solved, and a file that
imports the answers instead of writing them is rejected and scores 0."""

import ast
import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from tinyllm.functional import elementwise
from tinyllm.grading.guard import check_module, check_source
from tinyllm.grading.rules import RULES
from tinyllm.infer import speculative
from tinyllm.tokenizer import bpe

EXERCISES = Path(__file__).resolve().parent.parent / "exercises"


def run_grade(path, tmp_path, *flags):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tinyllm.cli", "grade", str(path), "--json", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text()), proc.stdout


@pytest.fixture(scope="module")
def stub_results(tmp_path_factory):
    return run_grade(EXERCISES, tmp_path_factory.mktemp("stubs"))


def test_reference_solutions_score_full_marks(tmp_path):
    results, stdout = run_grade(EXERCISES, tmp_path, "--solutions")
    assert results["max_score"] > 0
    assert results["score"] == results["max_score"]
    assert all(t["status"] == "passed" for t in results["tests"])
    assert "(100%)" in stdout


def test_untouched_stubs_score_zero(stub_results):
    results, stdout = stub_results
    assert results["max_score"] > 0
    assert results["score"] == 0
    assert all(t["status"] == "failed" for t in results["tests"])
    assert "(0%)" in stdout


def test_results_json_has_the_gradescope_fields(stub_results):
    results, _ = stub_results
    assert {"score", "tests", "visibility", "execution_time"} <= set(results)
    for t in results["tests"]:
        assert {"name", "number", "score", "max_score", "status", "output"} <= set(t)
    names = [t["name"] for t in results["tests"]]
    assert len(names) == len(set(names)), "each graded test needs a distinct name"
    stub_messages = [t["output"] for t in results["tests"] if t["number"] == "0.1"]
    assert any("Exercise 0.1" in m for m in stub_messages)


def test_partly_solved_file_earns_only_its_points(tmp_path, stub_results):
    work = tmp_path / "exercises"
    shutil.copytree(EXERCISES, work, ignore=shutil.ignore_patterns("__pycache__"))
    stub = work / "ex00_autograd.py"
    text = stub.read_text()
    solved = text.replace(
        'raise NotImplementedError("Exercise 0.1: implement Mul.backward")',
        "a, b = ctx.saved\n        return grad * b, grad * a",
    )
    assert solved != text
    stub.write_text(solved)

    results, _ = run_grade(work, tmp_path, "-k", "ex00")  # the other sets: the stubs' zero
    earned = {t["number"] for t in results["tests"] if t["status"] == "passed"}
    assert earned == {"0.1"} and {t["number"][:2] for t in results["tests"]} == {"0."}
    full = sum(t["max_score"] for t in stub_results[0]["tests"] if t["number"] == "0.1")
    assert results["score"] == pytest.approx(full)


def test_missing_exercises_folder_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "tinyllm.cli", "grade", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert "no exercises at" in proc.stderr and "nowhere" in proc.stderr


def test_score_table_is_the_last_thing_printed(stub_results):
    _, stdout = stub_results
    lines = stdout.rstrip().splitlines()
    header = next(i for i, line in enumerate(lines) if "tinyllm grade (exercises)" in line)
    assert any(line.startswith("FAILED") for line in lines[:header])  # pytest's, above
    assert not any("FAILED" in line or " failed" in line for line in lines[header:])
    assert re.fullmatch(r"total\s+0 / \d+ \(0%\)", lines[-2]), lines[-2:]
    assert lines[-1].startswith("wrote ")  # --json's note, after the table


CHEATS = {
    # star import of the reference answers: caught in the source
    "ex00_autograd.py": "from tinyllm.grading.solutions.ex00_autograd import *\n",
    # the library's own BPE functions, re-exported: caught in the source
    "ex01_tokenization.py": (
        "from tinyllm.tokenizer.bpe import encode_with_merges, get_stats, merge\n"
        "from tinyllm.tokenizer.bpe import train_naive as train_bpe\n"
    ),
    # the answers fetched by pickle from bytes the source check does not read: caught at run time
    "ex02_attention.py": (
        "import pickle\n\n\n"
        "def _answer(name):\n"
        '    return pickle.loads(b"ctinyllm.grading.solu" + b"tions.ex02_attention\\n"'
        ' + name.encode() + b"\\n.")\n\n\n'
        "apply_rotary = _answer('apply_rotary')\n"
        "causal_attention = _answer('causal_attention')\n"
        "repeat_kv = _answer('repeat_kv')\n"
        "grouped_query_attention = _answer('grouped_query_attention')\n"
        "rope_score = _answer('rope_score')\n"
    ),
}
REASONS = {
    "0": "rejected: ex00_autograd.py imports tinyllm.grading.solutions on line 1: the reference",
    "1": "rejected: ex01_tokenization.py imports tinyllm.tokenizer.bpe.encode_with_merges on line 1",
    "2": "rejected: ex02_attention.py imports tinyllm.grading.solutions at run time: the reference",
}


def test_a_file_that_imports_the_answers_scores_zero(tmp_path):
    work = tmp_path / "exercises"
    shutil.copytree(EXERCISES, work, ignore=shutil.ignore_patterns("__pycache__"))
    for name, source in CHEATS.items():
        (work / name).write_text(source)

    results, stdout = run_grade(work, tmp_path, "-k", "ex00 or ex01 or ex02")
    assert results["max_score"] > 0 and results["score"] == 0
    assert {t["number"].split(".")[0] for t in results["tests"]} == set(REASONS)
    for t in results["tests"]:
        assert t["status"] == "failed"
        assert t["output"].startswith(REASONS[t["number"].split(".")[0]]), t["output"]
    table = stdout[stdout.index("tinyllm grade (exercises)") :]
    assert all(reason in table for reason in REASONS.values())
    assert all(reason in results["output"] for reason in REASONS.values())


TRICKS = [
    ("ex00_autograd", "import tinyllm.grading.solutions.ex00_autograd as s", "grading.solutions"),
    ("ex00_autograd", "from tinyllm.grading import solutions", "grading.solutions"),
    (
        "ex00_autograd",
        "from tinyllm import grading",
        "imports tinyllm.grading on line 1: the grader",
    ),
    (
        "ex00_autograd",
        "import importlib\nimportlib.import_module('tinyllm.grading.solutions')",
        "grading.solutions",
    ),
    (
        "ex00_autograd",
        "import importlib as il\nil.import_module('.solutions', 'tinyllm.grading')",
        "grading.solutions",
    ),
    (
        "ex00_autograd",
        "s = __import__('tinyllm.grading.solutions', fromlist=['x'])",
        "grading.solutions",
    ),
    (
        "ex00_autograd",
        "x = 'tinyllm.grading.solutions.ex00_autograd'",
        "names tinyllm.grading.solutions",
    ),
    (
        "ex00_autograd",
        "x = '../tinyllm/grading/solutions/ex00_autograd.py'",
        "names tinyllm.grading.solutions",
    ),
    (
        "ex00_autograd",
        "import tinyllm\nt = tinyllm\nMul = t.functional.elementwise.Mul",
        "uses tinyllm.functional.elementwise.Mul",
    ),
    (
        "ex00_autograd",
        "from tinyllm import functional as F\nu = F.elementwise.unbroadcast",
        "uses tinyllm.functional.elementwise",
    ),
    (
        "ex00_autograd",
        "import tinyllm.functional.reduce as R\nSum = getattr(R, 'Sum')",
        "uses tinyllm.functional.reduce.Sum",
    ),
    (
        "ex00_autograd",
        "from tinyllm import *\nM = functional.elementwise.Mul",
        "uses tinyllm.functional.e",
    ),
    ("ex00_autograd", "from tinyllm.functional import *", "imports tinyllm.functional."),
    (
        "ex00_autograd",
        "from tinyllm.functional.softmax import Softmax",
        "imports tinyllm.functional.softmax",
    ),
    (
        "ex01_tokenization",
        "from tinyllm.tokenizer import train_naive as train_bpe",
        "tinyllm.tokenizer.bpe.train_naive",
    ),
    (
        "ex01_tokenization",
        "import tinyllm as t\nmerge = t.tokenizer.bpe.merge",
        "uses tinyllm.tokenizer.bpe.merge",
    ),
    (
        "ex02_attention",
        "from tinyllm.functional import apply_rope",
        "(that is tinyllm.functional.rope.apply_rope)",
    ),
    (
        "ex02_attention",
        "from tinyllm import functional as F\na = F.scaled_dot_product_attention",
        "tinyllm.functional.attention",
    ),
    (
        "ex03_moe",
        "from tinyllm.nn import MoE",
        "tinyllm.nn.MoE (that is tinyllm.nn.moe.MoE) on line 1: library code",
    ),
    (
        "ex04_pretraining",
        "import tinyllm.optim as o\ncosine_lr = o.warmup_cosine",
        "imports tinyllm.optim",
    ),
    (
        "ex04_pretraining",
        "from tinyllm.functional import cross_entropy",
        "tinyllm.functional.softmax.cross_entropy",
    ),
    (
        "ex05_kv_cache_and_sampling",
        "from tinyllm.infer import keep_top_p as top_p_filter",
        "(that is tinyllm.infer.sampling.keep_top_p)",
    ),
    (
        "ex05_kv_cache_and_sampling",
        "from tinyllm.infer import KVCache",
        "(that is tinyllm.nn.kv_cache.KVCache)",
    ),
    (
        "ex05_kv_cache_and_sampling",
        "from tinyllm import functional as F\na = F.scaled_dot_product_attention",
        "tinyllm.functional.attention",
    ),
    (
        "ex05_kv_cache_and_sampling",
        "import tinyllm\nf = tinyllm.nn.attention.CausalSelfAttention",
        "uses tinyllm.nn.attention.CausalSelfAttention",
    ),
    (
        "ex05_kv_cache_and_sampling",
        "import tinyllm.infer.generate as g",
        "imports tinyllm.infer.generate",
    ),
    (
        "ex07_serving",
        "from tinyllm.nn.paged_kv_cache import BlockAllocator",
        "imports tinyllm.nn.paged_kv_cache.BlockAllocator",
    ),
    (
        "ex07_serving",
        "import tinyllm.nn as n\nslot = n.paged_kv_cache.PagedBatch._prepare",
        "uses tinyllm.nn.paged_kv_cache",
    ),
    (
        "ex07_serving",
        "from tinyllm.infer import engine\nstep = engine.Engine.step",
        "tinyllm.infer.engine",
    ),
    (
        "ex08_supervised_fine_tuning",
        "from tinyllm.tokenizer import format_chat",
        "(that is tinyllm.tokenizer.chat.format_chat)",
    ),
    (
        "ex08_supervised_fine_tuning",
        "from tinyllm.tokenizer import Tokenizer\nformat_chat = Tokenizer.format_chat",
        "uses tinyllm.tokenizer.Tokenizer.format_chat",
    ),
    (
        "ex08_supervised_fine_tuning",
        "from tinyllm.recipes import sft\npack_examples = sft.pack",
        "(that is tinyllm.data.sft.pack)",
    ),
    (
        "ex08_supervised_fine_tuning",
        "import tinyllm.train.sft as s\nmask = s.document_mask",
        "imports tinyllm.train.sft",
    ),
    (
        "ex06_speculative_decoding",
        "from tinyllm.infer import speculative\nrule = speculative.accept_or_resample",
        "imports tinyllm.infer.speculative",
    ),
    (
        "ex06_speculative_decoding",
        "import tinyllm.infer.generate as g\nf = g.speculative_stream",
        "(that is tinyllm.infer.speculative.speculative_stream)",
    ),
    (
        "ex09_preference_tuning",
        "from tinyllm.train.preference import dpo_loss_from_logps",
        "imports tinyllm.train.preference.dpo_loss_from_logps",
    ),
    (
        "ex09_preference_tuning",
        "from tinyllm import functional as F\nf = F.log_sigmoid",
        "(that is tinyllm.functional.activations.log_sigmoid)",
    ),
    (
        "ex09_preference_tuning",
        "import tinyllm.functional as F\nlp = F.log_softmax",
        "tinyllm.functional.softmax.log_softmax",
    ),
    (
        "ex09_preference_tuning",
        "from tinyllm.models.reward import RewardModel\nf = RewardModel.forward",
        "imports tinyllm.models.reward.RewardModel",
    ),
    (
        "ex09_preference_tuning",
        "from tinyllm.recipes.dpo import dpo_loss",
        "imports tinyllm.recipes.dpo",
    ),
    (
        "ex10_lora",
        "from tinyllm.nn import LoRALinear\nmerge = LoRALinear.merge",
        "(that is tinyllm.nn.lora_layer.LoRALinear)",
    ),
    (
        "ex10_lora",
        "import tinyllm.nn.lora as L\nsummary = L.lora_summary",
        "imports tinyllm.nn.lora",
    ),
    (
        "ex10_lora",
        "from tinyllm.models import adapters\nf = adapters.lora_tensors",
        "tinyllm.models.adapters",
    ),
    (
        "ex11_distillation",
        "from tinyllm.train.distill import kl_loss",
        "imports tinyllm.train.distill.kl_loss",
    ),
    (
        "ex11_distillation",
        "from tinyllm.train import distill\nf = distill.distillation_loss",
        "tinyllm.train.distill",
    ),
    (
        "ex11_distillation",
        "import tinyllm.functional as F\nq = F.softmax",
        "uses tinyllm.functional.softmax",
    ),
    (
        "ex11_distillation",
        "from tinyllm.recipes.distill import distill_loss",
        "imports tinyllm.recipes.distill",
    ),
    (
        "ex12_quantization",
        "from tinyllm.quant.formats import to_ggml",
        "imports tinyllm.quant.formats.to_ggml",
    ),
    (
        "ex12_quantization",
        "from tinyllm.quant import dequantize",
        "(that is tinyllm.quant.formats.dequantize)",
    ),
    (
        "ex12_quantization",
        "from tinyllm.quant import awq\nsearch = awq.search_scale",
        "tinyllm.quant.awq",
    ),
    (
        "ex12_quantization",
        "import tinyllm.quant.linear as q\nf = q.QuantizedLinear",
        "imports tinyllm.quant.linear",
    ),
    (
        "ex13_gpus_and_scale",
        "from tinyllm.analysis import inference_flops_per_token",
        "imports tinyllm.analysis.inference_flops_per_token",
    ),
    (
        "ex13_gpus_and_scale",
        "from tinyllm import analysis\nf = analysis.kv_cache_bytes",
        "uses tinyllm.analysis.kv_cache_bytes",
    ),
    (
        "ex13_gpus_and_scale",
        "from tinyllm.train.sharding import split_axes",
        "imports tinyllm.train.sharding.split_axes",
    ),
    (
        "ex13_gpus_and_scale",
        "from tinyllm.train import sharding\nf = sharding.layout_summary",
        "tinyllm.train.sharding",
    ),
    (
        "ex13_gpus_and_scale",
        "from tinyllm.quant import formats\nbits = formats.quantize",
        "imports tinyllm.quant.formats",
    ),
    (
        "ex13_gpus_and_scale",
        "from tinyllm.models.weights import _f32_to_bf16",
        "imports tinyllm.models.weights._f32_to_bf16",
    ),
    (
        "ex13_gpus_and_scale",
        "from tinyllm.functional.attention import query_blocks",
        "imports tinyllm.functional.attention.query_blocks",
    ),
    (
        "ex13_gpus_and_scale",
        "import tinyllm.functional as F\nf = F.scaled_dot_product_attention",
        "tinyllm.functional.attention",
    ),
    ("ex02_attention", "exec(open('answers.py').read())", "runs code from a string (exec)"),
    (
        "ex02_attention",
        "import importlib\nimportlib.import_module('tinyllm.' + 'nn')",
        "imports a computed name",
    ),
    (
        "ex02_attention",
        "import sys\nF = sys.modules['tinyllm.functional']",
        "uses sys.modules on line 2: a back door",
    ),
    ("ex02_attention", "import runpy", "imports runpy"),
    (
        "ex02_attention",
        "from importlib.util import spec_from_file_location",
        "imports importlib.util",
    ),
    (
        "ex02_attention",
        "import tinyllm\nd = tinyllm.__dict__",
        "reaches for code through tinyllm.__dict__",
    ),
    (
        "ex02_attention",
        "import tinyllm\nf = getattr(tinyllm, 'func' + 'tional')",
        "computed attribute of tinyllm",
    ),
    ("ex02_attention", "f = __builtins__['__import__']", "uses builtins"),
]


@pytest.mark.parametrize("name, source, reason", TRICKS)
def test_the_source_check_catches_imports_of_the_answers(name, source, reason):
    found = check_source(source, name)
    assert found is not None and found.startswith(f"{name}.py "), found
    assert reason in found, found


FAIR = [
    ("ex00_autograd", "from tinyllm.autograd import Function, Tensor"),
    ("ex00_autograd", "import tinyllm.functional.reduce as R\naxes = R.normalize_axes"),
    ("ex00_autograd", "from tinyllm.functional import reduce\naxes = reduce.normalize_axes"),
    ("ex00_autograd", "from tinyllm import *\nt = Tensor"),
    ("ex01_tokenization", "from tinyllm.data import load_corpus"),
    (
        "ex02_attention",
        "import numpy as np\nfrom tinyllm import Tensor, no_grad\nf = getattr(np, 'exp')",
    ),
    ("ex02_attention", "import numpy as np\nname = 'sum'\nf = getattr(np, name)"),
    ("ex02_attention", "from tinyllm import functional as F\np = F.softmax"),
    ("ex03_moe", "from tinyllm.nn import Linear\nimport tinyllm.functional as F\nF.softmax"),
    ("ex04_pretraining", "import math\nimport numpy as np\nfrom tinyllm import Tensor"),
    ("ex04_pretraining", "def f(x):\n    return x  # tinyllm.optim.adamw has one too"),
    (
        "ex05_kv_cache_and_sampling",
        "import numpy as np\nfrom tinyllm import functional as F\ns = F.softmax",
    ),
    ("ex05_kv_cache_and_sampling", "from tinyllm.analysis import kv_cache_bytes"),
    (
        "ex07_serving",
        "from collections import deque\nimport numpy as np\nfrom tinyllm.infer import KVCache",
    ),
    ("ex06_speculative_decoding", "import numpy as np\nfrom tinyllm.infer import draw, generate"),
    (
        "ex08_supervised_fine_tuning",
        "import numpy as np\nfrom tinyllm.tokenizer import Tokenizer\nencode = Tokenizer.encode",
    ),
    ("ex08_supervised_fine_tuning", "from tinyllm.data.tasks import task_examples"),
    (
        "ex09_preference_tuning",
        "import numpy as np\nfrom tinyllm import Tensor\nfrom tinyllm import functional as F\ne = F.exp",
    ),
    ("ex09_preference_tuning", "from tinyllm.models import Transformer, get_preset"),
    ("ex10_lora", "import numpy as np\nfrom tinyllm.nn import Linear, Module, Parameter"),
    (
        "ex11_distillation",
        "import numpy as np\nfrom tinyllm import Tensor\nfrom tinyllm import functional as F\nz = F.exp",
    ),
    ("ex11_distillation", "from tinyllm.data.tasks import task_examples"),
    ("ex12_quantization", "import numpy as np\nfrom tinyllm import Tensor"),
    ("ex12_quantization", "from tinyllm.nn import Linear"),
    ("ex13_gpus_and_scale", "import numpy as np\nfrom tinyllm.analysis import parameter_count"),
    ("ex13_gpus_and_scale", "from tinyllm import analysis\ncount = analysis.parameter_count"),
    ("ex13_gpus_and_scale", "from tinyllm.models import ModelConfig, get_preset"),
]


@pytest.mark.parametrize("name, source", FAIR)
def test_the_source_check_allows_what_an_exercise_may_use(name, source):
    assert check_source(source, name) is None


@pytest.mark.parametrize("path", sorted(EXERCISES.glob("ex*.py")), ids=lambda p: p.stem)
def test_each_stub_passes_and_defines_what_its_rules_grade(path):
    assert check_source(path.read_text(), path.stem) is None
    tree = ast.parse(path.read_text())
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert defined == set(RULES[path.stem].writes)
    solutions = importlib.import_module(f"tinyllm.grading.solutions.{path.stem}")
    assert set(solutions.__all__) == defined


def test_the_run_time_check_wants_the_graded_names_written_in_the_file(tmp_path):
    path = tmp_path / "ex01_tokenization.py"
    path.write_text("def get_stats(ids, counts=None, weight=1):\n    return {}\n")
    module = types.ModuleType("tinyllm_exercise_ex01_tokenization")
    exec(compile(path.read_text(), str(path), "exec"), vars(module))
    assert check_module(module, path, "ex01_tokenization") is None

    module.merge = bpe.merge  # found some way the source check missed
    reason = check_module(module, path, "ex01_tokenization")
    assert reason == (
        "ex01_tokenization.py: merge comes from tinyllm.tokenizer.bpe.merge, "
        "not from ex01_tokenization.py"
    )

    class Mul(elementwise.Mul):  # subclassing the answer: written "here", but not really
        pass

    Mul.__module__ = "tinyllm_exercise_ex00_autograd"
    module = types.ModuleType("tinyllm_exercise_ex00_autograd")
    module.Mul = Mul
    reason = check_module(module, tmp_path / "ex00_autograd.py", "ex00_autograd")
    assert reason == (
        "ex00_autograd.py: Mul comes from tinyllm.functional.elementwise.Mul, "
        "not from ex00_autograd.py"
    )


# --- set 06: a rule that looks right but changes the distribution scores nothing ---------------
def load_grading_tests(name):
    """The grading test module ``exercises/name.py``, to call its tests with a chosen answer."""
    spec = importlib.util.spec_from_file_location(f"grading_{name}", EXERCISES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():  # the exercise marker is registered by the grading plugin
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        spec.loader.exec_module(module)
    return module


def speculative_rule(accept_prob, replacement, bonus_row=lambda k: k):
    """An accept/resample rule with its three parts swappable: ``accept_prob(p_x, q_x)``,
    ``replacement(p_i, q_i)`` (the distribution after a rejection), the bonus row of p."""

    def rule(proposed, draft_probs, target_probs, rng):
        for i, token in enumerate(proposed):
            p, q = target_probs[i], draft_probs[i]
            if rng.random() >= accept_prob(p[token], q[token]):
                return i, int(rng.choice(len(p), p=replacement(p, q)))
        k = len(proposed)
        return k, int(rng.choice(target_probs.shape[1], p=target_probs[bonus_row(k)]))

    return rule


RESIDUAL = speculative.residual_distribution
WRONG_RULES = {
    "replacement-from-p": speculative_rule(lambda p, q: min(1, p / q), lambda p, q: p),
    "keep-with-p": speculative_rule(lambda p, q: p, RESIDUAL),
    "keep-where-p-above-q": speculative_rule(lambda p, q: float(p >= q), RESIDUAL),
    "bonus-from-the-last-proposal": speculative_rule(
        lambda p, q: min(1, p / q), RESIDUAL, lambda k: max(k - 1, 0)
    ),
}
STATISTICAL_TESTS = [
    "test_accept_or_resample_gives_the_target_distribution",
    "test_accept_or_resample_has_the_rounds_exact_law",
]


def test_the_speculative_grading_passes_a_rule_drawing_its_own_way():
    grading = load_grading_tests("test_ex06_speculative_decoding")
    right = types.SimpleNamespace(
        accept_or_resample=speculative_rule(lambda p, q: min(1, p / q), RESIDUAL)
    )  # the rule, with rng.choice where tinyllm draws by inverse CDF: other numbers, same law
    for name in STATISTICAL_TESTS + ["test_accept_or_resample_greedy"]:
        getattr(grading, name)(lambda _: right)


@pytest.mark.parametrize("wrong", WRONG_RULES)
def test_the_speculative_grading_fails_a_rule_that_changes_the_distribution(wrong):
    grading = load_grading_tests("test_ex06_speculative_decoding")
    module = types.SimpleNamespace(accept_or_resample=WRONG_RULES[wrong])
    for name in STATISTICAL_TESTS:
        with pytest.raises(AssertionError):
            getattr(grading, name)(lambda _: module)


def test_the_chi_square_tail_of_the_speculative_grading_is_scipys():
    stats = pytest.importorskip("scipy.stats")
    p_value = load_grading_tests("test_ex06_speculative_decoding").chi_square_p_value
    rng = np.random.default_rng(0)
    for cells in range(2, 12):
        expected = rng.uniform(5, 50, cells)
        for observed in (expected, rng.poisson(expected), rng.poisson(expected * 1.5)):
            want = stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue
            got = p_value(observed, expected * observed.sum() / expected.sum())
            assert got == pytest.approx(want, rel=1e-9, abs=1e-300)
    assert p_value([30, 10, 0], [20, 20, 0]) > 0  # a cell of probability 0 must stay empty
    assert p_value([30, 0, 10], [20, 20, 0]) == 0.0
