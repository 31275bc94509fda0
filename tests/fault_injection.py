"""Test helpers loaded by class_path in training processes: fault injection (a callback that kills its
own process after a given optimiser step), records of what a run did, and a reward that varies."""

from __future__ import annotations

import json
import os
import signal

import lightning as L
import torch

from lit_align.rewards.base import Reward
from lit_align.lightning.fsdp import TransformerFSDP
from lit_align.sampling.engines import HFGenerate, RolloutEngine


class KillAfterStep(L.Callback):
    """Send ``signal_name`` (SIGKILL, SIGTERM, ...) to this process once ``step`` optimiser steps are done."""

    def __init__(self, step: int, signal_name: str = "SIGKILL"):
        self.step, self.signal = step, getattr(signal, signal_name)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal)


class KillAfterBatch(L.Callback):
    """Send ``signal_name`` to this process at the end of its ``batch``-th training batch (1-based), whatever
    the optimiser step: with dynamic sampling a batch may only draw, so this can stop a run between the
    draws of one generation batch."""

    def __init__(self, batch: int, signal_name: str = "SIGTERM"):
        self.batch, self.signal, self.seen = batch, getattr(signal, signal_name), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.batch:
            os.kill(os.getpid(), self.signal)


class SaveAtBatch(L.Callback):
    """Save a checkpoint to ``path`` at the end of this process's ``batch``-th training batch (1-based), as a
    time-based ``ModelCheckpoint(train_time_interval=...)`` may, whatever the optimiser step."""

    def __init__(self, batch: int, path: str):
        self.batch, self.path, self.seen = batch, path, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.batch:
            trainer.save_checkpoint(self.path)


class GlobalLossCurve(L.Callback):
    """Record the global-batch loss after every optimiser step to ``path`` (JSON list), on rank 0.

    Each rank's loss is its share of the global mean scaled by the world size (SFT) or the mean over
    its equal share of pairs (DPO), so the mean over ranks is the loss of the whole global batch.
    """

    def __init__(self, path: str):
        self.path, self.values = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"].detach().clone()
        if trainer.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(loss)
            loss /= trainer.world_size
        self.values.append(loss.item())

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            import json

            with open(self.path, "w") as f:
                json.dump(self.values, f)


class StepProgress(L.Callback):
    """On rank 0, write the optimiser step reached to ``path`` after every step, then sleep ``seconds``.

    Slows a tiny run down enough for a test to watch ``path`` and send a signal part way through.
    """

    def __init__(self, path: str, seconds: float = 0.0):
        self.path, self.seconds = path, seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.is_global_zero:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                f.write(str(trainer.global_step))
            os.replace(tmp, self.path)
        if self.seconds:
            import time

            time.sleep(self.seconds)


class RunRecord(L.Callback):
    """Record what this process's ``fit`` did, for a resume test to check.

    At train start: the checkpoint the trainer resumed from (``trainer.ckpt_path``; None when it started
    from scratch) and the optimiser step it starts at (restored from that checkpoint, else 0). After
    every micro-batch: the optimiser step reached, so the list's length is the number of batches this
    process trained on. At train end: the JSON record at ``path`` and the module's whole state dict at
    ``path + ".pt"``, i.e. the weights at the end of the run, not those of the last periodic checkpoint.
    A process that is killed never reaches train end and writes nothing.
    """

    def __init__(self, path: str):
        self.path = path
        self.record: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        ckpt = trainer.ckpt_path
        self.record = {"ckpt_path": None if ckpt is None else str(ckpt), "start_step": trainer.global_step, "steps": []}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.record["steps"].append(trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        torch.save({k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}, f"{self.path}.pt")
        with open(self.path, "w") as f:
            json.dump(self.record, f)


class DistinctCharacters(Reward):
    """Reward: the share of a completion's characters that are distinct (0 for an empty completion).

    Unlike the Countdown verifier, which gives a tiny random policy 0 every time, this varies from
    sample to sample, so RLOO's advantages are non-zero and every step really changes the weights.
    """

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
        return torch.tensor([len(set(text)) / max(1, len(text)) for text in completions])


class HalfFlat(Reward):
    """``DistinctCharacters`` for about half of the prompts and 0.5 for every completion of the others
    (chosen by a checksum of the record), so dynamic sampling sets groups aside and draws again."""

    def __call__(self, prompts: list, completions: list[str], records: list[dict]) -> torch.Tensor:
        import zlib

        varied = DistinctCharacters()(prompts, completions, records)
        flat = torch.tensor([zlib.crc32(json.dumps(r, sort_keys=True).encode()) % 2 == 0 for r in records])
        return torch.where(flat, torch.full_like(varied, 0.5), varied)



class PromptSeededGenerate(HFGenerate):
    """HF sampling in which a prompt's completions depend on the prompt and the weights only, not on the
    batch or rank that drew it: each prompt is sampled on its own with a seed from its tokens, and each
    completion is then cut after a length drawn from the same checksum (2 .. max_new_tokens), as if a stop
    token ended it there. One process and two DDP ranks then learn from the same samples, with token
    counts that differ between ranks."""

    def sample(self, model, tokenizer, input_ids, attention_mask, params, seed=0):
        import zlib

        from lit_align.sampling.generate import Samples, concat_samples, sample

        parts, keys = [], []
        for i in range(input_ids.size(0)):
            key = zlib.crc32(input_ids[i][attention_mask[i].bool()].cpu().numpy().tobytes())
            parts.append(sample(model, tokenizer, input_ids[i : i + 1], attention_mask[i : i + 1], params, seed=key))
            keys += [key + j for j in range(params.n)]
        s = concat_samples(parts, tokenizer.pad_token_id)
        ids, mask = s.completion_ids.clone(), s.completion_mask.clone()
        for row, key in enumerate(keys):
            keep = min(int(mask[row].sum()), 2 + key % (params.max_new_tokens - 1))
            mask[row, keep:] = 0
            ids[row, keep:] = tokenizer.pad_token_id
        texts = [tokenizer.decode(ids[r][mask[r].bool()].tolist(), skip_special_tokens=True) for r in range(len(keys))]
        return Samples(s.prompt_ids, s.prompt_mask, ids, mask, texts, torch.zeros(len(keys), dtype=torch.bool),
                       s.temperature, None)


class CPUFSDP(TransformerFSDP):
    """``TransformerFSDP`` on CPU processes over gloo, for tests. Lightning refuses its own FSDP strategy on a
    CPU accelerator (a subclass passes that check), and Lightning hands FSDP no device on CPU, which FSDP
    then refuses; PyTorch's FSDP itself runs on CPU when told the device."""

    def __init__(self, **kwargs):
        super().__init__(process_group_backend="gloo", **kwargs)

    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                                           sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs)
        from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing

        _setup_activation_checkpointing(wrapped, self._activation_checkpointing_kwargs)
        return wrapped


