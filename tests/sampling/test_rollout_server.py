"""Server mode on vLLM's own server: a real ``vllm.entrypoints.openai.api_server`` process on loopback with
lit_align's gloo weight-transfer engine (``vllm_gloo``, loaded through vLLM's plugin entry point) and the
client engine ``remote.VLLMServer``. Runs only where vLLM is installed (``-m vllm``)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm")

from lit_align.data.collate import collate_prompts  # noqa: E402
from lit_align.data.formats import prompt_ids  # noqa: E402
from lit_align.objectives.logprobs import completion_logprobs  # noqa: E402
from lit_align.sampling import weight_wire  # noqa: E402
from lit_align.sampling.engines import VLLM  # noqa: E402
from lit_align.sampling.generate import SamplingParams  # noqa: E402
from lit_align.sampling.remote import RolloutServerError, VLLMServer  # noqa: E402

from conftest import tiny_llama_hd32  # noqa: E402

ENGINE = dict(memory_utilization=0.1, max_model_len=512, cpu_kv_cache_gib=1)
KEY = "test-key-1"

# the flags docs/rollouts.md gives for a CPU server (a test below keeps the docs in step with this list)
SERVE_FLAGS = ["--dtype", "float32", "--enforce-eager", "--generation-config", "vllm",
               "--logprobs-mode", "processed_logprobs", "--no-enable-chunked-prefill", "--seed", "0",
               "--weight-transfer-config", '{"backend": "lit_align_gloo"}']


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _llama(folder, seed: int = 0, layers: int = 2):
    return tiny_llama_hd32(folder, seed, layers)


def _env(key: str | None) -> dict:
    # engines started earlier in this process leave VLLM_* behind; the server starts from a clean slate
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_") and k != "LOCAL_WORLD_SIZE"}
    env |= {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_SERVER_DEV_MODE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1"}
    return env | ({"VLLM_API_KEY": key} if key else {})


class Server:
    """``python -m vllm.entrypoints.openai.api_server`` on loopback, with the docs' flags."""

    def __init__(self, folder, log_path, port: int | None = None, key: str | None = KEY, extra: tuple = (),
                 memory: str = "0.1"):
        self.folder, self.port, self.key = folder, port or _free_port(), key
        self.log = open(log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder), "--host", "127.0.0.1",
             "--port", str(self.port), "--max-model-len", "512", "--gpu-memory-utilization", memory, *SERVE_FLAGS,
             *extra],
            stdout=self.log, stderr=subprocess.STDOUT, env=_env(key), start_new_session=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def engine(self, **kwargs) -> VLLMServer:
        return VLLMServer(self.url, api_key=self.key, **kwargs)

    def wait(self, timeout=600):
        engine = self.engine(connect_timeout_s=5)
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
            os.killpg(self.proc.pid, signal.SIGKILL)  # the server and its engine processes
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


def _gap(engine, policy, tokenizer, seed=1) -> float:
    """How far the server's log-probs of its own samples are from ``policy``'s (0 when it serves ``policy``)."""
    batch = _batch(tokenizer)
    samples = engine.sample(policy, tokenizer, batch.input_ids, batch.attention_mask,
                            SamplingParams(max_new_tokens=10, temperature=1.0), seed=seed)
    mine, _ = completion_logprobs(policy, samples)
    mask = samples.completion_mask.bool()
    return float((mine[mask] - samples.engine_logps[mask]).abs().max())


def _post(url, path, body, key=None):
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_server_samples_what_the_colocated_engine_samples(served):
    server, folder, model, tokenizer = served
    batch = _batch(tokenizer)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, n=2)
    remote = server.engine()
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
    """After the policy moves, the server's log-probs of its own tokens are the moved policy's, and it
    reports the version the trainer gave the push."""
    server, folder, model, tokenizer = served
    remote = server.engine()
    moved = _llama(folder.parent / "moved", seed=3)[0]  # another policy of the same shape
    for policy in (model, moved):
        remote.weights_changed()
        assert _gap(remote, policy, tokenizer) <= 1e-3
    assert remote.pushes == 2
    assert remote.health()["version"] == remote._sessions[server.url].expected_version


