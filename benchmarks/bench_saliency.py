"""Speed of leaf_nb's batched input-gradient saliency, measured side by side in one run:

- against the authors' pattern (one example at a time; HF's mean response loss over full-vocabulary logits
  at every position; parameters keep requires_grad, so every backward also fills parameter gradients that
  are never zeroed; the gradient read from the embedding output) on the same models and inputs:
  SmolLM2-135M-Instruct (16 prompts of 96 + 32 tokens, one batch; needs the smol extra) and the causal world's tiny
  teacher and student (64 world test prompts, the default batch size of 32);
- against inseq's `saliency` method on the same prompt/response pairs, when inseq is importable
  (it is not a leaf_nb dependency: install it beside the project to include it);
- achieved FLOP/s of the batched pass against a matmul measured in the same run, counting only the FLOPs
  the method needs (a causal forward, the head on response positions only, and the input-gradient
  backward: no parameter gradients).

    python benchmarks/bench_saliency.py [--threads 2] [--reps 3] [--world-reps 9] [--skip-smol] [--skip-inseq]

Each comparison runs its contenders in interleaved rounds (one call of each per round) and keeps each one's
best round, so that a burst of load on a shared machine does not favour one side; it also reports the
ratio within each round (median and quartiles), which shows how much the machine's load moved the result.

On the world's models it also measures what batching could reach at best (`ceiling`): rows of one length in
batches of 1 to 24 give the per-batch overhead and the marginal cost per token; the authors' time over the
marginal cost of all tokens is the speed-up of a batched pass with neither overhead nor padding.

The last line printed is JSON with the ratios."""
import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch


def authors_loop(model, encs):
    "The released scripts' pattern: batch size 1, full logits, HF mean loss, parameter gradients on and never zeroed."
    out = []
    for e in encs:
        ids = torch.tensor([e["input_ids"]])
        labels = torch.tensor([e["labels"]])
        emb = model.get_input_embeddings()(ids)
        emb.retain_grad()  # as released the embedding output is not a leaf and .grad stays None; this is the fixed read
        loss = model(inputs_embeds=emb, labels=labels).loss
        loss.backward()
        out.append(emb.grad[0].norm(dim=-1))
    return out


def frozen_loop(model, tok, encs):
    from leaf_nb.saliency import input_saliency
    return [input_saliency(model, tok, encodings=[e], batch_size=1)[0] for e in encs]


def batched(model, tok, encs, bs):
    from leaf_nb.saliency import input_saliency
    return input_saliency(model, tok, encodings=encs, batch_size=bs)


def needed_flops(model, encs):
    "FLOPs the method needs: forward (linear layers + causal attention + head on target positions) and the input-gradient backward."
    trunk = model.base_model
    lin = sum(m.in_features * m.out_features for m in trunk.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", None) if getattr(cfg, "head_dim", None) else cfg.hidden_size
    head = model.get_output_embeddings()
    head_macs = head.in_features * head.out_features
    fwd_lin = fwd_attn = fwd_head = 0
    for e in encs:
        n = len(e["input_ids"]); n_tgt = sum(l != -100 for l in e["labels"])
        fwd_lin += lin * n
        fwd_attn += cfg.num_hidden_layers * 2 * d_attn * n * (n + 1) // 2  # QK^T and AV over causal pairs
        fwd_head += head_macs * n_tgt
    # backward to the inputs only: dX = dY W^T per linear (1x), attention dQ, dK, dV, dP (2x its forward), head (1x)
    return 2 * (2 * fwd_lin + 3 * fwd_attn + 2 * fwd_head)


def matmul_flops(d, ff, rows, reps):
    a, b = torch.randn(rows, d), torch.randn(d, ff)
    (best,) = interleaved([lambda: [torch.mm(a, b) for _ in range(10)]], reps)
    return 10 * 2 * rows * d * ff / best


def rounds(fns, reps):
    "Times of each function over `reps` rounds, one call of each per round (drift on a shared machine hits all alike)."
    for f in fns: f()  # warm-up
    times = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            t = time.perf_counter(); f(); times[i].append(time.perf_counter() - t)
    return times


def interleaved(fns, reps):
    "Best time of each function over `reps` interleaved rounds."
    return [min(t) for t in rounds(fns, reps)]


def paired(slow, fast):
    "Per-round ratios slow/fast: their median and quartiles (each ratio compares two calls made moments apart)."
    r = sorted(a / b for a, b in zip(slow, fast))
    q = lambda p: r[min(len(r) - 1, round(p * (len(r) - 1)))]
    return dict(median=round(q(0.5), 2), q1=round(q(0.25), 2), q3=round(q(0.75), 2))


def ceiling(model, tok, encs, t_authors, res_entry, reps):
    """The best ratio batching could reach: the authors' time over the marginal cost of the tokens alone.

    Rows of one length are timed in batches of 1 to 24 rows; a line t = a + b * tokens through those times gives the
    per-batch overhead a and the marginal cost per token b. With no overhead and no padding, the batched pass would
    take b * (all tokens)."""
    from leaf_nb.core import pad_encodings
    from leaf_nb.saliency import frozen, saliency_batch
    n = max(set(len(e["input_ids"]) for e in encs), key=lambda k: sum(len(e["input_ids"]) == k for e in encs))
    same = [e for e in encs if len(e["input_ids"]) == n]
    sizes = [k for k in (1, 2, 4, 8, 16, 24) if k <= len(same)]
    batches = [pad_encodings(same[:k], tok.pad_token_id) for k in sizes]
    with frozen(model):
        best = interleaved([lambda b=b: saliency_batch(model, b["input_ids"], b["attention_mask"], b["labels"]) for b in batches], reps)
    xs = [k * n for k in sizes]
    mx, my = sum(xs) / len(xs), sum(best) / len(best)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, best)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    tokens = sum(len(e["input_ids"]) for e in encs)
    res_entry.update(overhead_ms_per_batch=round(a * 1e3, 2), us_per_token=round(b * 1e6, 2), fit_rows_of_length=n,
                     ceiling_speedup_vs_authors=round(t_authors / (b * tokens), 2))


