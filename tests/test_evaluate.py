"""Evaluation beyond the notebook's examples: generation with a budget, math-verify on and off the main thread, code
checking (HumanEval, program output), bootstrap intervals, Table 1 reports, Jaccard and Fig. 10 frames, bad input."""
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch

from leaf_nb.core import generate, toy_tokenizer
from leaf_nb.evaluate import (AccuracyCI, accuracy_ci, accuracy_table, check_answers, check_humaneval,
                              check_program_output, extract_code, generate_responses, humaneval_problems,
                              humaneval_program, jaccard, jaccard_frame, jaccard_summary, markdown_table, math_correct,
                              report_table, unit_set)
from leaf_nb.sandbox import SandboxConfig
from leaf_nb.world import is_correct, load_world, remove_gold

torch.set_num_threads(1)
logging.getLogger("math_verify").setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def world():
    return load_world()


@pytest.fixture(scope="module")
def problems():
    return humaneval_problems()


# ---------------------------------------------------------------- generation

def test_generate_responses_matches_core_and_flags_the_budget(world):
    rows = list(world.splits["math"]["test"])[:20] + list(world.splits["code"]["test"])[:20]
    for model in (world.student, world.teacher):
        full = generate_responses(model, world.tokenizer, rows, max_new_tokens=48, batch_size=7)
        assert full["response"] == generate(model, world.tokenizer, rows, max_new_tokens=48, batch_size=7)
        assert not any(full["hit_limit"])
        n_tok = [len(world.tokenizer(r, add_special_tokens=False)["input_ids"]) for r in full["response"]]
        assert full["n_new_tokens"] == n_tok  # word-level tokenizer: the count is exact
    cut = generate_responses(world.teacher, world.tokenizer, rows, max_new_tokens=5, batch_size=16)
    assert all(cut["hit_limit"]) and cut["n_new_tokens"] == [5] * len(rows)
    assert [len(r.split()) for r in cut["response"]] == [5] * len(rows)


# ---------------------------------------------------------------- math

MATH_CASES = [
    ("The answer is $\\boxed{\\frac{1}{2}}$.", "0.5", True),
    ("\\boxed{0.50}", "\\frac{1}{2}", True),
    ("so the total is 1,234 dollars", "1234", True),
    ("Natalia sold 48/2 = 24 clips in May. 48 + 24 = 72", "Natalia sold ... #### 72", True),
    ("x = 3 or x = 5, so the larger is 5", "5", True),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True),
    ("\\boxed{(-\\infty, 2)}", "(-\\infty,2)", True),
    ("\\boxed{x^2 + 2x + 1}", "(x+1)^2", True),
    ("The answer is 73.", "72", False),
    ("\\boxed{\\frac{1}{3}}", "0.33", False),
    ("I do not know.", "72", False),
    ("   ", "72", False),
]


@pytest.mark.parametrize("response, gold, expected", MATH_CASES)
def test_math_correct(response, gold, expected):
    assert math_correct(response, gold) is expected


def test_math_correct_off_the_main_thread():
    "math-verify's signal timeout only works on the main thread; off it we pass None and get the same verdicts."
    responses, golds, expected = zip(*MATH_CASES)
    with ThreadPoolExecutor(2) as ex:
        assert list(ex.map(math_correct, responses, golds)) == list(expected)


def test_math_gold_must_be_readable():
    for gold, msg in [("", "non-empty"), ("#### ", "non-empty"), (None, "non-empty string"), ("$$", "cannot read")]:
        with pytest.raises(ValueError, match=msg): math_correct("1", gold)


# ---------------------------------------------------------------- code

def test_extract_code():
    assert extract_code("no fences") == "no fences"
    assert extract_code("```\nx = 1\n```") == "x = 1\n"
    assert extract_code("a\n```python\nx = 1\n```\nb\n```python3\ny = 2\n```\nc") == "y = 2\n"
    assert extract_code("```python\ndef f():\n    return 1") == "def f():\n    return 1"  # cut off by the budget
    assert extract_code("inline ```print(1)``` code") == "print(1)"


def test_humaneval_canonical_solutions_pass(problems):
    ids = [f"HumanEval/{i}" for i in range(0, 164, 8)]
    with ThreadPoolExecutor(2) as ex:
        rs = list(ex.map(lambda k: check_humaneval(problems[k], problems[k]["canonical_solution"]), ids))
    assert [r.status for r in rs] == ["passed"] * len(ids), [(k, r.reason) for k, r in zip(ids, rs) if not r.passed]


def test_humaneval_completion_styles(problems):
    p = problems["HumanEval/2"]  # truncate_number
    whole = f"Sure:\n```python\n{p['prompt']}{p['canonical_solution']}```\nDone."
    assert check_humaneval(p, whole).passed
    assert check_humaneval(p, "def truncate_number(number: float) -> float:\n    return number % 1.0\n").passed
    assert check_humaneval(p, "    return number").reason == "exit code 1: AssertionError"
    assert check_humaneval(p, "    return number +").status == "error"  # syntax error
    assert check_humaneval(p, "    while True: pass", timeout=1).status == "timeout"
    assert check_humaneval(p, "    import os; os.system('echo hi')").reason == "blocked os.system"
    prog = humaneval_program(p, "    return number % 1.0\n")
    assert prog.startswith(p["prompt"]) and prog.endswith("check(truncate_number)\n")
    with pytest.raises(ValueError, match="lacks field"): humaneval_program({"task_id": "x", "prompt": ""}, "")


