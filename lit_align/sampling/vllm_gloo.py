"""lit_align's weight-transfer engine for vLLM's own server, over gloo: pushes reach a server on CPUs.

vLLM's server takes trainer weights through its RL routes (``/init_weight_transfer_engine``,
``/start_weight_update``, ``/update_weights``, ``/finish_weight_update``), each handed to the weight-
transfer engine its ``--weight-transfer-config`` names. vLLM's own engines need GPUs (NCCL, CUDA IPC);
this one moves the bytes over a gloo group and so runs wherever torch does. lit_align registers it with
vLLM's plugin entry point (``vllm.general_plugins`` in pyproject.toml): installed in the server's
environment, a server started with ``--weight-transfer-config '{"backend": "lit_align_gloo"}'`` uses it.

What it adds over a plain broadcast (``weight_wire`` has the protocol):

- **a key**: vLLM's ``--api-key`` guards ``/v1`` but not the RL routes, so the engine itself compares the
  token of every init and push with the server's ``VLLM_API_KEY`` (give the key that way, not as a flag,
  so the engine process sees it too) and refuses a mismatch;
- **nothing loaded before it is checked**: names, shapes, dtype and byte count against the served model
  (its own configuration, built on the meta device) before any byte travels, and the checksum of the
  received bytes before any weight changes; a refused push leaves the served weights as they were and
  the group usable;
- **a failed load does not leave a broken model**: should loading raise after it began, the served
  checkpoint is reloaded from disk and the error says so.

Imported only inside vLLM processes: it needs vLLM.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
from vllm.distributed.weight_transfer.base import WeightTransferEngine, WeightTransferInitInfo, WeightTransferUpdateInfo

from lit_align.sampling import weight_wire as wire

log = logging.getLogger(__name__)


@dataclass
class GlooInitInfo(WeightTransferInitInfo):
    master_address: str
    master_port: int
    world_size: int
    rank_offset: int = 1
    timeout_s: float = 600.0
    token: str = ""


@dataclass
class GlooUpdateInfo(WeightTransferUpdateInfo):
    names: list[str]
    dtype_names: list[str]
    shapes: list[list[int]]
    nbytes: int
    checksum: float
    token: str = ""


def served_weights(hf_config) -> dict[str, tuple[int, ...]]:
    """Every weight of the served model, Hugging Face naming, with its shape: the model built from its own
    configuration on the meta device (no memory, no files, hub ids included)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def refused(reason: str) -> PermissionError:
    return PermissionError(f"weight push refused, nothing loaded: {reason}")