def test_the_trainers_weights_group_listens_on_loopback_only(served):
    server, _, model, tokenizer = served
    remote = server.engine()
    _gap(remote, model, tokenizer)
    assert remote._sessions[server.url].address[0] == "127.0.0.1"


def test_a_push_of_another_model_shape_is_refused_before_loading_and_the_server_keeps_serving(served, tmp_path):
    server, _, model, tokenizer = served
    remote = server.engine()
    assert _gap(remote, model, tokenizer) <= 1e-3
    deeper, _ = _llama(tmp_path / "deeper", layers=3)
    remote.weights_changed()
    started = time.monotonic()
    with pytest.raises(RolloutServerError, match=rf"rollout server at {server.url} answered /update_weights .*refused, "
                                                 r"nothing loaded: 'model\.layers\.2\..*' is not a weight of the served model"):
        _gap(remote, deeper, tokenizer)
    assert time.monotonic() - started < 30  # refused at the verdict, not after a transport timeout
    remote.weights_changed()
    assert _gap(remote, model, tokenizer) <= 1e-3  # the same group pushes again; the server served model all along


class ShortPush(VLLMServer):
    """A push whose bytes stop halfway (what a broken sender or a truncated transfer does)."""

    @staticmethod
    def _wire(tensors):
        flat = VLLMServer._wire(tensors)
        return flat[: flat.numel() // 2].clone()


def test_a_short_push_is_refused_and_the_previous_weights_keep_serving(served, tmp_path):
    server, folder, model, tokenizer = served
    good = server.engine()
    assert _gap(good, model, tokenizer) <= 1e-3
    moved = _llama(tmp_path / "moved", seed=4)[0]
    short = ShortPush(server.url, api_key=KEY, timeout_s=60)
    with pytest.raises(RolloutServerError, match=rf"rollout server at {server.url} answered /update_weights .*refused, "
                                                 r"nothing loaded: the received bytes' checksum .*a short or corrupted push"):
        _gap(short, moved, tokenizer)
    fresh = server.engine()  # a fresh client; the server must still hold model, untouched by the short push
    fresh.stale = False
    assert _gap(fresh, model, tokenizer) <= 1e-3


def test_a_wrong_key_is_refused_for_sampling_and_for_pushes(served):
    server, _, model, tokenizer = served
    with pytest.raises(RolloutServerError, match=rf"rollout server at {server.url} answered /v1/models with 401"):
        _gap(VLLMServer(server.url, api_key="not-the-key"), model, tokenizer)
    # vLLM leaves its weight routes open: lit_align's engine checks the token itself
    init = {"master_address": "127.0.0.1", "master_port": _free_port(), "world_size": 2, "token": "not-the-key"}
    status, text = _post(server.url, "/init_weight_transfer_engine", {"init_info": init})
    assert status == 500 and "token does not match the server's key" in text
    update = {"names": ["model.norm.weight"], "dtype_names": ["float32"], "shapes": [[64]], "nbytes": 256,
              "checksum": 0.0, "token": ""}
    assert _post(server.url, "/start_weight_update", {})[0] == 200
    status, text = _post(server.url, "/update_weights", {"update_info": update})
    assert status == 500 and "token does not match" in text  # refused at once: the group is never touched
    remote = server.engine()
    assert _gap(remote, model, tokenizer) <= 1e-3  # and the server takes the next push and serves on


def test_the_docs_give_the_flags_these_tests_start_the_server_with():
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "rollouts.md").read_text()
    for flag in SERVE_FLAGS:
        assert flag.replace('"', "") in text.replace('"', ""), flag
    assert "VLLM_SERVER_DEV_MODE=1" in text and "VLLM_API_KEY" in text and "--host 127.0.0.1" in text


