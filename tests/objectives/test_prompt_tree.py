"""Prompt trees (each shared prompt once, its responses as masked branches of one row) give the whole-row
path's log-probs and gradients, and forward each prompt once."""

import pytest
import torch

from lit_align.data.formats import IGNORE_INDEX
from lit_align.modeling import models, tiny
from lit_align.objectives import logprobs, prompt_tree

from conftest import causal_lm_layouts, largest_relative_difference, weighted_grads


def _rows(vocab: int, seed: int = 0):
    """Ragged rows in groups that share a prompt, as DPO's collate makes them and worse: right-padded rows,
    a group of three, a pair whose prompts differ after two tokens, a response with an unlabelled stretch
    inside it, a row with no label at all, a one-token response, and a left-padded pair."""
    g = torch.Generator().manual_seed(seed)
    tokens = lambda n: torch.randint(4, vocab, (n,), generator=g).tolist()  # noqa: E731
    p1, p2, p3, p4 = tokens(9), tokens(5), tokens(7), tokens(6)
    other = p3[:2] + tokens(5)
    specs = [  # (prompt, response, labels of the response or None for all, left padding)
        (p1, tokens(11), None, 0), (p1, tokens(4), None, 0),
        (p2, tokens(6), None, 0), (p2, tokens(1), None, 0), (p2, tokens(8), [1, 1, 0, 0, 1, 1, 1, 0], 0),
        (p3, tokens(5), None, 0), (other, tokens(3), None, 0),
        (p1, tokens(4), [0, 0, 0, 0], 0), (p1, tokens(2), None, 0),
        (p4, tokens(5), None, 2), (p4, tokens(7), None, 2),
    ]
    groups = [[0, 1], [2, 3, 4], [5, 6], [7, 8], [9, 10]]
    width = max(pad + len(p) + len(r) for p, r, _, pad in specs) + 2  # every row ends in right padding too
    ids = torch.zeros(len(specs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for i, (p, r, lab, pad) in enumerate(specs):
        n = len(p) + len(r)
        ids[i, pad : pad + n] = torch.tensor(p + r)
        mask[i, pad : pad + n] = 1
        keep = lab or [1] * len(r)
        labels[i, pad + len(p) : pad + n] = torch.tensor([t if k else IGNORE_INDEX for t, k in zip(r, keep)])
    return ids, mask, labels, groups


def _whole(model, ids, mask, labels):
    """The whole-row reference: every row padded to the batch, nothing cut (positions are columns)."""
    return logprobs.model_token_logprobs(model, ids, mask, labels, unpad=False)[0]


@pytest.mark.parametrize("overhead", [0, 16, 10**9], ids=["forward-per-size", "regrouped", "one-forward"])
@pytest.mark.parametrize("name,model", list(causal_lm_layouts(eager=True)), ids=lambda x: x if isinstance(x, str) else "")
def test_log_probs_and_gradients_equal_every_row_run_whole(name, model, overhead):
    torch.manual_seed(0)
    model.train()
    ids, mask, labels, groups = _rows(model.config.vocab_size)
    whole = _whole(model, ids, mask, labels)
    tree = prompt_tree.prompt_tree_logprobs(model, ids, mask, labels, groups, group_overhead=overhead, chunk_size=7)
    assert tree.shape == whole.shape
    torch.testing.assert_close(tree, whole, atol=1e-5, rtol=1e-5)
    labelled = labels[:, 1:] != IGNORE_INDEX  # every row starts with a prompt token, so nothing is lost there
    assert (tree[~labelled] == 0).all() and (tree[labelled] != 0).all()
    expected, got = weighted_grads(model, whole), weighted_grads(model, tree)
    assert largest_relative_difference(dict(enumerate(got)), dict(enumerate(expected))) < 1e-5


def test_each_shared_prompt_is_forwarded_once():
    model = tiny.tiny_causal_lm(tiny.tiny_tokenizer())
    ids, mask, labels, groups = _rows(model.config.vocab_size)
    seen = []
    hook = model.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"].clone()),
                                           with_kwargs=True)
    try:
        prompt_tree.prompt_tree_logprobs(model, ids, mask, labels, groups, group_overhead=10**9)
    finally:
        hook.remove()
    layout = prompt_tree.Trees(ids, mask, labels, groups).layout(list(range(len(groups))))
    assert len(seen) == 1 and torch.equal(seen[0].sort(0).values, layout.input_ids.sort(0).values), "a tree a row"
    # shared prompts: 9, 5, 2 (the pair whose prompts part after two tokens), 9 and 6 (the left-padded pair)
    shared = [9, 5, 2, 9, 6]
    assert int(layout.real.sum()) == int(mask.sum()) - sum(p * (len(g) - 1) for p, g in zip(shared, groups))
    assert (layout.input_ids[~layout.real] == 0).all()


def test_positions_continue_the_prompt_in_each_branch_and_branches_do_not_see_each_other():
    ids, mask, labels, groups = _rows(400)
    layout = prompt_tree.Trees(ids, mask, labels, groups).layout([0, 1])
    # tree 1 (prompt 9, responses 11 and 4: 24 tokens), tree 2 (prompt 5, responses 6, 1 and 8: 20 tokens)
    assert layout.position_ids[0].tolist() == list(range(20)) + list(range(9, 13))
    assert layout.position_ids[1, :20].tolist() == list(range(11)) + [5] + list(range(5, 13))
    first, second = layout.allowed
    assert not first[20, 19] and first[20, 8] and first[20, 20], "the second response: the prompt and itself"
    assert second[19, :5].all() and not second[19, 5:12].any() and second[19, 12:20].all()
    assert not second[:20, 20:].any() and not second[20:, :20].any(), "padding sees no token, and no token sees it"
    assert second[20:, 20:].equal(torch.eye(4, dtype=torch.bool)), "padding sees itself (SDPA needs a key a row)"


def test_groups_must_cover_every_row_once():
    model = tiny.tiny_causal_lm(tiny.tiny_tokenizer())
    ids, mask, labels, groups = _rows(model.config.vocab_size)
    with pytest.raises(ValueError, match="exactly once"):
        prompt_tree.prompt_tree_logprobs(model, ids, mask, labels, groups[:-1])


def test_attention_that_takes_no_mask_and_a_short_sliding_window_are_refused_with_the_reason():
    model = tiny.tiny_causal_lm(tiny.tiny_tokenizer())
    assert prompt_tree.unsupported(model, 512) == ""
    model.config._attn_implementation = "flash_attention_2"
    assert "takes no custom attention mask" in prompt_tree.unsupported(model, 512)
    qwen = models.load_causal_lm("tiny:qwen2")
    qwen.config.use_sliding_window, qwen.config.sliding_window = True, 64
    qwen.config.layer_types = ["sliding_attention"] * qwen.config.num_hidden_layers
    assert "sliding attention window (64 tokens)" in prompt_tree.unsupported(qwen, 512)
    assert prompt_tree.unsupported(qwen, 64) == "", "a window no row reaches past changes nothing"
