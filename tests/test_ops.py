import torch

from lit_align import models, ops, tiny
from lit_align.data.formats import IGNORE_INDEX


def _inputs():
    torch.manual_seed(0)
    ids = torch.randint(4, 300, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # a left-padded row
    labels = ids.clone()
    labels[:, :8] = IGNORE_INDEX
    return ids, mask, labels


def test_chunked_head_logprobs_equal_the_plain_path_with_lora_and_gradients():
    tok = tiny.tiny_tokenizer()
    model = models.apply_lora(tiny.tiny_causal_lm(tok), models.LoRA(r=2, alpha=4, dropout=0.0))
    ids, mask, labels = _inputs()
    pos = ops.position_ids_from_mask(mask)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    plain = ops.token_logprobs(logits, labels)
    entropy_plain = ops.token_entropy(logits[:, :-1]) * (labels[:, 1:] != IGNORE_INDEX)
    fused, entropy = ops.model_token_logprobs(model, ids, mask, labels, pos, chunk_size=7, with_entropy=True)
    assert torch.allclose(plain, fused, atol=1e-5) and torch.allclose(entropy, entropy_plain, atol=1e-5)
    grads = []
    for value in (plain, fused):
        model.zero_grad()
        value.sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))
