"""Server mode under DDP: when rank 0 cannot reach the server, every rank stops with the same error at once,
not at the process group's timeout. Two CPU processes over gloo; no server and no vLLM needed."""

from __future__ import annotations

import datetime
import socket
import time

import torch
import torch.multiprocessing as mp

from lit_align.sampling.remote import RolloutServerError, VLLMServer


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, url: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=120))
    started = time.monotonic()
    try:
        VLLMServer(url, connect_timeout_s=2).prepare(torch.nn.Linear(2, 2), None)
        results.put((rank, None, time.monotonic() - started))
    except RolloutServerError as e:
        results.put((rank, str(e), time.monotonic() - started))
    finally:
        torch.distributed.destroy_process_group()


def test_every_rank_stops_with_rank_zeros_error_when_the_server_is_unreachable():
    url = f"http://127.0.0.1:{_free_port()}"
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, url, results)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=100) for _ in procs)
    for p in procs:
        p.join(30)
    assert [r for r, _, _ in got] == [0, 1]
    for rank, error, seconds in got:
        assert error is not None and f"rollout server at {url} did not answer /health" in error, (rank, error)
        assert seconds < 30, (rank, seconds)  # well under the group's 120 s timeout
