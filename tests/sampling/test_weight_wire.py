"""The checks a vLLM server's gloo engine makes on a push before any byte travels (``weight_wire``)."""

from __future__ import annotations

import pytest
import torch

from lit_align.sampling import weight_wire as wire

SERVED = {"embed.weight": (10, 4), "layers.0.q.weight": (4, 4), "norm.weight": (4,)}


def _push(names, dtype="float32", shapes=None, nbytes=None):
    shapes = shapes or [list(SERVED[n]) for n in names]
    nbytes = sum(torch.Size(s).numel() for s in shapes) * 4 if nbytes is None else nbytes
    return wire.refusal(names, [dtype] * len(names), shapes, nbytes, SERVED, "float32")


def test_a_push_of_served_weights_in_the_served_dtype_is_accepted_whole_or_in_part():
    assert _push(list(SERVED)) is None
    assert _push(["norm.weight"]) is None


@pytest.mark.parametrize("case, match", [
    (dict(names=["layers.1.q.weight"], shapes=[[4, 4]]), "'layers.1.q.weight' is not a weight of the served model"),
    (dict(names=["layers.0.q.weight"], shapes=[[2, 8]]), r"shape \[2, 8\], the served model's is \[4, 4\]"),
    (dict(names=["norm.weight"], dtype="bfloat16"), "comes as bfloat16; the server holds float32"),
    (dict(names=["norm.weight", "norm.weight"]), "pushed twice"),
    (dict(names=["norm.weight"], nbytes=8), "announces 8 bytes; its 1 weights hold 16"),
    (dict(names=[]), "names no weights"),
])
def test_a_push_that_does_not_fit_is_refused_with_what_differs(case, match):
    reason = _push(**case)
    assert reason is not None and __import__("re").search(match, reason), reason


def test_lists_of_different_lengths_are_refused():
    assert "differ in length" in wire.refusal(["norm.weight"], [], [[4]], 16, SERVED, "float32")


def test_the_token_must_equal_the_servers_key_when_it_has_one():
    assert wire.token_matches("", None) and wire.token_matches("anything", "")
    assert wire.token_matches("k1", "k1")
    assert not wire.token_matches("", "k1") and not wire.token_matches(None, "k1") and not wire.token_matches("k2", "k1")


def test_the_checksum_changes_when_tensors_swap_or_a_value_moves():
    a, b = torch.arange(4.0), torch.ones(3)
    assert wire.checksum([a, b]) != wire.checksum([b, a])
    moved = a.clone()
    moved[0] += 1e-3
    assert wire.checksum([moved, b]) != wire.checksum([a, b])
