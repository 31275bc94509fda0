"""A vLLM rollout server: the policy's samples from an engine in another process, on other devices or
another node, kept in sync by weight pushes over a ``torch.distributed`` group of its own.

    python -m lit_align.sampling.server --model outputs/quickstart/export --port 8765 --group-port 8766

Why a small server of our own around ``vllm.LLM`` and not vLLM's OpenAI server (TRL's ``trl vllm-serve``
extends that one): lit_align's colocated engine already builds its requests for ``vllm.LLM`` (token ids
in, per-request seeds, stop ids, processed log-probs out) and loads pushed weights with the model
runner's ``reload_weights``; the server makes exactly those calls (``vllm_engine``, shared with the
colocated engine), which keeps one request format and one weight path for both engines, so the server's samples are the colocated engine's for the same weights and seeds (a
test checks it), and it adds no dependency. What it does not do: serve other clients' chat requests.

Protocol (JSON over HTTP, one engine call at a time; a call carries a whole batch):

- ``GET /health``: the model's identity (architecture, sizes, vocabulary), the weights' version (pushes
  so far) and their checksum;
- ``POST /generate``: ``{"requests": [{"prompt_token_ids": [...], "params": {...}}]}`` with
  ``vllm.SamplingParams`` fields; answers each completion's token ids, log-probs and finish reason;
- ``POST /open_group``: ``{"session": s}``: the server joins a two-process group (the trainer rank 0,
  the server rank 1) through the TCP store it hosts on ``--group-port``; gloo on CPUs, NCCL on GPUs;
- ``POST /update_weights``: ``{"session": s, "names": [...], "shapes": [...], "dtype": d}``: the trainer
  broadcasts one flat buffer of those tensors, in that order and dtype, over the group; the server
  loads them in place (``reload_weights``), drops cached prefixes, and answers their checksum.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

from lit_align.sampling import vllm_engine
from lit_align.sampling.vllm_engine import DTYPES, checksum, identity

log = logging.getLogger(__name__)


class Engine:
    """The vLLM engine of the server and the weights group, behind one lock."""

    def __init__(self, model: str, dtype: str, max_model_len: int, enforce_eager: bool, memory_utilization: float,
                 cpu_kv_cache_gib: int | None, group_host: str, group_port: int, group_timeout_s: float):
        from transformers import AutoConfig

        self.model = model
        self.config = identity(AutoConfig.from_pretrained(model).to_dict())
        self.llm = vllm_engine.start(model, dtype, enforce_eager, memory_utilization, max_model_len, cpu_kv_cache_gib)
        self.dtype = vllm_engine.engine_dtype(self.llm)
        self.lock = threading.Lock()
        self.version = 0
        self.weights_checksum: float | None = None
        self.store = torch.distributed.TCPStore(group_host, group_port, is_master=True, wait_for_workers=False,
                                                timeout=datetime.timedelta(seconds=group_timeout_s))
        self.group_timeout = datetime.timedelta(seconds=group_timeout_s)
        self.groups: dict[str, object] = {}

    def health(self) -> dict:
        return {"model": self.model, "config": self.config, "dtype": str(self.dtype).removeprefix("torch."),
                "version": self.version, "checksum": self.weights_checksum}

    def generate(self, requests: list[dict]) -> list[dict]:
        with self.lock:
            return vllm_engine.generate(self.llm, requests)

    def open_group(self, session: str) -> None:
        """Join the trainer's two-process group in the background (the trainer joins after this answers)."""
        def join():
            store = torch.distributed.PrefixStore(f"lit_align/{session}", self.store)
            if torch.cuda.is_available():
                group = torch.distributed.ProcessGroupNCCL(store, 1, 2)
            else:
                group = torch.distributed.ProcessGroupGloo(store, 1, 2, self.group_timeout)
            self.groups[session] = group

        thread = threading.Thread(target=join, daemon=True)
        thread.start()
        self.groups[session] = thread

    def update_weights(self, session: str, names: list[str], shapes: list[list[int]], dtype: str) -> float:
        group = self.groups.get(session)
        if isinstance(group, threading.Thread):
            group.join(self.group_timeout.total_seconds())
            group = self.groups.get(session)
        if group is None or isinstance(group, threading.Thread):
            raise RuntimeError(f"no weights group for session {session!r}: open it first (POST /open_group)")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        sizes = [int(torch.Size(s).numel()) for s in shapes]
        flat = torch.empty(sum(sizes), dtype=DTYPES[dtype], device=device)
        options = torch.distributed.BroadcastOptions()
        options.rootRank = 0
        group.broadcast([flat], options).wait()
        tensors = [part.view(shape) for part, shape in zip(flat.split(sizes), shapes)]
        with self.lock:
            vllm_engine.load_weights(self.llm, zip(names, tensors))
            self.version += 1
            self.weights_checksum = checksum(tensors)
        return self.weights_checksum


def handler(engine: Engine):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # requests are logged at debug level, not on stderr
            log.debug(fmt, *args)

        def _reply(self, status: int, body: dict) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self):
            if self.path == "/health":
                self._reply(200, engine.health())
            else:
                self._reply(404, {"error": f"no route {self.path}"})

        def do_POST(self):
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if self.path == "/generate":
                    self._reply(200, {"outputs": engine.generate(body["requests"])})
                elif self.path == "/open_group":
                    engine.open_group(str(body["session"]))
                    self._reply(200, {"ok": True})
                elif self.path == "/update_weights":
                    total = engine.update_weights(str(body["session"]), body["names"], body["shapes"], body["dtype"])
                    self._reply(200, {"checksum": total, "version": engine.version})
                else:
                    self._reply(404, {"error": f"no route {self.path}"})
            except Exception as e:  # the client shows the server's own error
                log.exception("request %s failed", self.path)
                self._reply(500, {"error": f"{type(e).__name__}: {e}"})

    return Handler


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="the policy's start (an export folder or hub id)")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8765, help="HTTP port for requests")
    parser.add_argument("--group-port", type=int, default=8766, help="TCP store port of the weights group")
    parser.add_argument("--dtype", default="float32", help="the engine's weight dtype: float32, bfloat16, auto")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--compile", action="store_true", help="compile the model (slower start, faster sampling)")
    parser.add_argument("--memory-utilization", type=float, default=0.25,
                        help="vLLM's gpu_memory_utilization (on a CPU: share of system RAM)")
    parser.add_argument("--cpu-kv-cache-gib", type=int, default=2, help="on CPUs: the KV cache in GiB")
    parser.add_argument("--group-timeout", type=float, default=600, help="seconds to wait on the weights group")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[lit_align.server] %(message)s")
    engine = Engine(args.model, args.dtype, args.max_model_len, not args.compile, args.memory_utilization,
                    args.cpu_kv_cache_gib, args.host, args.group_port, args.group_timeout)
    server = ThreadingHTTPServer((args.host, args.port), handler(engine))
    log.info("serving %s on %s:%d (weights group store on port %d)", args.model, args.host, args.port, args.group_port)
    server.serve_forever()


if __name__ == "__main__":
    main()