class CopyingEngine(RolloutEngine):
    """A colocated engine that, like vLLM, samples from a copy of the policy's weights of its own: ``prepare``
    copies the full merged weights, read inside the gathering context the method hands it, into a plain
    model, and samples come from that copy with its log-probs (``engine_logps``). Only the engine is a
    stand-in; FSDP's gathering, and where the method calls it, are real. ``skip_push`` plants the bug of
    an engine that never takes the weights after its start."""

    def __init__(self, skip_push: bool = False):
        self.skip_push, self.copy, self.stale, self.syncs = skip_push, None, False, 0

    def weights_changed(self) -> None:
        self.stale = self.copy is not None

    def prepare(self, model, tokenizer) -> None:
        if self.copy is not None and (not self.stale or self.skip_push):
            self.stale = False
            return
        from lit_align.sampling.engines import merged_weights

        with self._full_weights():
            weights = {k: v.detach().clone() for k, v in merged_weights(model)}
        if self.copy is None:
            from transformers import AutoModelForCausalLM

            inner = model.get_base_model() if hasattr(model, "get_base_model") else model
            self.copy = AutoModelForCausalLM.from_config(inner.config).eval()
        else:
            self.syncs += 1
        self.copied = {"copied": sorted(weights), "numel": sum(v.numel() for v in weights.values())}
        missing, unexpected = self.copy.load_state_dict(weights, strict=False)
        if unexpected or [k for k in missing if k != "lm_head.weight"]:  # a tied head is the embedding
            raise KeyError(f"weights do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.stale = False

    @torch.no_grad()
    def sample(self, model, tokenizer, input_ids, attention_mask, params, seed=0):
        import dataclasses

        from lit_align.objectives.logprobs import completion_logprobs
        from lit_align.sampling.generate import sample

        self.prepare(model, tokenizer)
        s = sample(self.copy, tokenizer, input_ids, attention_mask, params, seed=seed)
        logps, _ = completion_logprobs(self.copy, s)
        return dataclasses.replace(s, engine_logps=logps * s.completion_mask)


class EngineRecord(L.Callback):
    """Write the rollout engine's weight pushes (``syncs``) and what it copied last (``CopyingEngine``) to
    ``path`` at the end of fit or test, on rank 0."""

    def __init__(self, path: str):
        self.path = path

    def _write(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            with open(self.path, "w") as f:
                json.dump({"syncs": pl_module.rollout.syncs, **getattr(pl_module.rollout, "copied", {})}, f)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._write(trainer, pl_module)


class RecordCurriculum(L.Callback):
    """Each rank writes ``path.rank<N>.json`` at train end: the problems of every batch it trained on and
    its data module's curriculum state (the posterior every rank must agree on)."""

    def __init__(self, path: str):
        self.path, self.batches = path, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append({"draw": batch.draw_index, "problems": list(batch.problem_ids),
                             "sizes": None if batch.group_sizes is None else list(batch.group_sizes)})

    def on_train_end(self, trainer, pl_module) -> None:
        with open(f"{self.path}.rank{trainer.global_rank}.json", "w") as f:
            json.dump({"batches": self.batches, "curriculum": trainer.datamodule.curriculum.state_dict()}, f)
