"""Direct Preference Optimization (Rafailov et al., 2023) and its IPO / conservative variants.

With sequence log-probabilities log pi(y|x) of the policy and log pi_ref(y|x) of a fixed reference,

    h    = [log pi(y_c|x) - log pi_ref(y_c|x)] - [log pi(y_r|x) - log pi_ref(y_r|x)]
    DPO  : L = -E log sigma(beta h)
    cDPO : L = -E [(1 - eps) log sigma(beta h) + eps log sigma(-beta h)]     (label smoothing eps)
    IPO  : L =  E (h - 1 / (2 beta))^2                                        (Azar et al., 2023)

plus an optional NLL term on the chosen response (``nll_weight`` times its per-token mean).
Implicit rewards beta * (log pi - log pi_ref) come back from the loss beside it (``losses.PreferenceResult``)
and are logged as ``rewards/chosen`` etc.

Chosen and rejected responses share their prompt, and with ``share_prompt`` (on by default on CPU)
each pair's prompt runs once for both responses: in the policy's forward and backward and in the
reference's forward. Each pair runs as a prompt tree (``objectives.prompt_tree``: one row holding the
prompt, then each response as a branch under a mask; trees regrouped by size as rows are). Where the
model's attention takes no custom mask (flash-attention) the prompt's keys and values serve both
responses instead (``objectives.shared_prompt``), unless blocks are wrapped for activation
checkpointing (which would replay a block into the prompt's cache) or the model is FSDP-sharded
(every block forward is a collective, so ranks must run as many forwards as one another); then every
row runs whole, and the log says why. Log-probs and gradients are those of running every row whole
(tests). On the 2-core CPU the trees made the benchmark's DPO step 0.68 x the whole-row path's
(paired median of 12 steps, docs/benchmarks.md); on GPUs ``share_prompt`` is off unless asked for
(not measured there).

The reference is chosen in config: ``adapter_off`` (the policy with its LoRA adapter disabled) or
``copy`` (a frozen copy of the starting model); with ``precompute_reference`` its log-probs for the
train and val splits are computed once before training and cached on disk. The pairs for that pass
are handed to the method before the run (``use_data``), never looked up in the trainer; a test split
is scored against the live reference.

IPO's log-probs are per-token averages by default (``IPO(normalization="token_mean")``): h is then a
difference of mean token log-ratios, as in the IPO authors' experiments and TRL, so a beta tuned there
means the same here. ``normalization="sum"`` uses summed sequence log-probs, the paper's definition;
its beta is not comparable (h grows with length). Sigmoid DPO and cDPO always sum.

Dropout is off in the policy by default (``disable_dropout``): with it on, the policy/reference
log-ratio would be noisy even before any update.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from jsonargparse import lazy_instance
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import ActivationWrapper

from lit_align.modeling import models
from lit_align.objectives import logprobs, losses, ops, prompt_tree, shared_prompt
from lit_align.data.collate import PreferenceBatch, split_at_responses
from lit_align.data.datamodule import DataView
from lit_align.data.kinds import PreferenceKind
from lit_align.methods.base import PolicyModule

log = logging.getLogger(__name__)


class PreferenceLoss:
    """A DPO-family objective: ``loss(logps) -> losses.PreferenceResult`` (the loss and implicit rewards).

    ``logps`` (``losses.PreferenceLogps``) holds each pair's summed log-probs of the chosen and rejected
    responses under the policy and the reference, and their token counts, for objectives that read
    per-token means.
    """

    def __call__(self, logps: losses.PreferenceLogps) -> losses.PreferenceResult:
        raise NotImplementedError


class SigmoidDPO(PreferenceLoss):
    def __init__(self, beta: float = 0.1):
        """
        Args:
            beta: strength of the implicit KL constraint to the reference.
        """
        self.beta = beta

    def __call__(self, logps: losses.PreferenceLogps) -> losses.PreferenceResult:
        return losses.dpo_loss(logps, self.beta)


class ConservativeDPO(PreferenceLoss):
    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.1):
        """
        Args:
            beta: strength of the implicit KL constraint to the reference.
            label_smoothing: assumed probability that a preference label is flipped.
        """
        self.beta, self.label_smoothing = beta, label_smoothing

    def __call__(self, logps: losses.PreferenceLogps) -> losses.PreferenceResult:
        return losses.cdpo_loss(logps, self.beta, self.label_smoothing)


class IPO(PreferenceLoss):
    def __init__(self, beta: float = 0.1, normalization: Literal["token_mean", "sum"] = "token_mean"):
        """
        Args:
            beta: regularisation; the log-ratio margin is pulled towards 1 / (2 beta).
            normalization: "token_mean" (each response's log-probs averaged over its tokens; the IPO
                authors' and TRL's choice, the default) or "sum" (summed, as IPO's definition writes it).
        """
        if normalization not in ("token_mean", "sum"):
            raise ValueError(f"IPO normalization must be 'token_mean' or 'sum', got {normalization!r}")
        self.beta, self.normalization = beta, normalization

    def __call__(self, logps: losses.PreferenceLogps) -> losses.PreferenceResult:
        return losses.ipo_loss(logps.per_token() if self.normalization == "token_mean" else logps, self.beta)


class DPO(PolicyModule):
    """Preference optimisation of a causal LM against a fixed reference model.

    With ``precompute_reference``, the reference pass reads every pair of the data once before
    training: the command line hands the data over; from Python, connect both before fitting,
    ``trainer.fit(dpo, lit_align.cli.connect(data, dpo))`` (or ``dpo.use_data(data.view())``).
    """

    batch_kind = PreferenceKind()

    def __init__(
        self,
        *args,
        loss: PreferenceLoss = lazy_instance(SigmoidDPO, beta=0.1),
        nll_weight: float = 0.0,
        reference: Literal["adapter_off", "copy"] = "copy",
        precompute_reference: bool = False,
        reference_cache_dir: str = "outputs/reference_logps",
        disable_dropout: bool = True,
        share_prompt: bool | None = None,
        **kwargs,
    ):
        """
        Args:
            loss: SigmoidDPO, IPO or ConservativeDPO, with its beta.
            nll_weight: weight of an extra NLL term on the chosen responses (0: off).
            reference: "adapter_off" (policy with LoRA disabled; needs lora) or "copy" (frozen copy of the start model).
            precompute_reference: compute reference log-probs once before training and cache them on disk.
            reference_cache_dir: folder of the cached reference log-probs.
            disable_dropout: switch the policy's dropout off (LoRA's included), so the policy/reference
                log-ratio is not noisy.
            share_prompt: run each pair's prompt once for both its responses; None (the default): on CPU only,
                where it was measured; false: every row whole, regrouped by length.
        """
        super().__init__(*args, disable_dropout=disable_dropout, **kwargs)
        self.init_reference(reference)
        self.loss_fn, self.nll_weight = loss, nll_weight
        self.precompute_reference, self.reference_cache_dir = precompute_reference, reference_cache_dir
        self.reference_logps: dict[str, torch.Tensor] = {}
        self.data_view: DataView | None = None  # handed over by use_data, for the reference pass
        self.share_prompt = share_prompt
        self._said_why_rows_whole = ""  # the reason last logged for running rows whole

    def use_data(self, data: DataView) -> None:
        """Take the data's ordered pass over each split (for ``precompute_reference``), before the run."""
        self.data_view = data

    def configure_model(self) -> None:
        super().configure_model()
        # Once train and val log-probs are cached, only a test run (its split is not cached) needs the copy.
        if not self.reference_logps or (self._trainer is not None and self.trainer.testing):
            self.load_reference_copy()

    def token_logps(self, model, batch: PreferenceBatch, recompute: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(2B, L) log-probs of each response's labelled tokens (0 elsewhere) and (2B, L) their mask; rows
        as in the batch (chosen, then rejected). ``recompute``: checkpoint the prompt cache's completion
        rows (whole rows and prompt trees recompute through the model's own gradient checkpointing)."""
        layout = self._prompt_layout(model, batch)
        if layout == "tree":
            pairs = [[i, batch.num_pairs + i] for i in range(batch.num_pairs)]
            overhead = 1 << 62 if models.fsdp_sharded(model) else None  # one forward on every rank
            logps = prompt_tree.prompt_tree_logprobs(model, batch.input_ids, batch.attention_mask, batch.labels,
                                                     pairs, group_overhead=overhead)
            return logps, ops.loss_mask(batch.labels)
        if layout == "rows":
            unpad = False if models.fsdp_sharded(model) else None  # one forward on every rank (see _why_prompts_cannot_be_shared)
            logps = logprobs.model_token_logprobs(model, batch.input_ids, batch.attention_mask, batch.labels,
                                                  unpad=unpad)[0]
            return logps, ops.loss_mask(batch.labels)
        rows = split_at_responses(batch)
        logps = shared_prompt.shared_prompt_logprobs(model, rows, recompute=recompute)[0] * rows.labelled

        def chosen_first(pairwise: torch.Tensor) -> torch.Tensor:  # rows 2i, 2i + 1 back to i, B + i
            return pairwise.view(batch.num_pairs, 2, -1).transpose(0, 1).reshape(2 * batch.num_pairs, -1)

        return chosen_first(logps), chosen_first(rows.labelled)

    def _prompt_layout(self, model, batch: PreferenceBatch) -> Literal["tree", "cache", "rows"]:
        """How pairs run: as prompt trees, through the prompt's cache, or every row whole; where the
        prompt cannot be shared as asked, the reason is logged once."""
        share = self.share_prompt if self.share_prompt is not None else batch.input_ids.device.type == "cpu"
        if not share:
            return "rows"
        no_tree = prompt_tree.unsupported(model, batch.input_ids.size(1))
        if not no_tree:
            return "tree"
        no_cache = _why_prompts_cannot_be_shared(model)
        reason = f"no prompt trees: {no_tree}" + (f"; no prompt cache: {no_cache}" if no_cache else "")
        if reason != self._said_why_rows_whole:
            log.warning("DPO runs %s (%s)", "every row whole" if no_cache else "prompts through their cache", reason)
            self._said_why_rows_whole = reason
        return "rows" if no_cache else "cache"

    def sequence_logps(self, model, batch: PreferenceBatch) -> torch.Tensor:
        """(2B,) summed log-probs of each response; rows as in the batch (chosen, then rejected)."""
        return self.token_logps(model, batch)[0].sum(-1)

    def reference_sequence_logps(self, batch: PreferenceBatch) -> torch.Tensor:
        return self.with_reference(lambda model: self.sequence_logps(model, batch))

    def _reference(self, batch: PreferenceBatch, stage: str) -> tuple[torch.Tensor, torch.Tensor]:
        if stage in self.reference_logps:
            cached = self.reference_logps[stage][batch.index.cpu()].to(batch.input_ids.device)
            return cached[:, 0], cached[:, 1]
        return self.reference_sequence_logps(batch).split(batch.num_pairs)

    def _shared_step(self, batch: PreferenceBatch, stage: str) -> torch.Tensor:
        token_logps, mask = self.token_logps(self.policy, batch, recompute=self.gradient_checkpointing)
        policy_chosen, policy_rejected = token_logps.sum(-1).split(batch.num_pairs)
        reference_chosen, reference_rejected = self._reference(batch, stage)
        chosen_tokens, rejected_tokens = mask.sum(-1).clamp(min=1).split(batch.num_pairs)
        out = self.loss_fn(losses.PreferenceLogps(policy_chosen, policy_rejected, reference_chosen, reference_rejected,
                                                  chosen_tokens, rejected_tokens))
        loss, reward_c, reward_r = out.loss, out.chosen_rewards, out.rejected_rewards
        if self.nll_weight:
            chosen_mask = mask[: batch.num_pairs]
            loss = loss + self.nll_weight * losses.sft_loss(token_logps[: batch.num_pairs], chosen_mask, chosen_mask.sum())
        self.log_dict(
            {
                f"{stage}/loss": loss,
                f"{stage}/rewards/chosen": reward_c.mean(),
                f"{stage}/rewards/rejected": reward_r.mean(),
                f"{stage}/rewards/margin": (reward_c - reward_r).mean(),
                f"{stage}/rewards/accuracy": (reward_c > reward_r).float().mean(),
            },
            prog_bar=stage == "train",
            batch_size=batch.num_pairs,
        )
        return loss

    def training_step(self, batch: PreferenceBatch, batch_idx: int):
        return self._shared_step(batch, "train")

    def validation_step(self, batch: PreferenceBatch, batch_idx: int):
        self._shared_step(batch, "val")

    def test_step(self, batch: PreferenceBatch, batch_idx: int):
        self._shared_step(batch, "test")

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not self.precompute_reference:
            return
        if self.data_view is None:
            raise ValueError(
                "precompute_reference needs the pairs before training: connect the data to the method first, "
                "trainer.fit(dpo, lit_align.cli.connect(data, dpo)) (the command line does it)"
            )
        for stage in ("train", "val"):
            logps = self._cached_reference_logps(partial(self.data_view.ordered_batches, stage))
            if logps is not None:
                self.reference_logps[stage] = logps
        self.reference_model = None  # no longer needed: every step reads the cache

    def _cached_reference_logps(self, batches) -> torch.Tensor | None:
        """(N, 2) reference log-probs (chosen, rejected) of a split's N pairs, from disk when already
        computed; None for an empty split. ``batches()`` yields the split's pairs in order, once for
        the cache key and, when the cache misses, once more for the forward passes."""
        model = self.reference_model if self.reference_kind == "copy" else self.policy
        with torch.no_grad():  # a cheap fingerprint of the weights, so a changed checkpoint misses the cache
            weights = sum(float(p.double().sum()) for p in model.parameters() if not p.requires_grad)
        key = hashlib.sha256(repr((self.model_name, self.dtype_name, self.reference_kind, weights)).encode())
        n_pairs = 0
        for batch in batches():
            n_pairs += batch.num_pairs
            for tensor in (batch.input_ids, batch.attention_mask, batch.labels, batch.index):
                key.update(repr(tuple(tensor.shape)).encode())
                key.update(tensor.numpy().tobytes())
        if n_pairs == 0:
            return None
        path = Path(self.reference_cache_dir) / f"{key.hexdigest()[:24]}.pt"
        if path.is_file():
            log.info("reference log-probs read from %s", path)
            return torch.load(path)
        out = torch.empty(n_pairs, 2)
        for batch in batches():
            batch = move_data_to_device(batch, self.device)
            chosen, rejected = self.reference_sequence_logps(batch).split(batch.num_pairs)
            out[batch.index.cpu()] = torch.stack([chosen, rejected], dim=1).cpu()
        if self.trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(out, path)
            log.info("reference log-probs for %d pairs cached at %s", n_pairs, path)
        return out


def _why_prompts_cannot_be_shared(model) -> str:
    """Why ``model`` cannot run a prompt once for its two responses ("" where it can)."""
    if models.fsdp_sharded(model):
        return ("FSDP shards its blocks, and each block's forward gathers its weights in a collective, so every "
                "rank must run as many forwards as the others; with prompts run once, that number follows each "
                "rank's own prompts and response lengths")
    if any(isinstance(m, ActivationWrapper) for m in model.modules()):
        return ("its blocks are wrapped for activation checkpointing (torch's checkpoint_wrapper): a block "
                "recomputed in backward would write its keys and values into the prompt's cache a second time")
    return ""
