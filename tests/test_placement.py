"""A model spread over devices by accelerate's big-model loading (`ModelConfig.device_map`) gives what the same model on
one device gives: input-embedding saliency, greedy generation and the cached top-k. On this CPU machine the spread is
CPU and disk: one decoder layer is offloaded to a folder and loaded on the fly, as a 70B teacher's layers would be
spread over GPUs."""
import torch
import pytest

from leaf_nb.core import ModelConfig, generate, input_device, load_pretrained
from leaf_nb.saliency import saliency_batch
from leaf_nb.distill import TeacherCache, teacher_cache

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from leaf_nb.world import load_world
    torch.set_num_threads(1)
    w = load_world()
    d = tmp_path_factory.mktemp("placed")
    w.teacher.save_pretrained(d / "teacher"); w.tokenizer.save_pretrained(d / "teacher")
    plain, tok = load_pretrained(ModelConfig(str(d / "teacher"), dtype="float32", device="cpu"))
    spread = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
              "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    placed, _ = load_pretrained(ModelConfig(str(d / "teacher"), dtype="float32", device_map=spread, offload_folder=str(d / "offload")))
    rows = list(w.splits["math"]["test"])[:12]
    return plain, placed, tok, rows, d


def test_the_model_is_really_spread(models):
    plain, placed, tok, rows, d = models
    assert placed.hf_device_map["model.layers.1"] == "disk"
    assert str(input_device(placed)) == "cpu"
    assert any(p.device.type == "meta" for p in placed.model.layers[1].parameters())  # its weights live on disk


def test_saliency_generation_and_cache_match(models):
    plain, placed, tok, rows, d = models
    from leaf_nb.saliency import saliency_encoding
    from leaf_nb.core import pad_encodings
    b = pad_encodings([saliency_encoding(r, tok) for r in rows], tok.pad_token_id)
    g0, nll0 = saliency_batch(plain, b["input_ids"], b["attention_mask"], b["labels"])
    g1, nll1 = saliency_batch(placed, b["input_ids"], b["attention_mask"], b["labels"])
    torch.testing.assert_close(g1, g0, rtol=1e-5, atol=1e-6); torch.testing.assert_close(nll1, nll0, rtol=1e-5, atol=1e-6)
    assert generate(placed, tok, rows, max_new_tokens=24) == generate(plain, tok, rows, max_new_tokens=24)
    c0 = teacher_cache(plain, tok, rows, d / "cache-plain", k=16, progress=False)
    c1 = teacher_cache(placed, tok, rows, d / "cache-placed", k=16, progress=False)
    ids, n = [r["id"] for r in rows], [int(c0.ds[i]["n_target"]) for i in range(len(rows))]
    (i0, p0), (i1, p1) = c0.lookup(ids, n), c1.lookup(ids, n)
    assert torch.equal(i0, i1); torch.testing.assert_close(p1, p0, rtol=1e-5, atol=1e-5)
    assert c1.config["teacher"] == c0.config["teacher"]  # the fingerprint reads the offloaded weights from disk


def test_placement_settings_need_a_device_map(models):
    plain, placed, tok, rows, d = models
    with pytest.raises(ValueError, match="need a device_map"):
        load_pretrained(ModelConfig(str(d / "teacher"), max_memory={"cpu": "1GiB"}))
