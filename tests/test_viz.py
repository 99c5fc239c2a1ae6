"""Visualisation beyond the notebook's examples: hostile tokens and well-formed HTML, bad input, headless plotting,
eager attention on models that cannot switch or return nothing, the attention-mass definition on controlled models,
widget callbacks without a browser, and the tutorial notebook rendered in headless Chromium (slow)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from leaf_nb.core import toy_model, toy_tokenizer
from leaf_nb.evaluate import jaccard_frame
from leaf_nb.saliency import ThresholdRule, detect
from leaf_nb.world import is_correct
from leaf_nb.viz import (AttentionMaps, attention_comparison_plot, attention_heatmap, attention_mass, attention_summary,
                         attention_weights, attention_widget, compare_attention, detection_heatmap, detection_scores,
                         detection_widget, eager_attention, example_attention, figure_html, html_page, jaccard_plot,
                         masking_bars, mass_matrix, query_key_plot, render_attention, render_detection, saliency_bars,
                         tau_curves, token_heatmap, visible_token)

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world():
    from leaf_nb.world import load_world
    return load_world()


@pytest.fixture(scope="module")
def detected(world, tmp_path_factory):
    rows = list(world.splits["math"]["test"])[:40]
    det = detect(world.teacher, world.student, world.tokenizer, rows, tmp_path_factory.mktemp("det"), check=is_correct, progress=False)
    return det, rows


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------- HTML: escaping and structure

class _DOM(HTMLParser):
    "Start tags with attributes, text per element, and a check that every element is closed."
    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.tags, self.stack, self.texts = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID: self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack.pop() == tag, f"unbalanced </{tag}>"

    def handle_data(self, data):
        if data.strip(): self.texts.append((self.stack[-1] if self.stack else None, data))


def _dom(s):
    p = _DOM(); p.feed(s); p.close()
    assert not p.stack, f"unclosed {p.stack}"
    return p


NASTY = ["<s>", "</s>", "\n", "\t", " ", "", "<script>alert(1)</script>", '" onmouseover="alert(1)', "' onclick='x",
         "&amp;", "&lt;", "</td></tr></table>", "<!--", "-->", "]]>", "{{x}}", "\x00", "\x1b[31m", "\u200b", "\u202e",
         "🙂", "Δĝ", "\\n", "javascript:alert(1)", "<img src=x onerror=alert(1)>", "%3Cscript%3E"]


def test_hostile_tokens_stay_text_in_a_well_formed_table():
    n = len(NASTY)
    html = token_heatmap(NASTY, {"<b>teacher</b>": np.arange(n), 'x" y="': np.linspace(1, 0, n)}, flags=[i % 3 == 0 for i in range(n)],
                         gold=[i % 4 == 0 for i in range(n)], title="<script>t</script>", width=7, return_html=True)
    dom = _dom(html)
    assert {t for t, _ in dom.tags} <= {"div", "table", "tr", "th", "td", "span"}
    assert all(set(a) <= {"class", "title", "style"} for _, a in dom.tags)
    assert not any(a.get("style", "").count("url(") or "expression(" in a.get("style", "") for _, a in dom.tags)
    tds = [a for t, a in dom.tags if t == "td"]
    assert len(tds) == 3 * n  # token row and two score rows
    shown = [d for tag, d in dom.texts if tag == "td"][:7]  # the first block's token row
    assert shown == [visible_token(t) for t in NASTY[:7]]
    assert sum("leaf-flagged" in a.get("class", "") for a in tds) == sum(i % 3 == 0 for i in range(n))
    assert sum("leaf-gold" in a.get("class", "") for a in tds) == sum(i % 4 == 0 for i in range(n))
    # every row of every block has the same number of cells
    for block in html.split("<table")[1:]:
        counts = {r.count("<td") for r in block.split("<tr>")[1:]}
        assert len(counts) == 1


def test_visible_token_makes_whitespace_and_controls_visible():
    assert visible_token("\n") == "↵" and visible_token("a b") == "a·b" and visible_token("") == "∅"
    assert visible_token("\x1b") == "\\x1b" and visible_token("\u202e") == "\\u202e"  # a right-to-left override is shown, not applied
    assert visible_token("Ġthe") == "Ġthe"  # byte-level BPE markers are the tokenizer's business


def test_heatmap_bad_input_names_the_lengths():
    with pytest.raises(ValueError, match=r"scores\['student'\] has 2 values but there are 3 tokens"):
        token_heatmap(["a", "b", "c"], {"teacher": [1, 2, 3], "student": [1, 2]})
    with pytest.raises(ValueError, match="flags has 1 values but there are 3 tokens"):
        token_heatmap(["a", "b", "c"], {"s": [1, 2, 3]}, flags=[True])
    with pytest.raises(ValueError, match="no tokens"):
        token_heatmap([], {"s": []})


def test_heatmap_displays_without_return_html(monkeypatch):
    import IPython.display
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *a, **k: shown.extend(a))
    assert token_heatmap(["<s>"], {"s": [1.0]}) is None
    assert len(shown) == 1 and "&lt;s&gt;" in shown[0].data


def test_saved_page_is_utf8_and_self_contained(tmp_path):
    frag = token_heatmap(["Δ", "\n"], {"ĝ": [0.0, 1.0]}, return_html=True)
    p = tmp_path / "h.html"
    p.write_text(html_page(frag, title="<t>"), encoding="utf-8")
    text = p.read_text(encoding="utf-8")
    assert '<meta charset="utf-8">' in text and "<title>&lt;t&gt;</title>" in text
    assert "http" not in text and "<script" not in text and "<link" not in text  # nothing to fetch, nothing to run


def test_detection_heatmap_and_rules(detected):
    det, rows = detected
    by_id = {r["id"]: r for r in rows}
    flagged = [d for d in det if d["status"] == "flagged"]
    assert flagged
    for d in flagged[:5]:
        for rule in (None, ThresholdRule("tau", tau=0.2), ThresholdRule("quantile", quantile=0.3), ThresholdRule("iqr")):
            s = detection_scores(d, by_id[d["id"]], rule)
            expect = rule(d["delta"]) if rule is not None else d["flags"]
            assert s["flags"] == [bool(f) for f in expect]
            html = detection_heatmap(d, by_id[d["id"]], rule, return_html=True)
            _dom(html)
            assert html.count("leaf-flagged") == sum(s["flags"])
    with pytest.raises(ValueError, match="only 'flagged' rows"):
        detection_scores(next(d for d in det if d["status"] != "flagged"))


# ---------------------------------------------------------------- figures, headless

def test_module_imports_neither_nbdev_nor_plotting_libraries():
    code = "import sys, leaf_nb.viz; print(sorted(m for m in ('nbdev', 'seaborn', 'ipywidgets') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_plots_work_without_a_display(tmp_path):
    code = textwrap.dedent(f"""
        import pandas as pd
        from leaf_nb.viz import masking_bars, saliency_bars
        fig, ax = saliency_bars(["<s>", "a", "\\n"], {{"t": [1, 2, 3], "s": [3, 2, 1]}}, flags=[0, 1, 0], gold=[0, 1, 1])
        fig.savefig({str(tmp_path / 'a.png')!r})
        fig, ax = masking_bars(pd.DataFrame(dict(method=["random"] * 3 + ["gradient"], value=[0.1, 0.2, 0.15, 0.3])))
        fig.savefig({str(tmp_path / 'b.png')!r})
        import matplotlib; print(matplotlib.get_backend())
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip().lower() == "agg"
    assert (tmp_path / "a.png").stat().st_size > 1000 and (tmp_path / "b.png").stat().st_size > 1000