def test_check_program_output(world):
    rows = list(world.splits["code"]["test"])[:30]
    with ThreadPoolExecutor(2) as ex:
        rs = list(ex.map(lambda r: check_program_output(r["instruction"], r["answer"]), rows))
    assert all(r.passed for r in rs)
    r = check_program_output("print(41)", "42")
    assert (r.status, r.reason) == ("failed", "printed '41', expected '42'")
    assert check_program_output("```python\nprint(input())\n```", "hi", stdin="hi\n").passed
    assert check_program_output("raise SystemExit(2)", "").reason == "exit code 2"


def test_check_answers(world, problems):
    rows = list(world.splits["math"]["test"])[:10]
    student = generate(world.student, world.tokenizer, rows, max_new_tokens=48)
    assert check_answers(rows, student, "world") == [is_correct(r, s) for r, s in zip(rows, student)]
    assert check_answers(rows, student, kind="math") == check_answers(rows, student, "world")  # 'answer : N' reads as N
    p = problems["HumanEval/0"]
    assert check_answers([p] * 3, [p["canonical_solution"], "    return None", "    while 1: pass"], "humaneval",
                         config=SandboxConfig(timeout=1), max_workers=3) == [True, False, False]
    assert check_answers([{"answer": "6"}, {"answer": "6"}], ["print(2 * 3)", "print(7)"], "program") == [True, False]
    with pytest.raises(ValueError, match="examples and responses must have the same length, got 10 and 9"):
        check_answers(rows, student[:9], "world")
    with pytest.raises(ValueError, match="kind must be one of"): check_answers(rows, student, "poetry")
    assert check_answers([], [], "humaneval") == []


# ---------------------------------------------------------------- accuracy and reports