def test_an_unreachable_server_is_named(tmp_path):
    port = _free_port()
    model, tokenizer = _llama(tmp_path / "m")
    engine = VLLMServer(f"http://127.0.0.1:{port}", connect_timeout_s=2)
    with pytest.raises(RolloutServerError, match=rf"rollout server at http://127.0.0.1:{port} did not answer /health .*resumes from its last checkpoint"):
        _gap(engine, model, tokenizer)


def test_a_server_that_dies_then_restarts_is_named_and_a_resumed_run_pushes_again(tmp_path):
    model, tokenizer = _llama(tmp_path / "m")
    server = Server(tmp_path / "m", tmp_path / "server.log")
    try:
        server.wait()
        engine = server.engine(timeout_s=60)
        assert _gap(engine, model, tokenizer) <= 1e-3
        server.stop()
        started = time.monotonic()
        with pytest.raises(RolloutServerError, match=rf"rollout server at {server.url} did not answer"):
            _gap(engine, model, tokenizer)
        assert time.monotonic() - started < 60
        server = Server(tmp_path / "m", tmp_path / "server.log", port=server.port)  # restarted, same address
        server.wait()
        with pytest.raises(RolloutServerError, match=rf"rollout server at {server.url} serves weights version 'default', "
                                                     r"not '.*' that this trainer pushed last: it restarted"):
            _gap(engine, model, tokenizer)
        resumed = server.engine(timeout_s=60)  # what a run resumed from its checkpoint holds
        assert _gap(resumed, model, tokenizer) <= 1e-3 and resumed.pushes == 1
    finally:
        server.stop()


# --------------------------------------------------------------------------- training through the server

import lightning as L  # noqa: E402

from lit_align.data.datamodule import AlignDataModule  # noqa: E402
from lit_align.methods.grpo import GRPO  # noqa: E402
from lit_align.methods.rloo import RLOO  # noqa: E402
from conftest import ChatPrompts, LengthReward, engine_gap_recorder, step_outputs_recorder  # noqa: E402


class SkipsPushes(VLLMServer):
    """The bug the pushes exist to prevent: the weights are pushed once, at the start, never again."""

    def weights_changed(self) -> None:
        pass


def _fit(method: str, engine, folder, steps: int = 2, callbacks=(), ckpt_path=None, **kwargs):
    """The engine-gap of every step that learnt; with ``kwargs`` or ``ckpt_path``, (gaps, the trained module)."""
    torch.manual_seed(0)
    common = dict(model=str(folder), reward=LengthReward(), rollout=engine, generation=SamplingParams(max_new_tokens=8, temperature=0.7),
                  optimizer=lambda p: torch.optim.Adam(p, lr=5e-2)) | kwargs
    module = RLOO(rloo_k=2, **common) if method == "rloo" else GRPO(num_generations=2, **common)
    gaps = engine_gap_recorder()
    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, use_distributed_sampler=False, limit_val_batches=0,
              callbacks=[gaps, *callbacks]).fit(module, AlignDataModule(ChatPrompts(), batch_size=2).connect(module.tokenizer, module.batch_kind),
                                                ckpt_path=ckpt_path)
    return (gaps.gaps, module) if kwargs or ckpt_path else gaps.gaps


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_online_rl_through_the_server_stays_in_sync(served, method):
    """Float32 on both sides: at every step the server's log-probs of its own tokens are the policy's within
    1e-3 nats/token, because the trainer pushed its weights after each optimiser step."""
    server, folder, _, _ = served
    engine = server.engine()
    gaps = _fit(method, engine, folder)
    assert len(gaps) == 2 and engine.pushes == 2  # the start, and after the first step
    assert max(gaps) <= 1e-3, gaps


