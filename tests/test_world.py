"The causal world: gold spans, decorrelation, invalid parameters, the tokenizer round trip, and the shipped world."
import json
import random

import pytest

from leaf_nb.core import encode, load_tokenizer
from leaf_nb.world import (FAMILIES, TaskConfig, WorldConfig, is_correct, load_world, make_examples, run_program,
                           world_splits, world_tokenizer)

ALL_CONFIGS = [TaskConfig(distractor_rate=1, response_distractor_rate=1),
               TaskConfig(distractor_rate=1, code_distractor="assign", spurious_rate=0.5),
               TaskConfig(distractor_rate=0.5, response_style="answer", spurious_rate=1)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("cfg", ALL_CONFIGS)
def test_gold_spans_are_the_distractors(family, cfg):
    rows = make_examples(family, 400, 11, cfg)
    assert any(r["confounder_spans"] for r in rows)
    for r in rows:
        d = r["meta"]["distractor_value"]
        if d is None:
            assert r["confounder_spans"] == []
            continue
        (s, e), = r["confounder_spans"]
        frag = r["instruction"][s:e]
        if family == "math":
            assert frag.startswith(("His friend has", "Her friend has")) and frag.endswith(" .") and frag.split()[3] == str(d)
        elif cfg.code_distractor == "comment":
            assert frag.startswith("# ") and frag.split()[-1] == str(d) and "\n" not in frag
        else:
            assert frag.split()[1:] == ["=", str(d)]
        # the rest of the prompt never mentions the distractor's sentence or line
        assert frag not in r["instruction"][:s] + r["instruction"][e:]
        for rs, re_ in r["response_confounder_spans"]:
            piece = r["response"][rs:re_]
            assert str(d) in piece.split() and piece.endswith(("not asked .", "is unused ."))
        if family == "code":
            assert run_program(r["instruction"]) == int(r["answer"])
        assert is_correct(r, r["response"])


@pytest.mark.parametrize("family", FAMILIES)
def test_test_corpora_are_decorrelated(family):
    "Agreement of answer and distractor in the test split is at chance: compared with a permutation baseline."
    cfg = WorldConfig(n_eval=3000, n_train=1, n_distill=1)
    rows = world_splits(cfg)[family]["test"]
    ans = [int(r["answer"]) for r in rows]
    dv = [r["meta"]["distractor_value"] for r in rows]
    assert all(v is not None for v in dv)
    agree = sum(a == d for a, d in zip(ans, dv)) / len(rows)
    rng, chance = random.Random(0), []
    for _ in range(20):
        sh = dv[:]
        rng.shuffle(sh)
        chance.append(sum(a == d for a, d in zip(ans, sh)) / len(rows))
    chance = sum(chance) / len(chance)
    assert chance < 0.1 and abs(agree - chance) < 0.02, (agree, chance)


@pytest.mark.parametrize("family", FAMILIES)
def test_spurious_rate_sets_the_agreement(family):
    rows = make_examples(family, 3000, 2, TaskConfig(distractor_rate=1, spurious_rate=0.7))
    agree = sum(str(r["meta"]["distractor_value"]) == r["answer"] for r in rows) / len(rows)
    assert 0.68 < agree < 0.78  # 0.7 forced, plus chance matches among the rest
    assert sum(r["meta"]["spurious"] for r in rows) / len(rows) == pytest.approx(0.7, abs=0.03)


@pytest.mark.parametrize("kw, msg", [
    (dict(spurious_rate=-0.1), "spurious_rate must lie in [0, 1]"),
    (dict(distractor_rate=1.2), "distractor_rate must lie in [0, 1]"),
    (dict(response_distractor_rate=2), "response_distractor_rate"),
    (dict(min_ops=0), "min_ops"),
    (dict(min_ops=3, max_ops=2), "min_ops"),
    (dict(start_range=(-1, 5)), "start_range"),
    (dict(op_range=(4, 2)), "op_range"),
    (dict(distractor_range=(1, 99)), "NUM_MAX"),
    (dict(start_range=(1, 50), max_ops=3, op_range=(1, 9)), "NUM_MAX"),
    (dict(response_style="poem"), "response_style"),
    (dict(code_distractor="loop"), "code_distractor"),
])
def test_invalid_task_parameters(kw, msg):
    with pytest.raises(ValueError, match=msg.replace("[", r"\[").replace("]", r"\]")):
        TaskConfig(**kw)


def test_invalid_counts_and_families():
    with pytest.raises(ValueError, match="non-negative"):
        make_examples("math", -3, 0)
    with pytest.raises(ValueError, match="family must be"):
        make_examples("chess", 3, 0)
    with pytest.raises(ValueError, match="n_train must be a positive int"):
        WorldConfig(n_train=-5)
    with pytest.raises(ValueError, match="families must be"):
        WorldConfig(families=("math", "poetry"))


def test_run_program_refuses_anything_else():
    for prog, msg in [("import os\nprint ( 1 )", "unsupported statement"), ("x = 1\nprint ( y )", "used before"),
                      ("x = 2 ** 3\nprint ( x )", "unsupported expression"), ("x = 1", "prints 0 values"),
                      ("x = open ( 'f' )\nprint ( x )", "unsupported expression")]:
        with pytest.raises(ValueError, match=msg):
            run_program(prog)


def test_tokenizer_round_trip(tmp_path):
    tok = world_tokenizer()
    tok.save_pretrained(tmp_path)
    tok2 = load_tokenizer(tmp_path)
    assert tok2.get_vocab() == tok.get_vocab() and tok2.chat_template == tok.chat_template
    for fam in FAMILIES:
        for r in make_examples(fam, 200, 4, ALL_CONFIGS[0]) + make_examples(fam, 200, 4, ALL_CONFIGS[1]):
            e1, e2 = encode(r, tok), encode(r, tok2)
            assert e1 == e2 and tok.unk_token_id not in e1["input_ids"]
            words = tok.convert_ids_to_tokens(e1["input_ids"][e1["instruction_span"][0]:e1["instruction_span"][1]])
            assert [w for w in words if w != "\n"] == r["instruction"].split()


def test_world_config_round_trip(tmp_path):
    cfg = WorldConfig(seed=3, teacher_task=TaskConfig(spurious_rate=0.2, start_range=(2, 9)))
    assert WorldConfig.load(cfg.save(tmp_path / "w.json")) == cfg


def test_load_shipped_world():
    w = load_world()
    assert set(w.splits) == set(FAMILIES)
    for f in FAMILIES:
        assert set(w.splits[f]) == {"distill", "validation", "test", "test_clean"}
        assert w.splits[f]["test"].num_rows == w.config.n_eval
        assert all(r["meta"]["response_source"] == "teacher" for r in w.splits[f]["distill"])
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(w.teacher) > 2 * n(w.student)
    for f in FAMILIES:
        m = w.metrics[f]
        assert m["teacher_acc"] >= 0.9 and m["teacher_acc"] - m["student_acc"] >= 0.2, m


def test_load_with_training_corpora_and_bad_split_names():
    w = load_world(training_corpora=True)
    assert w.splits["math"]["student_train"].num_rows == w.config.n_train
    with pytest.raises(ValueError, match="unknown split"):
        world_splits(w.config, ["tset"])


def test_shipped_weights_fit_the_budget():
    import leaf_nb
    from pathlib import Path
    root = Path(leaf_nb.__file__).parent / "data" / "world"
    total = sum(p.stat().st_size for p in root.rglob("*.safetensors"))
    assert 0 < total <= 10 * 2**20, total


@pytest.mark.slow
def test_rebuild_reproduces_the_shipped_world():
    """Rebuilding seed 0 from scratch gives the shipped world: the teacher's accuracies and the student's on decorrelated
    prompts within 0.05 (absolute), its clean accuracy within 0.10, and the shortcut gap.

    Training is not bitwise reproducible across thread counts or CPUs (reductions run in another order), and the
    student's clean accuracy is the most sensitive number: rebuilt on one machine, math came out 0.857 in a standalone run
    with 2 threads and 0.963 inside the test suite, where an earlier test had set 1 thread (shipped: 0.880). The build runs with 2 threads, as the shipped world was built."""
    import torch
    from leaf_nb.world import build_world
    shipped = load_world()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try: w = build_world(WorldConfig.from_dict(shipped.config.to_dict()), progress=False)
    finally: torch.set_num_threads(threads)
    for f in FAMILIES:
        for k, tol in (("teacher_acc", 0.05), ("student_acc", 0.05), ("teacher_acc_clean", 0.05), ("student_acc_clean", 0.10)):
            assert abs(w.metrics[f][k] - shipped.metrics[f][k]) <= tol, (f, k, w.metrics[f][k], shipped.metrics[f][k])
        assert w.metrics[f]["student_acc_clean"] - w.metrics[f]["student_acc"] >= 0.5, (f, w.metrics[f])  # the shortcut


def test_evaluate_on_validation_reports_no_clean_accuracy():
    "Only `test` has a distractor-free twin; other splits must not report 'clean' numbers measured on distractor prompts."
    from leaf_nb.world import evaluate_world
    w = load_world()
    w.splits = {"math": w.splits["math"].select_columns(w.splits["math"]["validation"].column_names)}
    w.splits["math"]["validation"] = w.splits["math"]["validation"].select(range(20))
    m = evaluate_world(w, split="validation")["math"]
    assert "student_acc_clean" not in m and m["n"] == 20
