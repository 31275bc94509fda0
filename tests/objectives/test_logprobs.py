import torch

import math

from oracles import token_entropy, token_logprobs

from lit_align.objectives import logprobs, ops
from lit_align.modeling import models, tiny
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
    plain = token_logprobs(logits, labels)
    entropy_plain = token_entropy(logits[:, :-1]) * (labels[:, 1:] != IGNORE_INDEX)
    fused, entropy = logprobs.model_token_logprobs(model, ids, mask, labels, pos, chunk_size=7, with_entropy=True)
    assert torch.allclose(plain, fused, atol=1e-5) and torch.allclose(entropy, entropy_plain, atol=1e-5)
    grads = []
    for value in (plain, fused):
        model.zero_grad()
        value.sum().backward(retain_graph=True)
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(*grads))


def test_the_oracle_matches_hand_values_and_is_zero_where_ignored():
    # One row, vocab 2. Position 0 predicts the token at 1, position 1 the token at 2.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, 5.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0]])
    # log p(1 | uniform) = log 1/2; log p(0 | logits [log 3, 0]) = log 3/4
    assert torch.allclose(token_logprobs(logits, labels), torch.tensor([[math.log(0.5), math.log(0.75)]]), atol=1e-6)
    labels = torch.tensor([[0, IGNORE_INDEX, IGNORE_INDEX]])
    assert token_logprobs(logits, labels).abs().sum() == 0


def _ragged(seed: int = 1):
    """Rows as the collates make them: right-padded SFT/DPO rows and RLOO rows (left-padded prompt,
    right-padded completion), of very different lengths, labels only after each row's first token."""
    torch.manual_seed(seed)
    ids = torch.randint(4, 300, (6, 40))
    mask = torch.zeros_like(ids)
    for row, (start, end) in enumerate([(0, 40), (0, 9), (0, 23), (6, 30), (15, 40), (2, 5)]):
        mask[row, start:end] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    first = mask.int().argmax(1)
    for row in range(ids.size(0)):
        labels[row, : int(first[row]) + 2] = IGNORE_INDEX  # a short "prompt" at the start of each row
    return ids, mask, labels


def _grads(model, value):
    model.zero_grad()
    value.sum().backward(retain_graph=True)
    return [p.grad.clone() for p in model.parameters() if p.requires_grad]


def test_unpadded_regrouped_logprobs_equal_full_logits_values_entropies_and_gradients():
    tok = tiny.tiny_tokenizer()
    model = tiny.tiny_causal_lm(tok)
    ids, mask, labels = _ragged()
    for pos in (None, ops.position_ids_from_mask(mask)):  # default positions (SFT, DPO) and RLOO's
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        plain = token_logprobs(logits, labels)
        entropy_plain = token_entropy(logits[:, :-1]) * (labels[:, 1:] != IGNORE_INDEX)
        for overhead in (0, 16, 10_000):  # one row per group, some groups, one group of cut rows
            fast, entropy = logprobs.model_token_logprobs(model, ids, mask, labels, pos, chunk_size=5,
                                                         with_entropy=True, group_overhead=overhead)
            assert (fast == 0).equal(plain == 0)
            assert torch.allclose(plain, fast, atol=1e-5) and torch.allclose(entropy, entropy_plain, atol=1e-5)
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(_grads(model, plain), _grads(model, fast)))
        dense, _ = logprobs.model_token_logprobs(model, ids, mask, labels, pos, unpad=False)
        assert torch.allclose(plain, dense, atol=1e-5)


def test_unpadding_actually_cuts_the_work():
    """The regrouped path feeds the model fewer padded positions than the batch has."""
    tok = tiny.tiny_tokenizer()
    model = tiny.tiny_causal_lm(tok)
    ids, mask, labels = _ragged()
    seen = []
    handle = model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    logprobs.model_token_logprobs(model, ids, mask, labels, group_overhead=0)
    handle.remove()
    assert sum(seen) == int(mask.sum()) < ids.numel()


def test_row_group_plan_is_the_cheapest_partition():
    lengths = [3, 50, 7, 48, 20, 5]
    for overhead in (0, 10, 40, 1000):
        groups = logprobs.plan_row_groups(lengths, overhead)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        cost = sum(len(g) * max(lengths[i] for i in g) + overhead for g in groups)
        # brute force over the cut points of the sorted rows
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        best = min(
            sum((b - a) * lengths[order[b - 1]] + overhead for a, b in zip((0, *cuts), (*cuts, len(order))))
            for n in range(len(order))
            for cuts in __import__("itertools").combinations(range(1, len(order)), n)
        )
        assert cost == best
    assert logprobs.plan_row_groups(lengths, 0) == [[i] for i in sorted(range(6), key=lambda i: lengths[i])]


def test_no_labelled_position_still_backpropagates_zero():
    tok = tiny.tiny_tokenizer()
    model = tiny.tiny_causal_lm(tok)
    ids, mask, _ = _ragged()
    labels = torch.full_like(ids, IGNORE_INDEX)
    logps, _ = logprobs.model_token_logprobs(model, ids, mask, labels)
    assert logps.abs().sum() == 0
    logps.sum().backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.parameters())


def test_entropy_for_logging_only_has_the_same_values_and_no_graph():
    """entropy_grad=False: the entropies online RL only logs are built without a graph, so nothing of
    theirs (two positions x V buffers) stays alive past the loss's backward."""
    tok = tiny.tiny_tokenizer()
    model = tiny.tiny_causal_lm(tok)
    ids, mask, labels = _inputs()
    pos = ops.position_ids_from_mask(mask)
    for chunk in (7, 1024):  # several checkpointed chunks, and one plain
        logps, with_graph = logprobs.model_token_logprobs(model, ids, mask, labels, pos, chunk_size=chunk, with_entropy=True)
        logps_b, logged = logprobs.model_token_logprobs(model, ids, mask, labels, pos, chunk_size=chunk, with_entropy=True,
                                                        entropy_grad=False)
        assert with_graph.requires_grad and not logged.requires_grad and logps_b.requires_grad
        assert torch.equal(logged, with_graph.detach()) and torch.equal(logps, logps_b)