def test_a_skipped_push_is_caught_by_the_same_check(served):
    server, folder, _, _ = served
    engine = SkipsPushes(server.url, api_key=KEY)
    gaps = _fit("rloo", engine, folder)
    assert engine.pushes == 1 and gaps[0] <= 1e-3
    assert gaps[1] > 1e-3, gaps



def test_with_max_staleness_zero_the_server_loop_learns_what_the_colocated_synchronous_loop_learns(served):
    server, folder, _, _ = served
    _, through_server = _fit("grpo", server.engine(), folder, max_staleness=0, tis_cap=None)
    local = VLLM(**ENGINE)
    try:
        _, colocated = _fit("grpo", local, folder, tis_cap=None)
    finally:
        local.close()
    theirs, ours = through_server.policy.state_dict(), colocated.policy.state_dict()
    assert all(torch.allclose(theirs[k], ours[k], atol=1e-5) for k in ours)


def test_drawing_one_batch_ahead_from_the_server_stays_within_the_bound_and_uses_its_log_probs(served, monkeypatch):
    """max_staleness 1: each batch is drawn while the one before trains; the update's importance weights use
    the log-probs the server returned for the weights it drew with (one step older than the policy's)."""
    import lit_align.objectives.policy_gradient as pg

    server, folder, _, _ = served
    corrections, real = [], pg.tis_weights
    monkeypatch.setattr(pg, "tis_weights", lambda old, engine, cap: corrections.append((old, engine)) or real(old, engine, cap))
    engine, seen = server.engine(), step_outputs_recorder()
    _, module = _fit("grpo", engine, folder, steps=3, callbacks=[seen], max_staleness=1, tis_cap=2.0)
    staleness = [out["metrics"]["train/staleness"] for out in seen.outputs if out]
    assert staleness == [0.0, 1.0, 1.0] and module.global_step == 3
    assert engine.pushes == 3  # the start, and after the first two steps (the third's weights sample nothing)
    # rows of groups whose rewards were all equal run no pass (skip_zero_advantage_groups): their old
    # log-probs stay 0 and nothing reads them, so the comparison is over the rows the trainer ran
    learnt = [old.ne(0).any(dim=1) for old, _ in corrections]
    assert all(rows.any() for rows in learnt), "a batch without a group learnt from says nothing here"
    old, drawn = corrections[0]
    rows = learnt[0]
    assert torch.allclose(old[rows] * (drawn[rows] != 0), drawn[rows], atol=1e-3)  # drawn with the weights that learn
    for (old, drawn), rows in zip(corrections[1:], learnt[1:]):
        assert not torch.allclose(old[rows] * (drawn[rows] != 0), drawn[rows], atol=1e-3)  # the server's, one step older


def test_a_run_stopped_by_a_killed_server_resumes_from_its_checkpoint_after_a_restart(tmp_path):
    """The server dies after the first optimiser step (a checkpoint was saved there): the next step fails
    with the error naming the address; after a restart at the same address the run resumes from the
    checkpoint, pushes its weights again and trains to the end in sync."""
    _llama(tmp_path / "m")
    server = Server(tmp_path / "m", tmp_path / "server.log")
    ckpt = tmp_path / "step1.ckpt"

    class SaveThenKill(L.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if trainer.global_step == 1 and not ckpt.exists():
                trainer.save_checkpoint(ckpt)
                server.stop()

    try:
        server.wait()
        with pytest.raises(RolloutServerError, match=rf"rollout server at {server.url} did not answer"):
            _fit("grpo", server.engine(timeout_s=60), tmp_path / "m", steps=3, callbacks=[SaveThenKill()])
        server = Server(tmp_path / "m", tmp_path / "server.log", port=server.port)
        server.wait()
        engine = server.engine(timeout_s=60)
        gaps, module = _fit("grpo", engine, tmp_path / "m", steps=3, ckpt_path=str(ckpt))
        assert module.global_step == 3 and engine.pushes == 2 and max(gaps) <= 1e-3, gaps
    finally:
        server.stop()
