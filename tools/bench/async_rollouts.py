"""Server mode on this CPU: synchronous draws against drawing one batch ahead (``max_staleness``), vLLM's
server pinned to one core and the trainer to the other.

    .venv-vllm/bin/python -m tools.bench.async_rollouts --out outputs/bench/async_rollouts

Starts vLLM's own server (``python -m vllm.entrypoints.openai.api_server``, the docs' CPU flags, lit_align's
gloo weight-transfer plugin) on the embedded SmolLM2-135M-Instruct under ``taskset -c <server core>``;
this process pins itself to the other core with one torch thread and runs GRPO (LoRA r16, Countdown
prompts, the verifier reward) for ``--steps`` optimiser steps at ``max_staleness`` 0 and then 1 (tis_cap 2),
alternating ``--repeats`` times, same prompts, same settings. Per run: wall seconds per optimiser step
(fit start to end over its optimiser steps; the drawing-ahead run's first batch only draws, and is in its
time) and the median interval between steps that learnt, after the first. Printed as ratios ahead / sync.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(model: str, port: int, core: int, key: str, log_path: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLLM_")}
    env |= {"VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_API_KEY": key, "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}
    command = ["taskset", "-c", str(core), sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
               "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
               "--gpu-memory-utilization", "0.25", "--max-model-len", "1024", "--generation-config", "vllm",
               "--logprobs-mode", "processed_logprobs", "--no-enable-chunked-prefill", "--seed", "0",
               "--weight-transfer-config", '{"backend": "lit_align_gloo"}']
    return subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def _run(url: str, key: str, staleness: int, args) -> dict:
    import lightning as L
    import torch

    from lit_align.data.datamodule import AlignDataModule
    from lit_align.methods.grpo import GRPO
    from lit_align.modeling.models import LoRA
    from lit_align.sampling.generate import SamplingParams
    from lit_align.sampling.remote import VLLMServer
    from lit_align.tasks.countdown.source import CountdownSource
    from lit_align.tasks.countdown.verifier import CountdownVerifier

    class Clock(L.Callback):
        def __init__(self):
            self.ends, self.learnt = [], []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.ends.append(time.perf_counter())
            self.learnt.append(bool(outputs))

    torch.manual_seed(0)
    engine = VLLMServer(url, api_key=key, timeout_s=1800)
    module = GRPO(model="embedded:smollm2-135m-instruct", reward=CountdownVerifier(), num_generations=args.k,
                  lora=LoRA(r=16, alpha=32, dropout=0.0), rollout=engine, micro_batch_size=8,
                  generation=SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0),
                  max_staleness=staleness, tis_cap=2.0 if staleness else None, beta=0.0, loss_type="dapo",
                  optimizer=lambda p: torch.optim.AdamW(p, lr=1e-5))
    clock = Clock()
    data = AlignDataModule(CountdownSource(num_problems=64, with_traces=False), batch_size=args.prompts)
    start = time.perf_counter()
    L.Trainer(accelerator="cpu", max_steps=args.steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
              limit_val_batches=0, callbacks=[clock]).fit(module, data.connect(module.tokenizer, module.batch_kind))
    wall = time.perf_counter() - start
    engine.close()
    learning = [t for t, learnt in zip(clock.ends, clock.learnt) if learnt]
    intervals = [b - a for a, b in zip(learning, learning[1:])]
    return {"max_staleness": staleness, "optimizer_steps": module.global_step, "batches": len(clock.ends),
            "wall_s": wall, "s_per_step": wall / max(1, module.global_step),
            "steady_interval_s": statistics.median(intervals) if intervals else None, "pushes": engine.pushes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="outputs/bench/async_rollouts")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--server-core", type=int, default=1)
    p.add_argument("--trainer-core", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import secrets

    import torch

    from lit_align.modeling import models

    os.sched_setaffinity(0, {args.trainer_core})
    torch.set_num_threads(1)
    model = models.resolve("embedded:smollm2-135m-instruct")
    key, port = secrets.token_hex(8), _free_port()
    server = _serve(model, port, args.server_core, key, out / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        from lit_align.sampling.remote import RolloutServerError, VLLMServer

        probe, deadline = VLLMServer(url, api_key=key, connect_timeout_s=5), time.time() + 900
        while True:
            try:
                probe.health()
                break
            except RolloutServerError:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the server did not come up: {(out / 'server.log').read_text()[-2000:]}")
                time.sleep(3)
        results = []
        with open(out / "results.jsonl", "a") as sink:
            for repeat in range(args.repeats):
                for staleness in (0, 1):
                    row = _run(url, key, staleness, args) | {"repeat": repeat, "steps": args.steps,
                                                              "prompts": args.prompts, "k": args.k,
                                                              "max_new_tokens": args.max_new_tokens}
                    print(json.dumps(row), flush=True)
                    sink.write(json.dumps(row) + "\n")
                    results.append(row)
    finally:
        os.killpg(server.pid, 9)
        server.wait()
    for name in ("s_per_step", "steady_interval_s"):
        sync = [r[name] for r in results if r["max_staleness"] == 0 and r[name]]
        ahead = [r[name] for r in results if r["max_staleness"] == 1 and r[name]]
        if sync and ahead:
            print(f"{name}: sync {statistics.mean(sync):.1f} s, one batch ahead {statistics.mean(ahead):.1f} s, "
                  f"ratio {statistics.mean(ahead) / statistics.mean(sync):.3f}")


if __name__ == "__main__":
    main()
