"""``VLLMServer``: a rollout engine whose samples come from a rollout server (``lit_align.sampling.server``)
in another process, on other devices of the node or on another node.

The requests are the colocated engine's (``vllm_engine.requests``: token ids, per-request seeds, stop
ids, temperature, processed log-probs), sent as one batch per call, and the answers are read the same way
(``vllm_engine.engine_samples``), so ``Samples`` and ``engine_logps``
are those the colocated engine gives for the same weights. Weights: before the first sampling, and
after every optimiser step (``prepare``), the policy's current weights (LoRA merged, in the server's
dtype) are pushed over a ``torch.distributed`` group of two processes, the trainer's rank 0 and the
server: gloo on CPUs, NCCL on GPUs. Under DDP every rank samples its own prompts from the server; rank 0
alone pushes (every rank holds the full weights), and the others wait at a barrier until it has.

Failure is loud and names the address: a server that does not answer at start, stops answering
mid-run, serves a model of another shape, or loads different weights than were pushed (its checksum
differs from ours) raises ``RolloutServerError``. The engine holds nothing a checkpoint needs, so a run
resumes from its last checkpoint and pushes its weights again at the first step.
"""

from __future__ import annotations

import datetime
import json
import threading
import urllib.error
import urllib.request
import uuid
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch

from lit_align.sampling import vllm_engine
from lit_align.sampling.engines import RolloutEngine, merged_weights
from lit_align.sampling.generate import Samples, SamplingParams
from lit_align.sampling.vllm_engine import DTYPES, checksum, identity

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class RolloutServerError(RuntimeError):
    """The rollout server failed, named by its address."""


class VLLMServer(RolloutEngine):
    """Samples from a vLLM rollout server; the trainer pushes its weights there after every optimiser step."""

    refuses_4bit = True  # pushed weights must be float tensors

    def __init__(self, url: str = "http://127.0.0.1:8765", group_port: int = 8766, timeout_s: float = 600.0,
                 connect_timeout_s: float = 60.0):
        """
        Args:
            url: the server's address (``python -m lit_align.sampling.server --port ...``).
            group_port: the server's ``--group-port`` (the TCP store of the weights group, on the url's host).
            timeout_s: longest wait for one engine call or weight push.
            connect_timeout_s: longest wait for the server at the first contact.
        """
        self.url, self.group_port = url.rstrip("/"), group_port
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self._group = None
        self._session: str | None = None
        self.stale = True
        self.pushes = 0

    def __getstate__(self):  # a checkpoint or deep copy carries the settings, never a connection
        return dict(self.__dict__, _group=None, _session=None, stale=True, pushes=0, _gather=None)

    # --- HTTP -----------------------------------------------------------------------------------
    def _call(self, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        request = urllib.request.Request(self.url + path, method="GET" if body is None else "POST",
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout_s) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise RolloutServerError(f"rollout server at {self.url} answered {path} with {e.code}: {detail}") from None
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RolloutServerError(
                f"rollout server at {self.url} did not answer {path} ({reason}). Is it running? Start it with "
                f"`python -m lit_align.sampling.server --model <policy> --port {urlparse(self.url).port} "
                f"--group-port {self.group_port}`; a run stopped by this resumes from its last checkpoint") from None

    def health(self) -> dict:
        return self._call("/health", timeout=self.connect_timeout_s)

    # --- weights --------------------------------------------------------------------------------
    def weights_changed(self) -> None:
        self.stale = True

    def _check_model(self, model, server: dict) -> None:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        ours, theirs = identity(inner.config.to_dict()), server["config"]
        differ = {k: (ours[k], theirs.get(k)) for k in ours if ours[k] != theirs.get(k)}
        if differ:
            raise RolloutServerError(f"rollout server at {self.url} serves {server['model']!r}, a model of another shape "
                                     f"than the policy (policy, server): {differ}")

    def _open_group(self) -> None:
        self._session = uuid.uuid4().hex
        self._call("/open_group", {"session": self._session})
        host = urlparse(self.url).hostname
        timeout = datetime.timedelta(seconds=self.timeout_s)
        store = torch.distributed.TCPStore(host, self.group_port, is_master=False, timeout=timeout)
        store = torch.distributed.PrefixStore(f"lit_align/{self._session}", store)
        if torch.cuda.is_available():
            self._group = torch.distributed.ProcessGroupNCCL(store, 0, 2)
        else:
            self._group = torch.distributed.ProcessGroupGloo(store, 0, 2, timeout)

    def push(self, model: torch.nn.Module, dtype: str) -> None:
        """Send the policy's merged (whole) weights to the server in ``dtype`` and check what it loaded."""
        if self._group is None:
            self._open_group()
        names, tensors = [], []
        for name, value in merged_weights(model):
            names.append(name)
            tensors.append(value.detach().to(DTYPES[dtype]) if value.is_floating_point() else value.detach())
        device = "cuda" if torch.cuda.is_available() else "cpu"
        flat = torch.cat([t.reshape(-1).to(device) for t in tensors])
        answer: dict = {}
        failure: list[BaseException] = []

        def ask():  # the server receives while we broadcast: its answer comes after the broadcast
            try:
                answer.update(self._call("/update_weights", {"session": self._session, "names": names,
                                                             "shapes": [list(t.shape) for t in tensors], "dtype": dtype}))
            except BaseException as e:  # noqa: BLE001 - raised below, in the caller's thread
                failure.append(e)

        thread = threading.Thread(target=ask, daemon=True)
        thread.start()
        options = torch.distributed.BroadcastOptions()
        options.rootRank = 0
        self._group.broadcast([flat], options).wait()
        thread.join(self.timeout_s)
        if failure:
            raise failure[0]
        expected = checksum(tensors)
        if not torch.isclose(torch.tensor(answer["checksum"], dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                             rtol=1e-9, atol=1e-6):
            raise RolloutServerError(f"rollout server at {self.url} loaded other weights than were pushed "
                                     f"(checksum {answer['checksum']!r}, pushed {expected!r})")
        self.pushes += 1

    def prepare(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        if not self.stale:
            return
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if distributed else 0
        server = self.health() if rank == 0 else None
        if server is not None:
            self._check_model(model, server)
        with self._full_weights():  # FSDP: every rank takes part in gathering the full weights; rank 0 sends them
            if server is not None:
                self.push(model, server["dtype"])
        if distributed:
            torch.distributed.barrier()  # every rank samples from the weights rank 0 just pushed
        self.stale = False

    # --- sampling -------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor,
               attention_mask: torch.Tensor, params: SamplingParams, seed: int = 0) -> Samples:
        self.prepare(model, tokenizer)
        requests = vllm_engine.requests(tokenizer, input_ids, attention_mask, params, seed)
        outputs = self._call("/generate", {"requests": requests})["outputs"]
        return vllm_engine.engine_samples(tokenizer, input_ids, attention_mask, params, outputs)

    def close(self) -> None:
        self._group, self._session, self.stale = None, None, True