def test_saliency_bars_draw_into_a_given_axes_and_check_lengths():
    fig, ax = plt.subplots()
    assert saliency_bars(["a", "b", "c"], {"t": [1, 2, 3], "s": [0, 0, 0]}, flags=[1, 0, 0], gold=[0, 1, 0], ax=ax) == (fig, ax)
    assert [len(c) for c in ax.containers] == [3, 3]
    assert [p.get_height() for p in ax.containers[1]] == [0, 0, 0]  # a constant series normalises to zeros, not NaN
    with pytest.raises(ValueError, match="gold has 2 values but there are 3 tokens"):
        saliency_bars(["a", "b", "c"], {"t": [1, 2, 3]}, gold=[1, 0])


def test_jaccard_plot_takes_evaluate_frames_in_both_units():
    tok = toy_tokenizer("chatml")
    ids = [f"r{i}" for i in range(6)]
    orig = ["answer: 7", "Tom has 5 apples", "", "x = 4", "answer: 8", "the answer is 8"]
    pruned = ["answer: 8", "Tom has 8 apples. answer: 8", "answer: 8", "x = 4\nanswer: 8", "answer: 8", "answer: 8"]
    frame = jaccard_frame(ids, orig, pruned, {"gold": ["answer: 8"] * 6, "teacher": ["Step 1: 5 + 3 = 8. answer: 8"] * 6}, tokenizer=tok)
    for unit in ("word", "token"):
        for kind in ("box", "violin", "hist", "ecdf"):
            fig, ax = jaccard_plot(frame, unit=unit, kind=kind)
            assert f"({unit}s; 6 instances)" in ax.get_title()
            plt.close(fig)
    with pytest.raises(ValueError, match="lacks column"):
        jaccard_plot(frame.rename(columns={"jaccard": "j"}))