def compare(name, model, tok, encs, bs, reps, res, with_ceiling=False):
    r_auth, r_frozen, r_batch = rounds([lambda: authors_loop(model, encs), lambda: frozen_loop(model, tok, encs),
                                        lambda: batched(model, tok, encs, bs)], reps)
    t_auth, t_frozen, t_batch = min(r_auth), min(r_frozen), min(r_batch)
    for p in model.parameters(): p.grad = None
    # the two must agree (the authors' loop uses the mean loss: norms differ by the per-example target count)
    a, b = authors_loop(model, encs[:2]), batched(model, tok, encs[:2], bs)
    for p in model.parameters(): p.grad = None
    for e, x, y in zip(encs, a, b):
        n_tgt = sum(l != -100 for l in e["labels"])
        ref = (x[y.context] * n_tgt).double().numpy()
        assert abs(ref - y.scores).max() <= 1e-3 * ref.max(), f"{name}: batched saliency disagrees with the reference loop"
    tokens = sum(len(e["input_ids"]) for e in encs)
    res[name] = dict(examples=len(encs), tokens=tokens, batch_size=bs, authors_loop_s=round(t_auth, 3),
                     frozen_loop_s=round(t_frozen, 3), batched_s=round(t_batch, 3),
                     speedup_vs_authors=round(t_auth / t_batch, 2), speedup_frozen_loop_vs_authors=round(t_auth / t_frozen, 2),
                     speedup_vs_authors_per_round=paired(r_auth, r_batch))
    if with_ceiling: ceiling(model, tok, encs, t_auth, res[name], reps)
    print(name, json.dumps(res[name]))
    return t_batch


