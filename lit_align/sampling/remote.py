"""``VLLMServer``: a rollout engine whose samples come from vLLM's own OpenAI-compatible server, in
another process, on other devices of the node or on other nodes.

Sampling: one ``/v1/completions`` request per prompt row, token ids in (``vllm_engine.requests``: per-row
seeds, stop ids, temperature, top-p), the sampled token ids and their log-probs out
(``return_token_ids``, ``logprobs: 0``), sent concurrently so the server batches them, and read into
``Samples`` the way the colocated engine's are (``vllm_engine.engine_samples``). Several ``urls`` (servers
started without vLLM's own data parallelism) share a batch row by row.

Weights: before the first sampling and after every optimiser step (``prepare``), the policy's current
weights (LoRA merged, in the server's dtype) go through vLLM's weight-transfer routes to lit_align's gloo
engine in the server (``vllm_gloo``, protocol in ``weight_wire``): the trainer hosts the group's store,
bound to ``weights_host`` (loopback unless told otherwise); the server checks names, shapes, dtype, byte
count and checksum before it loads anything. Under DDP every rank samples its own prompts; rank 0 alone
pushes (every rank holds the full weights) and tells the others how it went: they sample once it has, or
stop with its error at once (never a wait until the process-group timeout).

Failure is loud, bounded in time and names the address: a server that does not answer, refuses a push
(a model of another shape, a wrong key), dies during one, or serves a weights version other than the
one pushed last (it restarted, or another trainer pushed) raises ``RolloutServerError``. The engine holds
nothing a checkpoint needs, so a run resumes from its last checkpoint and pushes its weights again.
"""

from __future__ import annotations

import concurrent.futures
import datetime
import json
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from lit_align.sampling import vllm_engine, weight_wire
from lit_align.sampling.engines import RolloutEngine, group_rows, merged_weights
from lit_align.sampling.generate import Samples, SamplingParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SERVE_HINT = (
    "start it with `VLLM_SERVER_DEV_MODE=1 python -m vllm.entrypoints.openai.api_server --model <policy> "
    "--host 127.0.0.1 --port {port} --weight-transfer-config '{{\"backend\": \"lit_align_gloo\"}}' ...` "
    "(docs/rollouts.md has the whole command); a run stopped by this resumes from its last checkpoint"
)


class RolloutServerError(RuntimeError):
    """The rollout server failed, named by its address."""


class _Session:
    """One server's weights group: the store this trainer hosts and the gloo group over it."""

    def __init__(self, store, group, address: tuple):
        self.store, self.group, self.address = store, group, address  # the store lives as long as the group
        self.version = 0  # pushes over this session
        self.expected_version: str | None = None  # the weights version the server took at the last push

    def next_version(self) -> str:
        """The name the next push's weights get on the server: unique per session, counting pushes."""
        return f"{uuid.uuid4().hex[:8]}-{self.version + 1}"


