"""The rollout server (``lit_align.sampling.server``) and its client engine (``remote.VLLMServer``): a real
server process with vLLM on CPU, weights pushed over gloo. Runs only where vLLM is installed (``-m vllm``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

from lit_align.data.collate import collate_prompts  # noqa: E402
from lit_align.data.formats import prompt_ids  # noqa: E402
from lit_align.objectives.logprobs import completion_logprobs  # noqa: E402
from lit_align.sampling.engines import VLLM  # noqa: E402
from lit_align.sampling.generate import SamplingParams  # noqa: E402
from lit_align.sampling.remote import RolloutServerError, VLLMServer  # noqa: E402

from conftest import tiny_llama_hd32  # noqa: E402

ENGINE = dict(memory_utilization=0.1, max_model_len=512, cpu_kv_cache_gib=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _llama(folder, seed: int = 0, layers: int = 2):
    return tiny_llama_hd32(folder, seed, layers)


def _clean_env() -> dict:
    # engines started earlier in this process leave VLLM_* behind; the server starts from a clean slate
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_") and k != "LOCAL_WORLD_SIZE"}
    return env | {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


class Server:
    def __init__(self, folder, log_path):
        self.port, self.group_port = _free_port(), _free_port()
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lit_align.sampling.server", "--model", str(folder), "--host", "127.0.0.1",
             "--port", str(self.port), "--group-port", str(self.group_port), "--max-model-len", "512",
             "--memory-utilization", "0.1", "--cpu-kv-cache-gib", "1", "--group-timeout", "120"],
            stdout=self.log, stderr=subprocess.STDOUT, env=_clean_env())
        self.url = f"http://127.0.0.1:{self.port}"

    def wait(self, timeout=300):
        engine = VLLMServer(self.url, self.group_port, connect_timeout_s=5)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {open(self.log.name).read()[-3000:]}")
            try:
                return engine.health()
            except RolloutServerError:
                time.sleep(2)
        raise TimeoutError("the server did not come up")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("served")
    model, tokenizer = _llama(folder)
    server = Server(folder, folder / "server.log")
    try:
        server.wait()
        yield server, folder, model, tokenizer
    finally:
        server.stop()


def _batch(tokenizer, n=3):
    records = [{"prompt": [{"role": "user", "content": f"say something {i}"}]} for i in range(n)]
    return collate_prompts([prompt_ids(r, "t", tokenizer) for r in records], records, tokenizer.pad_token_id)


def test_the_server_samples_what_the_colocated_engine_samples(served):
    server, folder, model, tokenizer = served
    batch = _batch(tokenizer)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, n=2)
    remote = VLLMServer(server.url, server.group_port)
    theirs = remote.sample(model, tokenizer, batch.input_ids, batch.attention_mask, params, seed=5)
    assert remote.pushes == 1  # the first sampling pushed the policy's weights
    local = VLLM(**ENGINE)
    try:
        ours = local.sample(model, tokenizer, batch.input_ids, batch.attention_mask, params, seed=5)
    finally:
        local.close()
    assert torch.equal(theirs.completion_ids, ours.completion_ids) and theirs.texts == ours.texts
    assert torch.equal(theirs.truncated, ours.truncated)
    assert torch.allclose(theirs.engine_logps, ours.engine_logps, atol=1e-5)


def test_pushed_weights_are_the_ones_sampled_from(served):
    """After the policy moves, the server's log-probs of its own greedy tokens are the moved policy's."""
    server, folder, model, tokenizer = served
    batch = _batch(tokenizer)
    params = SamplingParams(max_new_tokens=10, temperature=1.0)
    remote = VLLMServer(server.url, server.group_port)
    moved = _llama(folder.parent / "moved", seed=3)[0]  # another policy of the same shape
    for policy in (model, moved):
        remote.weights_changed()
        samples = remote.sample(policy, tokenizer, batch.input_ids, batch.attention_mask, params, seed=1)
        mine, _ = completion_logprobs(policy, samples)
        mask = samples.completion_mask.bool()
        assert torch.allclose(mine[mask], samples.engine_logps[mask], atol=1e-3)
    assert remote.pushes == 2 and remote.health()["version"] >= 2


def test_a_server_of_another_model_shape_is_refused_by_address(served, tmp_path):
    server, _, _, tokenizer = served
    other, _ = _llama(tmp_path / "deeper", layers=3)
    batch = _batch(tokenizer, n=1)
    with pytest.raises(RolloutServerError, match=rf"rollout server at {server.url} serves .* another shape.*num_hidden_layers"):
        VLLMServer(server.url, server.group_port).sample(other, tokenizer, batch.input_ids, batch.attention_mask,
                                                          SamplingParams(max_new_tokens=4))


def test_an_unreachable_server_is_named(tmp_path):
    port = _free_port()
    model, tokenizer = _llama(tmp_path / "m")
    batch = _batch(tokenizer, n=1)
    engine = VLLMServer(f"http://127.0.0.1:{port}", _free_port(), connect_timeout_s=2)
    with pytest.raises(RolloutServerError, match=rf"rollout server at http://127.0.0.1:{port} did not answer /health .*resumes from its last checkpoint"):
        engine.sample(model, tokenizer, batch.input_ids, batch.attention_mask, SamplingParams(max_new_tokens=4))


def test_a_server_that_dies_mid_run_is_named(tmp_path):
    model, tokenizer = _llama(tmp_path / "m")
    server = Server(tmp_path / "m", tmp_path / "server.log")
    try:
        server.wait()
        engine = VLLMServer(server.url, server.group_port, timeout_s=60)
        batch = _batch(tokenizer, n=1)
        engine.sample(model, tokenizer, batch.input_ids, batch.attention_mask, SamplingParams(max_new_tokens=4))
        server.stop()
        with pytest.raises(RolloutServerError, match=rf"rollout server at {server.url} did not answer /generate"):
            engine.sample(model, tokenizer, batch.input_ids, batch.attention_mask, SamplingParams(max_new_tokens=4))
    finally:
        server.stop()


# --------------------------------------------------------------------------- training through the server

import lightning as L  # noqa: E402

from lit_align.data.datamodule import AlignDataModule  # noqa: E402
from lit_align.methods.grpo import GRPO  # noqa: E402
from lit_align.methods.rloo import RLOO  # noqa: E402
from conftest import ChatPrompts, LengthReward, engine_gap_recorder  # noqa: E402


class SkipsPushes(VLLMServer):
    """The bug the pushes exist to prevent: the weights are pushed once, at the start, never again."""

    def weights_changed(self) -> None:
        pass


def _fit(method: str, engine: VLLMServer, folder, steps: int = 2) -> list[float]:
    torch.manual_seed(0)
    common = dict(model=str(folder), reward=LengthReward(), rollout=engine, generation=SamplingParams(max_new_tokens=8, temperature=0.7),
                  optimizer=lambda p: torch.optim.Adam(p, lr=5e-2))
    module = RLOO(rloo_k=2, **common) if method == "rloo" else GRPO(num_generations=2, **common)
    gaps = engine_gap_recorder()
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
              callbacks=[gaps]).fit(module, AlignDataModule(ChatPrompts(), batch_size=2).connect(module.tokenizer, module.batch_kind))
    return gaps.gaps


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_online_rl_through_the_server_stays_in_sync(served, method):
    """Float32 on both sides: at every step the server's log-probs of its own tokens are the policy's within
    1e-3 nats/token, because the trainer pushed its weights after each optimiser step."""
    server, folder, _, _ = served
    engine = VLLMServer(server.url, server.group_port)
    gaps = _fit(method, engine, folder)
    assert len(gaps) == 2 and engine.pushes == 2  # the start, and after the first step
    assert max(gaps) <= 1e-3, gaps


def test_a_skipped_push_is_caught_by_the_same_check(served):
    server, folder, _, _ = served
    engine = SkipsPushes(server.url, server.group_port)
    gaps = _fit("rloo", engine, folder)
    assert engine.pushes == 1 and gaps[0] <= 1e-3
    assert gaps[1] > 1e-3, gaps