def smol_inputs(tok, n=16, n_prompt=96, n_resp=32, seed=0):
    "Rows whose chat-formatted prompt has exactly `n_prompt` tokens and whose response has `n_resp`."
    from leaf_nb.core import encode
    g = torch.Generator().manual_seed(seed)
    words = [w for w in ("apple pencil river garden seven yellow market teacher window dinner ladder orange "
                         "mountain basket number letter silver winter bridge coffee").split()]
    rows = []
    for i in range(n):
        pick = lambda k: " ".join(words[j] for j in torch.randint(len(words), (k,), generator=g).tolist())
        ins, resp = pick(200), pick(200)
        # trim the instruction word by word until the prompt is n_prompt tokens, the response likewise
        while len(encode({"instruction": ins, "response": "x"}, tok)["input_ids"]) - 2 > n_prompt - 1: ins = ins.rsplit(" ", 1)[0]
        while len(tok(resp, add_special_tokens=False)["input_ids"]) > n_resp: resp = resp.rsplit(" ", 1)[0]
        rows.append({"id": f"b{i}", "instruction": ins, "response": resp})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=3, help="rounds on SmolLM2")
    p.add_argument("--world-reps", type=int, default=9, help="rounds on the world's tiny models (a round takes about a second)")
    p.add_argument("--skip-smol", action="store_true")
    p.add_argument("--skip-inseq", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error(); hf_logging.disable_progress_bar()
    from leaf_nb.saliency import saliency_encoding
    from leaf_nb.world import load_world
    res = {"threads": a.threads, "reps": a.reps, "world_reps": a.world_reps}

    w = load_world()
    rows = list(w.splits["math"]["test"])[:64]
    encs = [saliency_encoding(r, w.tokenizer) for r in rows]
    compare("world_teacher", w.teacher, w.tokenizer, encs, 32, a.world_reps, res, True)  # input_saliency's default batch size
    compare("world_student", w.student, w.tokenizer, encs, 32, a.world_reps, res, True)

    smol = None
    if not a.skip_smol:
        try:
            from leaf_nb.core import smollm2_gguf
            smol = smollm2_gguf(device="cpu")
        except Exception as e: res["smol"] = f"skipped: {type(e).__name__}: {e}"
    if smol is not None:
        model, tok = smol
        srows = smol_inputs(tok)
        sencs = [saliency_encoding(r, tok) for r in srows]
        res["smol_prompt_tokens"] = sorted({e["response_span"][0] for e in sencs})
        res["smol_response_tokens"] = sorted({e["response_span"][1] - e["response_span"][0] for e in sencs})
        t_batch = compare("smollm2", model, tok, sencs, 16, a.reps, res)
        flops = needed_flops(model, sencs)
        cfg = model.config
        mm = matmul_flops(cfg.hidden_size, cfg.intermediate_size, sum(len(e["input_ids"]) for e in sencs), a.reps)
        res["flops"] = dict(needed_gflop=round(flops / 1e9, 2), achieved_gflops=round(flops / t_batch / 1e9, 1),
                            matmul_gflops=round(mm / 1e9, 1), fraction_of_matmul=round(flops / t_batch / mm, 3))
        print("flops", json.dumps(res["flops"]))
        if not a.skip_inseq:
            res["inseq"] = inseq_compare(model, tok, srows[:2], sencs, t_batch)
            print("inseq", json.dumps(res["inseq"]))

    wt, ws = res["world_teacher"], res["world_student"]
    summary = {"speedup_vs_authors_world": min(wt["speedup_vs_authors"], ws["speedup_vs_authors"]), "target_world": 4.0,
               "speedup_vs_authors_world_median_per_round": min(wt["speedup_vs_authors_per_round"]["median"],
                                                                 ws["speedup_vs_authors_per_round"]["median"]),
               "ceiling_world": min(wt["ceiling_speedup_vs_authors"], ws["ceiling_speedup_vs_authors"])}
    if "smollm2" in res:
        summary |= {"speedup_vs_authors_smollm2": res["smollm2"]["speedup_vs_authors"], "target_smollm2": 1.8,
                    "flops_fraction_of_matmul": res["flops"]["fraction_of_matmul"], "target_flops_fraction": 0.6}
        inq = res.get("inseq")
        summary["speedup_vs_inseq_per_example"] = inq.get("speedup_per_example") if isinstance(inq, dict) else inq
        summary["target_inseq"] = 10.0
    res["summary"] = summary
    print(json.dumps(res))


def inseq_compare(model, tok, rows, sencs, t_batch):
    "inseq's saliency with the response forced, per example, against the batched pass per example."
    try:
        import inseq
    except ImportError: return "not installed (install inseq beside leaf_nb to include it)"
    from leaf_nb.core import format_prompt
    try:
        m = inseq.load_model(model, "saliency", tokenizer=tok)
        def run():
            for r in rows:
                prompt = format_prompt(r["instruction"], tok)[0]
                m.attribute(input_texts=prompt, generated_texts=prompt + r["response"], show_progress=False,
                            skip_special_tokens=False)
        t0 = time.perf_counter(); run(); t = (time.perf_counter() - t0) / len(rows)
    except Exception as e: return f"failed: {type(e).__name__}: {str(e)[:300]}"
    per_ex = t_batch / len(sencs)
    return dict(inseq_s_per_example=round(t, 3), batched_s_per_example=round(per_ex, 4), speedup_per_example=round(t / per_ex, 1),
                version=__import__("importlib.metadata").metadata.version("inseq"))


if __name__ == "__main__":
    main()