class VLLMServer(RolloutEngine):
    """Samples from vLLM servers; the trainer pushes its weights there after every optimiser step."""

    refuses_4bit = True  # pushed weights must be float tensors

    def __init__(self, url: str | list[str] = "http://127.0.0.1:8000", api_key: str | None = None,
                 weights_host: str = "127.0.0.1", weights_port: int = 0, timeout_s: float = 600.0,
                 connect_timeout_s: float = 60.0, max_parallel_requests: int = 64, transfer: str = "gloo"):
        """
        Args:
            url: the server's address, or several servers' (each row of a batch goes to one of them).
            api_key: the servers' key (their ``VLLM_API_KEY``); None: this process's ``VLLM_API_KEY``
                (so the key stays out of configs and checkpoints).
            weights_host: the address this trainer's weights group listens on, one the servers reach:
                loopback for a server on this machine, this node's address for one on another node.
            weights_port: its port (0: a free one).
            timeout_s: longest wait for one engine call or weight push.
            connect_timeout_s: longest wait for a server at the first contact.
            max_parallel_requests: requests in flight at once per call (the server batches them).
            transfer: "gloo" (lit_align's engine in the server, ``lit_align_gloo``: CPUs and GPUs, checked
                pushes) or "nccl" (vLLM's own NCCL engine, the server started with ``{"backend": "nccl"}``,
                driven by vLLM's trainer-side engine; GPUs only, needs vLLM in the trainer's environment;
                vLLM's checks, not lit_align's).
        """
        if transfer not in ("gloo", "nccl"):
            raise ValueError(f"transfer must be 'gloo' or 'nccl', got {transfer!r}")
        self.transfer = transfer
        self.urls = [u.rstrip("/") for u in ([url] if isinstance(url, str) else list(url))]
        if not self.urls:
            raise ValueError("VLLMServer needs at least one url")
        self.api_key = api_key
        self.weights_host, self.weights_port = weights_host, weights_port
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.max_parallel_requests = max_parallel_requests
        self._sessions: dict[str, _Session] = {}
        self._models: dict[str, str] = {}
        self.stale = True
        self.pushes = 0

    @property
    def url(self) -> str:
        return self.urls[0]

    def __getstate__(self):  # a checkpoint or deep copy carries the settings, never a connection or a key
        return dict(self.__dict__, _sessions={}, _models={}, stale=True, pushes=0, _gather=None, _pool=None,
                    api_key=None if self.api_key is None else "")

    def _key(self) -> str | None:
        return self.api_key or os.environ.get("VLLM_API_KEY") or None

    # --- HTTP -----------------------------------------------------------------------------------
    def _call(self, url: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if (key := self._key()) is not None:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(url + path, method="GET" if body is None else "POST",
                                         data=None if body is None else json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout_s) as answer:
                raw = answer.read()
                return json.loads(raw) if raw else {}
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise RolloutServerError(f"rollout server at {url} answered {path} with {e.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            port = url.rsplit(":", 1)[-1]
            raise RolloutServerError(f"rollout server at {url} did not answer {path} ({reason}). Is it running? "
                                     + SERVE_HINT.format(port=port)) from None

    def health(self, url: str | None = None) -> dict:
        """The server's served model (``/v1/models``), dtype (``/server_info``) and weights version."""
        url = url or self.url
        self._call(url, "/health", timeout=self.connect_timeout_s)
        models = self._call(url, "/v1/models", timeout=self.connect_timeout_s)["data"]
        info = self._call(url, "/server_info", timeout=self.connect_timeout_s)
        found = re.search(r"\bdtype=torch\.(\w+)", info.get("vllm_config", ""))
        version = self._call(url, "/weight_info", timeout=self.connect_timeout_s)["weight_version"]
        return {"model": models[0]["id"], "max_model_len": models[0].get("max_model_len"),
                "dtype": found.group(1) if found else "float32", "version": version}

    def _together(self, url: str, path: str, body: dict, collective: Callable[[], object]) -> object:
        """POST ``path`` while ``collective`` runs on the weights group (each side waits for the other),
        within ``timeout_s``. A failed request raises at once, whatever the group is doing."""
        outcome: dict[str, object] = {}

        def run(key, fn):
            try:
                outcome[key] = fn()
            except BaseException as e:  # noqa: BLE001 - raised below, in the caller's thread
                outcome[key + "_error"] = e

        threads = [threading.Thread(target=run, args=("http", lambda: self._call(url, path, body)), daemon=True),
                   threading.Thread(target=run, args=("group", collective), daemon=True)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + self.timeout_s
        while any(t.is_alive() for t in threads):
            if "http_error" in outcome:
                break
            if time.monotonic() > deadline:
                self._sessions.pop(url, None)
                raise RolloutServerError(f"rollout server at {url} did not finish {path} within {self.timeout_s:.0f} s "
                                         "(timeout_s); " + SERVE_HINT.format(port=url.rsplit(":", 1)[-1]))
            time.sleep(0.02)
        if "http_error" in outcome:
            if threads[1].is_alive():  # the group waits on a peer that will not come: it cannot be reused
                self._sessions.pop(url, None)
            raise outcome["http_error"]
        if "group_error" in outcome:
            self._sessions.pop(url, None)
            e = outcome["group_error"]
            raise RolloutServerError(f"rollout server at {url}: the weights group failed during {path} "
                                     f"({type(e).__name__}: {e})") from None
        return outcome.get("group")

    # --- weights --------------------------------------------------------------------------------
    def weights_changed(self) -> None:
        self.stale = True

    def _open(self, url: str) -> _Session:
        world = 1 + int(self._call(url, "/get_world_size")["world_size"])
        listener = socket.socket(socket.AF_INET6 if ":" in self.weights_host else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.weights_host, self.weights_port))  # the store listens here only, not on every interface
        listener.listen(64)
        address = listener.getsockname()
        timeout = datetime.timedelta(seconds=self.timeout_s)
        fd = listener.detach()  # the store owns the socket from here and closes it when it goes
        try:
            store = torch.distributed.TCPStore(self.weights_host, address[1], world, True, timeout,
                                               wait_for_workers=False, master_listen_fd=fd, use_libuv=True)
        except BaseException:
            os.close(fd)
            raise
        options = torch.distributed.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [torch.distributed.ProcessGroupGloo.create_device(hostname=self.weights_host)]
        init = {"master_address": self.weights_host, "master_port": address[1], "world_size": world, "rank_offset": 1,
                "timeout_s": self.timeout_s, "token": self._key() or ""}
        session = _Session(store, None, address)
        session.group = self._together(url, "/init_weight_transfer_engine", {"init_info": init},
                                       lambda: torch.distributed.ProcessGroupGloo(store, 0, world, options))
        self._sessions[url] = session
        return session

    def push(self, model: torch.nn.Module, dtype: str, url: str | None = None) -> None:
        """Send the policy's merged (whole) weights to a server in ``dtype``; the server checks them first."""
        url = url or self.url
        if self.transfer == "nccl":
            return self._push_nccl(model, dtype, url)
        session = self._sessions.get(url) or self._open(url)
        names, tensors = [], []
        for name, value in merged_weights(model):
            names.append(name)
            tensors.append(value.detach().to(weight_wire.DTYPES[dtype]))
        update = {"names": names, "dtype_names": [dtype] * len(names), "shapes": [list(t.shape) for t in tensors],
                  "nbytes": sum(t.numel() * t.element_size() for t in tensors), "checksum": weight_wire.checksum(tensors),
                  "token": self._key() or ""}
        flat = self._wire(tensors)
        sent = []

        def send():
            flag = torch.tensor([weight_wire.VERDICT_ACCEPT], dtype=torch.int32)
            options = torch.distributed.AllreduceOptions()
            options.reduceOp = torch.distributed.ReduceOp.MIN
            session.group.allreduce([flag], options).wait()
            if int(flag) != weight_wire.VERDICT_ACCEPT:
                return  # a worker refused: the bytes stay here; the request's answer says why
            sent.append(True)
            broadcast = torch.distributed.BroadcastOptions()
            broadcast.rootRank = 0
            session.group.broadcast([flat], broadcast).wait()

        self._call(url, "/start_weight_update", {})
        version = None
        try:
            self._together(url, "/update_weights", {"update_info": update}, send)
            version = session.next_version()
            self._call(url, "/finish_weight_update", {"weight_version": version})
        except RolloutServerError:
            if sent:  # refused after the bytes travelled: the server's side of the group may not be reusable
                self._sessions.pop(url, None)
            try:  # vLLM ends a failed update's session itself; one the request never reached is ended here
                self._call(url, "/finish_weight_update", {"weight_version": None})
            except RolloutServerError:
                pass
            raise
        self._pushed(url, session, version)

    def _pushed(self, url: str, session: _Session, version: str) -> None:
        """After a push the server took as ``version``: drop its cached prefixes and book the push."""
        self._call(url, "/reset_prefix_cache", {})  # cached prefixes hold keys and values of the old weights
        session.version += 1
        session.expected_version = version
        self.pushes += 1

    def _push_nccl(self, model: torch.nn.Module, dtype: str, url: str) -> None:
        """A push through vLLM's own NCCL engine: vLLM's trainer-side engine drives the server's routes
        through this client's calls (key and timeouts included); the version is then recorded as for gloo."""
        from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory
        from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo

        source = _merged_source(model, weight_wire.DTYPES[dtype])
        session = self._sessions.get(url)
        if session is None:
            world = 1 + int(self._call(url, "/get_world_size")["world_size"])
            port = self.weights_port
            if not port:
                with socket.socket() as probe:
                    probe.bind((self.weights_host, 0))
                    port = probe.getsockname()[1]
            engine = WeightTransferTrainerFactory.trainer_init(
                NCCLTrainerInitInfo(master_address=self.weights_host, master_port=port, world_size=world, rank=0),
                client=_Control(self, url), source=source)
            session = self._sessions[url] = _Session(None, engine, (self.weights_host, port))
        session.group.source = source
        try:
            session.group.send_weights()
        except Exception as e:
            self._sessions.pop(url, None)  # vLLM's NCCL group is unusable after a failed send
            raise RolloutServerError(f"rollout server at {url}: the NCCL push failed ({type(e).__name__}: {e})") from None
        version = session.next_version()
        self._call(url, "/update_weight_version", {"new_version": version})
        self._pushed(url, session, version)

    @staticmethod
    def _wire(tensors: list[torch.Tensor]) -> torch.Tensor:
        """The bytes of one push: the tensors flattened into one buffer, in order."""
        return torch.cat([t.reshape(-1).cpu() for t in tensors])

    def prepare(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Push the policy's weights to every server where they moved (rank 0 sends; FSDP ranks gather with
        it), or check that the servers still serve the last push. Under DDP every rank learns rank 0's
        outcome at once, so a failed server stops every rank with the same error instead of leaving the
        others waiting at the next collective."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        failure = None
        if not self.stale:
            if rank == 0:
                failure = self._failure(self._check_versions)
        else:
            servers: dict = {}
            if rank == 0:
                failure = self._failure(lambda: servers.update({url: self.health(url) for url in self.urls}))
            with self._full_weights():  # FSDP: every rank takes part in gathering the full weights; rank 0 sends them
                for url, server in servers.items():
                    failure = failure or self._failure(lambda: self.push(model, server["dtype"], url))
        if distributed:  # every rank samples from the weights rank 0 just pushed, or stops with its error
            verdict = [failure]
            torch.distributed.broadcast_object_list(verdict, src=0)
            failure = verdict[0]
        if failure is not None:
            raise RolloutServerError(failure)
        self.stale = False

    @staticmethod
    def _failure(step: Callable[[], object]) -> str | None:
        try:
            step()
        except RolloutServerError as e:
            return str(e)
        return None

    def _check_versions(self) -> None:
        """A server that restarted, or took another trainer's weights, since this trainer's last push."""
        for url in self.urls:
            session = self._sessions.get(url)
            expected = None if session is None else session.expected_version
            if expected is None:
                continue
            serving = self._call(url, "/weight_info", timeout=self.connect_timeout_s)["weight_version"]
            if serving != expected:
                self._sessions.pop(url, None)
                raise RolloutServerError(
                    f"rollout server at {url} serves weights version {serving!r}, not {expected!r} that this trainer "
                    "pushed last: it restarted or another trainer pushed to it. Resume from the last checkpoint "
                    "(the first step pushes the weights again)")

    # --- sampling -------------------------------------------------------------------------------
    def _model_id(self, url: str) -> str:
        if url not in self._models:
            self._models[url] = self._call(url, "/v1/models", timeout=self.connect_timeout_s)["data"][0]["id"]
        return self._models[url]

    def _complete(self, url: str, request: dict) -> dict:
        params = request["params"]
        body = {"model": self._model_id(url), "prompt": request["prompt_token_ids"], "n": params["n"],
                "temperature": params["temperature"], "top_p": params["top_p"], "top_k": params["top_k"],
                "max_tokens": params["max_tokens"], "stop_token_ids": params["stop_token_ids"], "logprobs": 0,
                "seed": params["seed"], "skip_special_tokens": params["skip_special_tokens"], "return_token_ids": True}
        choices = sorted(self._call(url, "/v1/completions", body)["choices"], key=lambda c: c["index"])
        return {"completions": [{"token_ids": c["token_ids"], "logprobs": (c.get("logprobs") or {}).get("token_logprobs") or [],
                                 "finish_reason": c["finish_reason"]} for c in choices]}

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor,
               attention_mask: torch.Tensor, params: SamplingParams, seed: int = 0) -> Samples:
        self.prepare(model, tokenizer)
        return self._sample_now(tokenizer, input_ids, attention_mask, params, seed)

    def _sample_now(self, tokenizer, input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams,
                    seed: int) -> Samples:
        """The requests of one call, sent concurrently, read into ``Samples`` (no push, no check)."""
        requests = vllm_engine.requests(tokenizer, input_ids, attention_mask, params, seed)
        workers = max(1, min(len(requests), self.max_parallel_requests))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            outputs = list(pool.map(lambda ir: self._complete(self.urls[ir[0] % len(self.urls)], ir[1]),
                                    enumerate(requests)))
        return vllm_engine.engine_samples(tokenizer, input_ids, attention_mask, params, outputs)

    samples_in_background = True

    def sample_groups_in_background(self, model, tokenizer, input_ids, attention_mask, params, sizes, seed=0):
        """The draw's requests go out from a thread of their own while the caller trains; the weights must be
        pushed first (``prepare``), and pushed again only once the draw is read (a push mid-draw would mix
        weights within it)."""
        # here, in the caller's thread: the push where one is due, or the version check. The thread below
        # only sends requests: an optimiser step that marks the weights stale while it runs must not make it
        # push (mid-draw, from weights being updated)
        self.prepare(model, tokenizer)
        input_ids, attention_mask, params = group_rows(input_ids, attention_mask, params, sizes)
        if getattr(self, "_pool", None) is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lit_align-draw")
        return self._pool.submit(self._sample_now, tokenizer, input_ids, attention_mask, params, seed)

    def close(self) -> None:
        if getattr(self, "_pool", None) is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._sessions, self.stale = {}, True  # each session's store closes its socket as it goes


class _Control:
    """vLLM's trainer-side engines drive a server through four calls; these make them with this client's
    ``_call`` (its key, its timeouts, its errors that name the address)."""

    def __init__(self, client: VLLMServer, url: str):
        self.client, self.url = client, url

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        self.client._call(self.url, "/init_weight_transfer_engine", {"init_info": init_info})

    def start_weight_update(self) -> None:
        self.client._call(self.url, "/start_weight_update", {})

    def update_weights(self, update_info) -> None:
        self.client._call(self.url, "/update_weights", {"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.client._call(self.url, "/finish_weight_update", {"weight_version": weight_version})


def _merged_source(model: torch.nn.Module, dtype: torch.dtype):
    """The policy's merged weights as vLLM's ``WeightSource`` (for its own trainer-side engines), on the GPU."""
    from vllm.distributed.weight_transfer.base import ParamMeta, WeightSource

    class Merged(WeightSource):
        def metadata(self):
            return [ParamMeta(name, dtype, tuple(t.shape)) for name, t in merged_weights(model)]

        def __iter__(self):
            for name, t in merged_weights(model):
                yield name, t.detach().to(device="cuda", dtype=dtype)

    return Merged()