class GlooWeightTransferEngine(WeightTransferEngine[GlooInitInfo, GlooUpdateInfo]):
    """Receives a trainer's weights over a gloo group (the trainer rank 0, the server's workers after it)."""

    init_info_cls = GlooInitInfo
    update_info_cls = GlooUpdateInfo
    supports_draft_weight_update = False

    def __init__(self, config, vllm_config, device, model) -> None:
        super().__init__(config, vllm_config, device, model)
        self.group = None
        self.expected: dict[str, tuple[int, ...]] | None = None
        self.served_dtype = str(self.model_config.dtype).removeprefix("torch.")

    def _check_token(self, token: str) -> None:
        if not wire.token_matches(token, os.environ.get("VLLM_API_KEY")):
            raise refused("its token does not match the server's key (VLLM_API_KEY)")

    def init_transfer_engine(self, init_info: GlooInitInfo) -> None:
        self._check_token(init_info.token)
        parallel = self.parallel_config
        rank = init_info.rank_offset + parallel.data_parallel_index * parallel.world_size + parallel.rank
        timeout = datetime.timedelta(seconds=init_info.timeout_s)
        store = torch.distributed.TCPStore(init_info.master_address, init_info.master_port, init_info.world_size,
                                           False, timeout)
        # bind gloo's own sockets where the trainer is reached: loopback stays loopback
        options = torch.distributed.ProcessGroupGloo._Options()
        options._timeout = timeout
        options._devices = [torch.distributed.ProcessGroupGloo.create_device(
            hostname="127.0.0.1" if init_info.master_address in ("127.0.0.1", "localhost") else "")]
        if self.group is not None:
            self.shutdown()
        self.group = torch.distributed.ProcessGroupGloo(store, rank, init_info.world_size, options)
        if self.expected is None:
            self.expected = served_weights(self.model_config.hf_config)
        log.info("lit_align gloo weight transfer: rank %d of %d, trainer at %s:%d", rank, init_info.world_size,
                 init_info.master_address, init_info.master_port)

    def start_weight_update(self) -> None:
        """Nothing to prepare: a push is checked, received and loaded whole in ``receive_weights``."""

    def finish_weight_update(self) -> None:
        """Nothing left: ``receive_weights`` loaded the push and finished vLLM's reload."""

    def update_weights(self, update_info: dict) -> None:  # no device to synchronise on a CPU
        self.receive_weights(self.parse_update_info(update_info))
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def _verdict(self, accept: bool) -> bool:
        flag = torch.tensor([wire.VERDICT_ACCEPT if accept else wire.VERDICT_REFUSE], dtype=torch.int32)
        options = torch.distributed.AllreduceOptions()
        options.reduceOp = torch.distributed.ReduceOp.MIN
        self.group.allreduce([flag], options).wait()
        return int(flag) == wire.VERDICT_ACCEPT

    def receive_weights(self, update_info: GlooUpdateInfo) -> None:
        if self.group is None:
            raise RuntimeError("lit_align gloo weight transfer not initialised: POST /init_weight_transfer_engine first")
        # a wrong token is not our trainer: refused without touching the group, which it cannot stall
        self._check_token(update_info.token)
        reason = wire.refusal(update_info.names, update_info.dtype_names, update_info.shapes, update_info.nbytes,
                              self.expected, self.served_dtype)
        if not self._verdict(reason is None):  # every rank learns whether the bytes will come
            raise refused(reason or "another worker of this server refused it")
        dtype = wire.DTYPES[self.served_dtype]
        sizes = [int(torch.Size(self.expected[n]).numel()) for n in update_info.names]
        flat = torch.empty(sum(sizes), dtype=dtype)  # sized from the served model, never from the request
        options = torch.distributed.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([flat], options).wait()
        tensors = [part.view(self.expected[n]) for part, n in zip(flat.split(sizes), update_info.names)]
        got = wire.checksum(tensors)
        if not torch.isclose(torch.tensor(got, dtype=torch.float64), torch.tensor(update_info.checksum, dtype=torch.float64),
                             rtol=1e-9, atol=1e-6):
            raise refused(f"the received bytes' checksum {got!r} is not the announced {update_info.checksum!r} "
                          "(a short or corrupted push)")
        self._load(list(zip(update_info.names, (t.to(self.device) for t in tensors))))

    def _load(self, weights: list[tuple[str, torch.Tensor]]) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload, initialize_layerwise_reload

        try:
            initialize_layerwise_reload(self.model)
            self.model.load_weights(weights)
            finalize_layerwise_reload(self.model, self.model_config)
        except Exception as e:
            log.exception("loading a pushed weight failed; reloading the served checkpoint from disk")
            from vllm.model_executor.model_loader.reload import reload_weights

            reload_weights(self.vllm_config, self.model, None, None, True)
            raise RuntimeError(f"loading the pushed weights failed ({type(e).__name__}: {e}); the server reloaded "
                               "its checkpoint from disk and serves that") from e

    def shutdown(self) -> None:
        self.group = None


def register() -> None:
    """vLLM's plugin entry point (``vllm.general_plugins``): make ``lit_align_gloo`` a weight-transfer backend."""
    from vllm.distributed.weight_transfer.factory import WeightTransferEngineFactory

    if wire.BACKEND not in WeightTransferEngineFactory._registry:
        WeightTransferEngineFactory.register_engine(wire.BACKEND, GlooWeightTransferEngine)
