"Encoding: offsets map every instruction and response token back to its characters, for each template style."
import random

import pytest
import torch

from leaf_nb.core import (SOURCE_INSTRUCTION, SOURCE_PAD, SOURCE_RESPONSE, encode, encode_batch, format_prompt,
                          token_mask)

WORDS = "Tom has 5 apples . His sister owns 17 pears ; x = 4 * y print ( z ) 0 123 é ü 😀 the answer is".split()


def random_text(rng, n):
    seps = [" ", " ", " ", "\n", "  ", ", "]
    return "".join(rng.choice(WORDS) + rng.choice(seps) for _ in range(n)).strip()


def covered(enc, text, source):
    """The text that `source`'s tokens cover. Byte-level tokenizers split a multi-byte character into several
    tokens with the same offsets, so overlapping ranges are merged; starts must never go backwards."""
    ranges = [(s, e) for (s, e), src in zip(enc["offsets"], enc["source"]) if src == source]
    assert all(0 <= s < e <= len(text) for s, e in ranges)
    assert all(a[0] <= b[0] for a, b in zip(ranges, ranges[1:]))
    chars = sorted({i for s, e in ranges for i in range(s, e)})
    return "".join(text[i] for i in chars)


@pytest.mark.parametrize("style", ["chatml", "llama3", None])
@pytest.mark.parametrize("system_prompt", [None, "You are terse."])
def test_offsets_cover_instruction_and_response(toks, style, system_prompt):
    tok, rng = toks[style], random.Random(0)
    for _ in range(25):
        ex = {"id": "x", "instruction": random_text(rng, rng.randint(1, 30)), "response": random_text(rng, rng.randint(1, 20))}
        enc = encode(ex, tok, system_prompt=system_prompt)
        assert covered(enc, ex["instruction"], SOURCE_INSTRUCTION) == ex["instruction"]
        assert covered(enc, ex["response"], SOURCE_RESPONSE) == ex["response"]
        a, b = enc["instruction_span"]
        assert set(enc["source"][a:b]) == {SOURCE_INSTRUCTION}
        a, b = enc["response_span"]
        assert set(enc["source"][a:b]) == {SOURCE_RESPONSE} and b - a > 0
        # labels: exactly the response tokens and eos
        assert [i for i, l in enumerate(enc["labels"]) if l != -100] == list(range(a, b + 1))
        assert enc["input_ids"][-1] == tok.eos_token_id
        # the prompt part equals what generation would feed the model
        p = encode(ex, tok, system_prompt=system_prompt, with_response=False)
        assert p["input_ids"] == enc["input_ids"][: enc["prompt_length"]]


def test_llama3_trims_but_offsets_stay_in_original_coordinates(toks):
    ex = {"id": "t", "instruction": "\n  Tom has 5 apples.  \n", "response": "5"}
    enc = encode(ex, toks["llama3"])
    got = [(s, e) for (s, e), src in zip(enc["offsets"], enc["source"]) if src == SOURCE_INSTRUCTION]
    assert ex["instruction"][got[0][0]:got[-1][1]] == "Tom has 5 apples."


def test_instruction_equal_to_template_words(toks):
    "An instruction that also appears in the template text must still be located at the user turn."
    for text in ("user", "assistant", "### Response:", "Instruction"):
        for tok in toks.values():
            prompt, lo, hi = format_prompt(text, tok)
            assert prompt[lo:hi] == text
            enc = encode({"id": "u", "instruction": text, "response": "ok"}, tok)
            assert covered(enc, text, SOURCE_INSTRUCTION) == text


def test_token_mask_matches_span_text(toks):
    ins = "Tom has 5 apples. His sister has 7 pears. How many apples?"
    s = ins.index("His"); e = ins.index(" How")
    enc = encode({"id": "m", "instruction": ins, "response": "answer: 5"}, toks["chatml"])
    m = token_mask(enc, [[s, e]])
    picked = "".join(ins[a:b] for (a, b), keep in zip(enc["offsets"], m) if keep)
    assert picked.strip() == ins[s:e].strip()
    assert not any(m[i] for i, src in enumerate(enc["source"]) if src != SOURCE_INSTRUCTION)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batch_equals_single_encodings(toks, side):
    tok, rng = toks["chatml"], random.Random(1)
    exs = [{"id": str(i), "instruction": random_text(rng, rng.randint(1, 25)), "response": random_text(rng, 5)} for i in range(6)]
    b = encode_batch(exs, tok, padding_side=side)
    n = b["input_ids"].shape[1]
    for i, ex in enumerate(exs):
        enc = encode(ex, tok)
        k = n - len(enc["input_ids"])
        sl = slice(k, n) if side == "left" else slice(0, n - k)
        pad = slice(0, k) if side == "left" else slice(n - k, n)
        assert b["input_ids"][i, sl].tolist() == enc["input_ids"]
        assert b["labels"][i, sl].tolist() == enc["labels"]
        assert b["offsets"][i, sl].tolist() == enc["offsets"]
        assert b["attention_mask"][i, pad].sum() == 0 and (b["source"][i, pad] == SOURCE_PAD).all()
        assert (b["labels"][i, pad] == -100).all()
        s0 = k if side == "left" else 0
        assert b["instruction_span"][i].tolist() == [x + s0 for x in enc["instruction_span"]]
        assert b["response_span"][i].tolist() == [x + s0 for x in enc["response_span"]]


def test_left_padded_logits_match_unpadded(toks):
    "Left padding with the attention mask gives the same last-token logits as no padding."
    from leaf_nb.core import toy_model
    tok = toks["chatml"]
    model = toy_model(tok)
    exs = [{"id": "a", "instruction": "What is 2 + 2?"}, {"id": "b", "instruction": "Tom has 5 apples. How many?"}]
    b = encode_batch(exs, tok, padding_side="left", with_response=False)
    with torch.no_grad():
        batched = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, -1]
        for i, ex in enumerate(exs):
            single = model(input_ids=torch.tensor([encode(ex, tok, with_response=False)["input_ids"]])).logits[0, -1]
            torch.testing.assert_close(batched[i], single, atol=1e-4, rtol=1e-4)