def test_tau_curves_mark_the_best_tau_and_band_over_seeds():
    rng = np.random.default_rng(0)
    rows = [dict(tau=t, method=m, seed=s, value=(1 - 5 * abs(t - 0.1)) * (m == "gradient") + 0.1 * rng.random())
            for t in (0.05, 0.1, 0.2) for m in ("gradient", "random") for s in range(3)]
    fig, ax = tau_curves(pd.DataFrame(rows))
    from matplotlib.collections import PathCollection
    stars = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(stars) == 2 and stars[0].get_offsets()[0, 0] == pytest.approx(0.1)
    assert len(ax.collections) - len(stars) == 2  # one error band per method


def _error_bars(ax):
    "(low, high) of seaborn's error bars (one line per bar, caps included) that have finite ends."
    return [(np.nanmin(l.get_ydata()), np.nanmax(l.get_ydata())) for l in ax.lines if np.isfinite(l.get_ydata()).any()]


def test_masking_bars_error_bars_only_where_there_are_seeds():
    one = pd.DataFrame(dict(method=["random", "gradient", "perplexity"], value=[0.1, 0.3, 0.2]))
    fig, ax = masking_bars(one)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["gradient", "perplexity", "random"]
    assert not _error_bars(ax)
    seeds = pd.DataFrame(dict(method=["random"] * 3 + ["gradient"], value=[0.1, 0.2, 0.15, 0.3]))
    fig, ax = masking_bars(seeds, points=False)
    vertical = _error_bars(ax)
    assert len(vertical) == 1 and vertical[0] == pytest.approx((0.15 - 0.05, 0.15 + 0.05))  # ± sd over seeds


def test_attention_heatmap_accepts_arrays_tensors_and_frames():
    fig, ax = attention_heatmap(pd.DataFrame([[0.1, 0.2]], index=pd.Index([0], name="layer"), columns=pd.Index([0, 1], name="head")))
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("head", "layer")
    fig, ax = attention_heatmap(torch.eye(3), xlabels=["<s>", " a", "\n"], ylabels=list("abc"))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["<s>", "·a", "↵"]
    with pytest.raises(ValueError, match="ylabels has 2 labels but the matrix has 3"):
        attention_heatmap(np.eye(3), ylabels=["a", "b"])


# ---------------------------------------------------------------- attention

class _NoAttention(torch.nn.Module):
    "A causal LM stand-in that returns logits and no attentions (like SDPA or a fused kernel)."
    def __init__(self, vocab=10):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 4)
        self.config = SimpleNamespace(_attn_implementation="flash_attention_2")

    def forward(self, input_ids, attention_mask=None, output_attentions=False, use_cache=False):
        return SimpleNamespace(logits=self.emb(input_ids), attentions=None)


