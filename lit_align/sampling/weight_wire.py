"""What a trainer and a vLLM server agree on when weights travel over lit_align's gloo transfer engine.

Both sides import this module: the trainer (``remote.VLLMServer``, no vLLM needed) and the engine inside
the server (``vllm_gloo``). One push, in order:

1. the trainer posts ``/start_weight_update``, then ``/update_weights`` with an ``UpdateInfo`` (names,
   one dtype, shapes, the byte count and a checksum of what it will send) in a thread of its own;
2. every receiving worker checks the announcement against the served model (``refusal``) and all ranks
   all-reduce a verdict (``VERDICT_*``): the bytes travel only when every worker accepted, so a refused
   push leaves no rank waiting on a broadcast;
3. the trainer broadcasts one flat buffer; each worker compares its checksum before loading anything;
4. the trainer posts ``/finish_weight_update`` with the new version.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping

import torch

BACKEND = "lit_align_gloo"
"""The name the engine is registered under: the server's ``--weight-transfer-config '{"backend": ...}'``."""

VERDICT_ACCEPT = 1
VERDICT_REFUSE = 0

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def checksum(tensors: Iterable[torch.Tensor]) -> float:
    """A weights fingerprint both sides compute the same way: the float64 sum of every element times its
    tensor's position plus one (so swapped tensors change it)."""
    total = 0.0
    for i, t in enumerate(tensors):
        total += (i + 1) * float(t.detach().double().sum())
    return total


def token_matches(given: str | None, key: str | None) -> bool:
    """The push's token against the server's key (``VLLM_API_KEY``); no key on the server: any token."""
    if not key:
        return True
    return hmac.compare_digest((given or "").encode(), key.encode())


def refusal(names: list[str], dtype_names: list[str], shapes: list[list[int]], nbytes: int,
            expected: Mapping[str, tuple[int, ...]], served_dtype: str) -> str | None:
    """Why a push does not fit the served model, or None when it does.

    ``expected`` maps every weight name of the served model (Hugging Face naming) to its shape; a push may
    carry any subset of them, each once, all in the served dtype, and ``nbytes`` must be exactly what the
    announced shapes hold (the receive buffer is sized from the served model, never from the request).
    """
    if not (len(names) == len(dtype_names) == len(shapes)):
        return f"names, dtype_names and shapes differ in length ({len(names)}, {len(dtype_names)}, {len(shapes)})"
    if not names:
        return "the push names no weights"
    seen: set[str] = set()
    for name, dtype, shape in zip(names, dtype_names, shapes):
        if name in seen:
            return f"{name!r} is pushed twice"
        seen.add(name)
        if name not in expected:
            return f"{name!r} is not a weight of the served model"
        if tuple(shape) != tuple(expected[name]):
            return f"{name!r} has shape {list(shape)}, the served model's is {list(expected[name])}"
        if dtype != served_dtype:
            return f"{name!r} comes as {dtype}; the server holds {served_dtype} (push in the server's --dtype)"
    itemsize = torch.empty(0, dtype=DTYPES[served_dtype]).element_size()
    want = sum(int(torch.Size(expected[n]).numel()) for n in names) * itemsize
    if nbytes != want:
        return f"the push announces {nbytes} bytes; its {len(names)} weights hold {want}"
    return None
