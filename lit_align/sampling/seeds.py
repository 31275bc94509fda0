"""Seeds for sampling calls, derived from the coordinates of a draw.

A run samples many times: every optimiser step, every draw of a dynamically-sampled batch, every
rank and every chunk an engine splits a call into needs a seed of its own, the same one each time the
run is repeated (exact resume). Multiplying the coordinates into one integer overflows a 64-bit seed
after a few hundred steps; hashing them does not, and keeps distinct coordinates on distinct seeds
(collisions are as likely as for any 62-bit hash).
"""

from __future__ import annotations

import hashlib

SEED_BITS = 62  # below 2**63: a signed 64-bit seed (torch generators, vLLM requests) takes every value


def derive_seed(*parts: int) -> int:
    """A seed in [0, 2**62) that depends on every part and on their order.

    >>> derive_seed(1, 2) == derive_seed(1, 2), derive_seed(1, 2) == derive_seed(2, 1)
    (True, False)
    >>> 0 <= derive_seed(10**30, 282) < 2**62
    True
    """
    data = b"".join(int(p).to_bytes(32, "little", signed=True) for p in parts)
    digest = hashlib.blake2b(data, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)