def test_a_model_without_attention_weights_gets_a_clear_error():
    m = _NoAttention()
    with pytest.raises(RuntimeError, match=r"returned no attention weights \(attention implementation 'eager'\).*attn_implementation='eager'"):
        attention_weights(m, torch.tensor([[1, 2, 3]]))  # no set_attn_implementation: the config is switched, but nothing comes back
    assert m.config._attn_implementation == "flash_attention_2"  # restored


def test_eager_attention_restores_sdpa_even_on_errors():
    tok = toy_tokenizer("chatml")
    m = toy_model(tok)
    before = m.config._attn_implementation
    assert before != "eager"
    with pytest.raises(ZeroDivisionError):
        with eager_attention(m):
            assert m.config._attn_implementation == "eager"
            1 / 0
    assert m.config._attn_implementation == before
    with pytest.raises(RuntimeError, match="eager"):
        attention_weights(m, torch.tensor([[1, 2, 3]]), eager=False)


def _row(i, n_words=6):
    "A world-vocabulary row whose confounder span is a run of 6 to 8 words in the middle of the instruction."
    prefix, words = f"Tom has {i} apples . ", " ".join(["pens"] * (i % 3 + n_words))
    return {"id": f"r{i}", "instruction": f"{prefix}{words} . How many apples ?", "response": f"answer : {i}",
            "confounder_spans": [[len(prefix), len(prefix) + len(words)]]}


@pytest.fixture(scope="module")
def world_rows():
    from leaf_nb.world import world_tokenizer
    tok = world_tokenizer()
    return tok, [_row(i) for i in range(7)]


def test_uniform_attention_has_lift_one_and_mass_by_hand(world_rows):
    tok, rows = world_rows
    flat = toy_model(tok, hidden_size=32, num_layers=3, num_heads=2, seed=1)
    for layer in flat.model.layers: torch.nn.init.zeros_(layer.self_attn.q_proj.weight)
    frame = attention_mass(flat, tok, rows, batch_size=3)
    assert frame.lift.to_numpy() == pytest.approx(np.ones(len(frame)), abs=1e-5)
    # by hand: the query at position p sees p + 1 keys, each with weight 1 / (p + 1)
    from leaf_nb.core import encode
    for r in rows[:3]:
        enc = encode(r, tok, add_eos=False)
        q = [i for i, s in enumerate(enc["source"]) if s == 2]
        n_span = sum(1 for (a, b), s in zip(enc["offsets"], enc["source"]) if s == 1 and a < r["confounder_spans"][0][1] and r["confounder_spans"][0][0] < b)
        expect = np.mean([n_span / (p + 1) for p in q])
        assert frame[frame.id == r["id"]].mass.to_numpy() == pytest.approx(np.full(6, expect), abs=1e-5)


def test_attention_mass_does_not_depend_on_batching_or_padding(world):
    rows = list(world.splits["math"]["test"])[:9] + list(world.splits["code"]["test"])[:4]
    a = attention_mass(world.teacher, world.tokenizer, rows, batch_size=1)
    b = attention_mass(world.teacher, world.tokenizer, rows, batch_size=5)
    c = attention_mass(world.teacher, world.tokenizer, rows[::-1], batch_size=13).set_index(["id", "layer", "head"]).loc[a.set_index(["id", "layer", "head"]).index]
    for col in ("mass", "context_mass", "relative", "share", "lift"):
        assert a[col].to_numpy() == pytest.approx(b[col].to_numpy(), abs=1e-5)
        assert a[col].to_numpy() == pytest.approx(c[col].to_numpy(), abs=1e-5)
    assert ((a.mass <= a.context_mass + 1e-6) & (a.context_mass <= 1 + 1e-6) & (a.mass > 0)).all()
    assert world.teacher.config._attn_implementation == "sdpa"


