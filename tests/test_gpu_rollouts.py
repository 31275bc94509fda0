"""Rollout checks that only a GPU can run, ready for the first GPU loan (``bash tools/bench/gpu_rollouts.sh``):
sleep mode on a real engine, vLLM's own server on a GPU (on its own GPU where two exist), two server
replicas behind one client, tensor parallelism over two GPUs (where two exist), and QLoRA with vLLM refused. Each with the log-prob agreement check of the CPU tests. Skipped without CUDA and vLLM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.vllm]
pytest.importorskip("vllm")
sys.path.insert(0, str(Path(__file__).parent / "sampling"))

from test_rollout_server import Server, _fit, _llama  # noqa: E402

from lit_align.sampling.engines import VLLM  # noqa: E402
from lit_align.sampling.remote import VLLMServer  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu_model")
    _llama(folder)
    return folder


def test_sleep_mode_on_a_real_engine_keeps_the_engine_in_sync(model_dir):
    """Between samplings the engine sleeps (weights and KV cache released); it wakes its weights, takes the
    push, then wakes its cache: the log-prob gap stays <= 1e-3 at every step."""
    engine = VLLM(dtype="float32", memory_utilization=0.2, max_model_len=512, sleep_between_rollouts=True)
    try:
        gaps = _fit("rloo", engine, model_dir, steps=3)
    finally:
        engine.close()
    assert len(gaps) == 3 and max(gaps) <= 1e-3, gaps


def test_the_server_on_a_gpu_of_its_own_stays_in_sync(model_dir, tmp_path, monkeypatch):
    """vLLM's server on the last GPU (the only one on a one-GPU machine, shared), the gloo plugin for pushes."""
    last = torch.cuda.device_count() - 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", str(last))  # the server process sees only its GPU
    server = Server(model_dir, tmp_path / "server.log", memory="0.3")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    try:
        server.wait()
        engine = server.engine()
        gaps = _fit("grpo", engine, model_dir)
        assert engine.pushes == 2 and max(gaps) <= 1e-3, gaps
    finally:
        server.stop()


def test_two_server_replicas_behind_one_client_stay_in_sync(model_dir, tmp_path):
    """Two servers (data-parallel replicas the client spreads rows over) on the same GPU: both take every push."""
    servers = [Server(model_dir, tmp_path / f"server{i}.log", memory="0.3") for i in range(2)]
    try:
        for server in servers:
            server.wait()
        engine = VLLMServer([s.url for s in servers], api_key=servers[0].key)
        gaps = _fit("grpo", engine, model_dir)
        assert engine.pushes == 4 and max(gaps) <= 1e-3, gaps  # 2 servers x (start + after step 1)
    finally:
        for server in servers:
            server.stop()


def test_pushes_through_vllms_own_nccl_engine_stay_in_sync(model_dir, tmp_path):
    """transfer: nccl: the server started with vLLM's NCCL backend, pushed through vLLM's trainer-side engine."""
    server = Server(model_dir, tmp_path / "server.log", memory="0.3",
                    extra=("--weight-transfer-config", '{"backend": "nccl"}'))  # the later flag wins
    try:
        server.wait()
        engine = VLLMServer(server.url, api_key=server.key, transfer="nccl")
        gaps = _fit("grpo", engine, model_dir)
        assert engine.pushes == 2 and max(gaps) <= 1e-3, gaps
    finally:
        server.stop()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="tensor parallelism needs two GPUs")
def test_a_tensor_parallel_server_stays_in_sync(model_dir, tmp_path):
    server = Server(model_dir, tmp_path / "server.log", memory="0.3", extra=("--tensor-parallel-size", "2"))
    try:
        server.wait()
        engine = server.engine()
        gaps = _fit("grpo", engine, model_dir)
        assert engine.pushes == 2 and max(gaps) <= 1e-3, gaps
    finally:
        server.stop()


def test_qlora_with_vllm_is_refused_with_the_reason():
    from lit_align.methods.rloo import RLOO
    from lit_align.modeling.models import LoRA

    with pytest.raises(ValueError, match="4-bit|load_in_4bit"):
        RLOO(model="tiny:causal-lm", reward=lambda *a: None, load_in_4bit=True, lora=LoRA(r=4, alpha=8), rollout=VLLM())