def test_accuracy_ci_is_seeded_and_matches_row_resampling():
    x = [True] * 30 + [False] * 70
    a, b, c = accuracy_ci(x, n_boot=50, seed=1), accuracy_ci(x, n_boot=50, seed=1), accuracy_ci(x, n_boot=50, seed=2)
    assert a == b and a != c and a.low <= 0.3 <= a.high and a.n == 100
    rng = np.random.default_rng(0)  # the explicit bootstrap over rows gives the same interval
    means = np.asarray(x, float)[rng.integers(0, 100, (20000, 100))].mean(1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    big = accuracy_ci(x, n_boot=20000)
    assert abs(big.low - lo) <= 0.011 and abs(big.high - hi) <= 0.011
    assert accuracy_ci(np.array([1, 0, 1, 1])).acc == 0.75
    assert accuracy_ci([False] * 9) == AccuracyCI(0.0, 0.0, 0.0, 9)


@pytest.mark.parametrize("bad, msg", [([], "non-empty"), ([1, 2], r"correct\[1\] = 2"), ([0.5], r"correct\[0\] = 0.5"),
                                      ([True, None], r"correct\[1\] = None")])
def test_accuracy_ci_bad_input(bad, msg):
    with pytest.raises(ValueError, match=msg): accuracy_ci(bad)


def table1_results():
    rng = np.random.default_rng(0)
    bench = {"gsm8k": 0.6, "math": 0.3, "humaneval": 0.4, "leetcode": 0.2}
    return {m: {b: list(rng.random(200) < p + shift) for b, p in bench.items()}
            for m, shift in [("Pre-KD", 0.0), ("KD w/o mask", 0.05), ("LeaF", 0.1)]}


def test_report_table_has_table1_shape():
    res = table1_results()
    tidy = accuracy_table(res, {"math": ["gsm8k", "math"], "code": ["humaneval", "leetcode"]}, n_boot=500)
    assert list(tidy.columns) == ["method", "benchmark", "group", "acc", "low", "high", "n"] and len(tidy) == 3 * 6
    assert (tidy.low <= tidy.acc).all() and (tidy.acc <= tidy.high).all()
    wide = report_table(tidy)
    assert list(wide.index) == ["Pre-KD", "KD w/o mask", "LeaF"]
    assert list(wide.columns) == ["gsm8k", "math", "math avg", "humaneval", "leetcode", "code avg"]
    for m in wide.index:
        assert wide.loc[m, "math"] == pytest.approx(100 * np.mean(res[m]["math"]))
        assert wide.loc[m, "code avg"] == pytest.approx(wide.loc[m, ["humaneval", "leetcode"]].mean())
    cis = report_table(tidy, ci=True, digits=1)
    assert cis.loc["LeaF", "gsm8k"].startswith(f"{wide.loc['LeaF', 'gsm8k']:.1f} [")
    assert accuracy_table(res, n_boot=500, seed=3).equals(accuracy_table(res, n_boot=500, seed=3))
    # benchmarks outside any group come last
    assert list(report_table(accuracy_table(res, {"code": ["humaneval"]}, n_boot=50)).columns) == \
        ["humaneval", "code avg", "gsm8k", "math", "leetcode"]


def test_markdown_table():
    df = pd.DataFrame({"gsm8k": [44.291, 50.0], "note": ["a|b", "ok"]}, index=pd.Index(["Pre-KD", "LeaF"], name="method"))
    assert markdown_table(df) == ("| method | gsm8k | note |\n|---|---:|---|\n"
                                  "| Pre-KD | 44.29 | a\\|b |\n| LeaF | 50.00 | ok |")
    assert markdown_table(df, digits=0).splitlines()[2] == "| Pre-KD | 44 | a\\|b |"


# ---------------------------------------------------------------- Jaccard and Fig. 10

def test_jaccard_words_and_tokens():
    bpe = toy_tokenizer(None)
    assert jaccard("the cat sat", "the cat ran") == 2 / 4
    assert jaccard("", "") == 1.0 and jaccard(" \n", "\t") == 1.0 and jaccard("", "x") == 0.0 and jaccard("x", "") == 0.0
    assert unit_set("", "token", bpe) == set() and unit_set(" ", "token", bpe) == set()
    a, b = "unbelievable results", "believable result"
    assert jaccard(a, b) == 0.0 and jaccard(a, b, "token", bpe) > 0.0  # subword tokens overlap where words do not
    assert unit_set(a, "token", bpe) == set(bpe(a, add_special_tokens=False)["input_ids"])
    assert bpe.bos_token_id not in unit_set(a, "token", bpe)
    with pytest.raises(ValueError, match="needs a tokenizer"): jaccard("a", "b", "token")
    with pytest.raises(ValueError, match="must be a string"): jaccard("a", 3)


def test_jaccard_frame_and_summary():
    ids = ["a", "b", "c"]
    frame = jaccard_frame(ids, ["answer : 1", "", "answer : 3"], ["answer : 2", "answer : 2", ""],
                          {"teacher": ["answer : 2", "answer : 2", ""], "gold": ["answer : 2", "", "answer : 3"]},
                          tokenizer=toy_tokenizer(None))
    assert len(frame) == 3 * 2 * 2 * 2
    assert set(frame.prompt_kind) == {"original", "pruned"} and set(frame.unit) == {"word", "token"}
    got = frame[(frame.unit == "word") & (frame.reference_kind == "gold")].set_index(["id", "prompt_kind"]).jaccard
    assert got["a", "original"] == 0.5 and got["a", "pruned"] == 1.0
    assert got["b", "original"] == 1.0 and got["b", "pruned"] == 0.0  # both empty / one empty
    s = jaccard_summary(frame)
    assert list(s.columns) == ["mean", "median", "n"] and (s.n == 3).all()
    assert s.loc[("teacher", "word", "pruned"), "mean"] == 1.0
    with pytest.raises(ValueError, match="ids and pruned must have the same length, got 3 and 2"):
        jaccard_frame(ids, ["x"] * 3, ["y"] * 2, {"gold": ["z"] * 3})
    with pytest.raises(ValueError, match=r"ids and references\['teacher'\] must have the same length, got 3 and 4"):
        jaccard_frame(ids, ["x"] * 3, ["y"] * 3, {"teacher": ["z"] * 4})
    assert jaccard_frame([], [], [], {"gold": []}).empty


def test_fig10_on_the_world_rises_after_pruning(world):
    "On the instances of Fig. 1 (student wrong, teacher right), pruning the gold spans raises the mean Jaccard."
    rows = list(world.splits["math"]["test"])[:100] + list(world.splits["code"]["test"])[:100]
    orig = generate(world.student, world.tokenizer, rows, max_new_tokens=48, batch_size=256)
    pruned = generate(world.student, world.tokenizer, [remove_gold(r) for r in rows], max_new_tokens=48, batch_size=256)
    teacher = generate(world.teacher, world.tokenizer, rows, max_new_tokens=48, batch_size=256)
    sub = [i for i, r in enumerate(rows) if not is_correct(r, orig[i]) and is_correct(r, teacher[i])]
    assert len(sub) > 100
    pick = lambda xs: [xs[i] for i in sub]
    frame = jaccard_frame(pick([r["id"] for r in rows]), pick(orig), pick(pruned),
                          {"teacher": pick(teacher), "gold": pick([r["response"] for r in rows])})
    mean = jaccard_summary(frame)["mean"]
    for ref in ("teacher", "gold"):
        assert mean[ref, "word", "pruned"] > mean[ref, "word", "original"] + 0.03


def test_declared_answer_kind_registers_on_first_use():
    "An answer kind declared as an entry point ('world') works without importing its module first."
    import subprocess, sys
    code = ("import sys; from leaf_nb.evaluate import answer_check, answer_kinds\n"
            "assert 'world' in answer_kinds() and 'leaf_nb.world' not in sys.modules\n"
            "assert answer_check('world')({'answer': '3'}, 'answer : 3') and 'leaf_nb.world' in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