def test_attention_mass_bad_input(world_rows):
    tok, rows = world_rows
    m = toy_model(tok)
    n = len(rows[0]["instruction"])
    with pytest.raises(ValueError, match=rf"row 'r0': span \[0, {n + 1}\] is outside the instruction \(need 0 <= start < end <= {n}\)"):
        attention_mass(m, tok, rows[:2], spans=[[[0, n + 1]], [[0, 3]]])
    with pytest.raises(ValueError, match=r"row 'r1': span \[5, 2\] is outside"):
        attention_mass(m, tok, rows[:2], spans=[[[0, 3]], [[5, 2]]])
    with pytest.raises(ValueError, match="field 'response' is empty"):
        attention_mass(m, tok, [{**rows[0], "response": "  "}])
    with pytest.raises(ValueError, match="2 rows but 3 span lists"):
        attention_mass(m, tok, rows[:2], spans=[[[0, 3]]] * 3)
    with pytest.raises(ValueError, match="no spans to measure"):
        attention_mass(m, tok, [{**rows[0], "confounder_spans": []}])
    with pytest.raises(ValueError, match="query must be one of"):
        attention_mass(m, tok, rows[:1], query="everything")


def test_predict_queries_include_the_last_prompt_token(world_rows):
    tok, rows = world_rows
    m = toy_model(tok, seed=3)
    a = example_attention(m, tok, rows[0], query="predict")
    assert a.tokens[int(np.nonzero(a.query)[0][0])] == "<assistant>"
    assert a.query.sum() == len(tok(rows[0]["response"], add_special_tokens=False)["input_ids"])
    frame = attention_mass(m, tok, rows[:1], query="predict")
    assert frame.mass.to_numpy() == pytest.approx(a.mass().ravel(), abs=1e-5)


def test_compare_attention_summary_and_plots(world_rows):
    tok, rows = world_rows
    models = {"pre-KD": toy_model(tok, seed=1), "KD": toy_model(tok, seed=2), "LeaF": toy_model(tok, num_layers=3, seed=3)}
    frame, (fig, ax) = compare_attention(models, tok, rows, batch_size=4)
    assert list(dict.fromkeys(frame.model)) == ["pre-KD", "KD", "LeaF"]
    assert len(frame) == len(rows) * (2 + 2 + 3) * 2
    summ = attention_summary(frame)
    assert list(summ.index) == ["pre-KD", "KD", "LeaF"] and (summ.rows == len(rows)).all()
    one = frame[frame.model == "KD"].groupby("id").mass.mean().mean()
    assert summ.loc["KD", "mass"] == pytest.approx(one)
    assert [t.get_text().split(" (")[0] for t in ax.get_legend().get_texts()] == ["pre-KD", "KD", "LeaF"]
    fig, ax = attention_comparison_plot(frame, "lift")
    assert any(l.get_ydata()[0] == 1.0 for l in ax.lines if len(l.get_ydata()) == 2)  # the uniform baseline
    assert mass_matrix(frame, model="LeaF").shape == (3, 2)
    assert compare_attention({"a": models["KD"]}, tok, rows[:2], plot=False)[1] is None
    with pytest.raises(ValueError, match="models is empty"):
        compare_attention({}, tok, rows)


def test_query_key_plot_marks_the_measured_block(world_rows):
    tok, rows = world_rows
    maps = example_attention(toy_model(tok, seed=4), tok, rows[2])
    fig, ax = query_key_plot(maps, layer=1, head=0)
    boxes = [p for p in ax.patches if type(p).__name__ == "Rectangle" and not p.get_fill()]
    assert len(boxes) == 1 and boxes[0].get_width() == maps.span.sum()
    assert f"{maps.mass()[1, 0]:.3f}" in ax.get_title()


# ---------------------------------------------------------------- widgets, without a browser

def test_detection_widget_callbacks(detected):
    det, rows = detected
    w = detection_widget(det, rows, rule="quantile", tau=0.05)
    view, (pick, rule, unit, tau) = w.children[1], w.children[0].children
    flagged = [d for d in det if d["status"] == "flagged"]
    assert view.value == render_detection(flagged[0], rows[[r["id"] for r in rows].index(flagged[0]["id"])], "quantile", 0.05)
    seen = {view.value}
    for widget, value in ((tau, 0.9), (rule, "tau"), (unit, "clause"), (tau, 0.0), (pick, len(flagged) - 1)):
        widget.value = value
        assert view.value not in seen
        seen.add(view.value)
    assert flagged[-1]["id"] in view.value and "threshold 0.000" in view.value


