"Pruning and splitting beyond the tutorials: the tidy rule on many random cuts, and counterfactual datasets end to end."
import random
import re

import pytest

from leaf_nb.core import remove_spans, validate_examples
from leaf_nb.pruning import clean_spans, counterfactuals, set_prune, span_prune
from leaf_nb.splitting import segment_rows, split_points, split_response
from leaf_nb.world import WorldConfig, make_examples


def _word_spans(text):
    return [[m.start(), m.end()] for m in re.finditer(r"\S+", text)]


@pytest.mark.parametrize("family", ["math", "code"])
def test_tidy_rule_on_random_cuts(family):
    "Cutting random runs of whole tokens never leaves doubled spaces, blank lines, or a line/text starting with a mark."
    rng = random.Random(0)
    for r in make_examples(family, 200, seed=3):
        words = _word_spans(r["instruction"])
        i = rng.randrange(len(words)); j = min(len(words), i + rng.randint(1, 4))
        out = remove_spans(r["instruction"], [[words[i][0], words[j - 1][1]]])
        assert "  " not in out and "\n\n" not in out and out == out.strip()
        for line in out.split("\n"):
            assert not re.match(r"^[.,;:!?]", line), (r["instruction"], out)
        assert not re.search(r"[.,;:!?] [.,;:!?]", out.replace("( )", "")), (r["instruction"], out)


def test_span_and_set_agree_for_one_span():
    text = "Tom has 5 pens . His dog is 3 . He buys 2 more ."
    assert set_prune(text, [[17, 31]]) == span_prune(text, [[17, 31]])[0] == "Tom has 5 pens . He buys 2 more ."


def test_clean_spans_notes_and_snapping():
    text = "Zoë has 4 cups . Her friend has 9 hats ."
    offs = _word_spans(text)
    spans, notes = clean_spans([[18, 20], [17, 27], [32, 35]], text, offs, "row 'z'")
    assert spans == [[17, 27], [32, 38]]
    assert any("merged" in n for n in notes) and any("snapped" in n for n in notes)


def test_counterfactual_ids_are_unique_and_validate():
    rows = make_examples("math", 30, seed=1)
    spans = {r["id"]: {"instruction": r["confounder_spans"] + [[0, 3]]} for r in rows if r["confounder_spans"]}
    ds, rep = counterfactuals(rows, spans, strategy="both")
    assert len(set(ds["id"])) == len(ds)
    assert rep["original"] == 30 and rep["originals_without_spans"] == 30 - len(spans)
    assert rep["set"] == len(spans) and rep["span"] == 2 * len(spans)
    # counterfactual rows are valid examples again (they can go through detection or training)
    validate_examples([{k: r[k] for k in ("id", "instruction", "response", "answer", "target_start", "meta")} for r in ds])


def test_segment_rows_feed_counterfactuals():
    rows = [r for r in make_examples("math", 40, seed=2, cfg=WorldConfig().eval_task) if r["response_confounder_spans"]][:3]
    assert rows
    segs = segment_rows(rows, 3)
    for s in segs:
        assert s["response"][s["target_start"]:].strip()
    spans = {s["id"]: {"response": s["response_confounder_spans"]} for s in segs
             if s["response_confounder_spans"] and s["response_confounder_spans"][0][1] <= s["target_start"]}
    assert spans, "some segment has its restated distractor in its context"
    ds, rep = counterfactuals(segs, spans, strategy="span")
    pruned = [r for r in ds if r["kind"] == "span"]
    assert len(pruned) == len(spans) and all(r["level"] == "response" for r in ds)
    by_id = {s["id"]: s for s in segs}
    for r in pruned:
        parent = by_id[r["parent_id"]]
        assert r["response"][r["target_start"]:] == parent["response"][parent["target_start"]:]
        assert "not asked" not in r["response"][:r["target_start"]]


def test_bad_k_and_spans():
    with pytest.raises(ValueError, match="k must be an integer"): split_points("a b", True)
    with pytest.raises(ValueError, match="k must be an integer"): segment_rows([], -1)
    with pytest.raises(ValueError, match="outside the text"): clean_spans([[-1, 2]], "abc")
    assert split_response("x", 3) == ["x"]


def test_clause_unit_and_verification_records_must_match():
    "Clause snapping takes a flag's whole sentence; counterfactuals refuse verification records made for other text."
    text = "Tom has 5 pens . His friend has 8 hats . He finds 2 more . How many pens does Tom have ?"
    row = {"id": "r", "instruction": text, "response": "answer : 7", "answer": "7"}
    eight = text.index("8")
    ds, _ = counterfactuals([row], {"r": {"instruction": [[eight, eight + 1]]}}, unit="clause")
    assert ds[1]["instruction"] == "Tom has 5 pens . He finds 2 more . How many pens does Tom have ?"
    word, _ = counterfactuals([row], {"r": {"instruction": [[eight, eight + 1]]}}, unit="word")
    assert word[1]["instruction"] == "Tom has 5 pens . His friend has hats . He finds 2 more . How many pens does Tom have ?"
    rec = {"id": "r::span0", "instruction": ds[1]["instruction"], "response_context": "", "kept": False, "reason": "student_wrong"}
    kept, counts = counterfactuals([row], {"r": {"instruction": [[eight, eight + 1]]}}, unit="clause", verification=[rec])
    assert kept["kind"] == ["original"] and counts["dropped_student_wrong"] == 1 and counts["span"] == 0
    with pytest.raises(ValueError, match="no verification record for its text"):
        counterfactuals([row], {"r": {"instruction": [[eight, eight + 1]]}}, unit="word", verification=[rec])
    with pytest.raises(ValueError, match="unit must be one of"):
        counterfactuals([row], {}, unit="sentence")