def test_attention_widget_callbacks_compute_each_row_once(world):
    rows = list(world.splits["code"]["test"])[:3]
    calls = []
    model = world.student
    hook = model.model.layers[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        w = attention_widget(model, world.tokenizer, rows)
        view, (pick, layer, head) = w.children[1], w.children[0].children
        first = view.value
        head.value = 1; layer.value = 1
        assert view.value != first and "layer 1, head 1" in view.value
        pick.value = 1; pick.value = 0; pick.value = 1
        assert rows[1]["id"] in view.value
        assert len(calls) == 2  # rows 0 and 1, once each
    finally:
        hook.remove()
    maps = example_attention(model, world.tokenizer, rows[1])
    html = render_attention(maps, 1, 1)
    assert html == view.value and "<img" in html and "data:image/png;base64," in html


def test_figure_html_closes_pyplot_figures():
    fig, ax = plt.subplots()
    n = len(plt.get_fignums())
    s = figure_html(fig)
    assert s.startswith('<img class="leaf-figure"') and len(plt.get_fignums()) == n - 1


# ---------------------------------------------------------------- the tutorial in a real browser

def _chromium() -> str | None:
    for name in (os.environ.get("LEAF_NB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
                 "chrome", "headless_shell"):
        if name and (path := shutil.which(name)): return path
    return None


class _Page(HTMLParser):
    "Elements outside scripts (what the browser rendered), and the text of typed script blocks."
    def __init__(self):
        super().__init__()
        self.elements, self.scripts, self._script, self._in = [], [], None, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script": self._script = [a.get("type"), ""]; return
        self.elements.append((tag, a, tuple(self._in)))
        if "leaf-heatmap" in (a.get("class") or "").split() or self._in: self._in.append(tag)

    def handle_endtag(self, tag):
        if tag == "script" and self._script is not None: self.scripts.append(tuple(self._script)); self._script = None
        elif self._in and tag == self._in[-1]: self._in.pop()

    def handle_data(self, data):
        if self._script is not None: self._script[1] += data


@pytest.mark.slow
def test_tutorial_notebook_renders_in_headless_chromium(tmp_path):
    "Execute nbs/07_visualize.ipynb to HTML with nbconvert, render it in headless Chromium, and find the heatmaps in its DOM."
    browser = _chromium()
    if browser is None:
        pytest.skip("no Chromium binary found (chromium, chromium-browser, google-chrome, headless_shell, or $LEAF_NB_CHROMIUM); "
                    "install one with `apt-get install -y chromium` to run the browser check")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    t0 = time.time()
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "html", "--execute", str(ROOT / "nbs" / "07_visualize.ipynb"),
                    "--output-dir", str(tmp_path), "--output", "viz"], check=True, env=env, timeout=900, capture_output=True)
    t1 = time.time()
    page = tmp_path / "viz.html"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    print(f"nbconvert --execute: {t1 - t0:.1f} s, chromium --dump-dom: {time.time() - t1:.1f} s")
    assert "<html" in dom[:200].lower() and "</html>" in dom[-200:].lower()
    p = _Page(); p.feed(dom)
    heatmaps = [a for tag, a, _ in p.elements if tag == "div" and "leaf-heatmap" in (a.get("class") or "").split()]
    assert len(heatmaps) >= 2  # the toy example and the detected row, rendered as elements (not inside a script)
    inside = {tag for tag, _, stack in p.elements if stack}
    assert inside <= {"div", "table", "tbody", "tr", "th", "td", "span"}, inside  # no <s>, <script> or <img> from a token
    assert "&lt;script&gt;" in dom and "&lt;s&gt;" in dom and "↵" in dom
    # the widgets: their state travels with the page; the detection widget's view holds a heatmap, the attention
    # widget's an inline figure (drawing the widgets themselves needs @jupyter-widgets/html-manager from a CDN)
    state = [json.loads(s) for t, s in p.scripts if t == "application/vnd.jupyter.widget-state+json"]
    assert state, "no widget state in the page"
    values = [m["state"].get("value", "") for m in state[0]["state"].values() if m["model_name"] == "HTMLModel"]
    assert any("leaf-heatmap" in v for v in values) and any("leaf-figure" in v for v in values)
    assert sum(t == "application/vnd.jupyter.widget-view+json" for t, _ in p.scripts) >= 2
