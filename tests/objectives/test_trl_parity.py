"""Our GRPO objective against TRL's ``GRPOTrainer`` on the same pinned inputs (skipped without TRL, the
``bench`` extra; ``.ci/run`` installs it).

The policy's log-probs come from ``logprobs.model_token_logprobs`` on a tiny model and are handed to
TRL's loss in place of its own forward, so both sides see the same log-probs; advantages, old and
reference log-probs and masks are pinned, the old log-probs moved away from the policy's so that both
sides of the clip occur.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

trl = pytest.importorskip("trl")

from lit_align.data.formats import IGNORE_INDEX  # noqa: E402
from lit_align.modeling import tiny  # noqa: E402
from lit_align.objectives import logprobs, ops  # noqa: E402
from lit_align.objectives import policy_gradient as pg  # noqa: E402
from lit_align.methods.grpo import LOSS_TYPES  # noqa: E402

B, P, C, MAX_NEW = 4, 3, 5, 6


@pytest.fixture(scope="module")
def grpo_trainer():
    import datasets

    tokenizer = tiny.tiny_tokenizer()
    folder = tempfile.mkdtemp()
    tiny.tiny_causal_lm(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    args = trl.GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=B, num_generations=2,
                          max_completion_length=MAX_NEW, beta=0.05, epsilon=0.2, epsilon_high=0.28, report_to=[],
                          use_cpu=True, logging_steps=1,
                          # TRL 1.16 multiplies the k3 KL by the ratio by default (an unbiased reverse-KL gradient,
                          # DeepSeek-V3.2); ours is GRPO's plain k3 term, so compare with that switched off
                          use_bias_correction_kl=False)
    trainer = trl.GRPOTrainer(model=folder, reward_funcs=[lambda completions, **kw: [0.0] * len(completions)], args=args,
                              train_dataset=datasets.Dataset.from_list([{"prompt": "hello"}] * B), processing_class=tokenizer)
    trainer.current_gradient_accumulation_steps = 1
    trainer.model.train()
    return trainer


def _inputs(vocab: int):
    g = torch.Generator().manual_seed(0)
    completion_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]])
    return {
        "prompt_ids": torch.randint(3, vocab, (B, P), generator=g), "prompt_mask": torch.ones(B, P, dtype=torch.long),
        "completion_ids": torch.randint(3, vocab, (B, C), generator=g), "completion_mask": completion_mask,
        "advantages": torch.tensor([1.0, -0.5, 0.7, -1.2]),
        "ref_per_token_logps": -torch.rand(B, C, generator=g) * 3,
        "num_items_in_batch": completion_mask.sum().float(),
    }


def _ours(model, inputs, old, aggregation: str, beta: float):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    labels = torch.cat([torch.full_like(inputs["prompt_ids"], IGNORE_INDEX),
                        inputs["completion_ids"].masked_fill(inputs["completion_mask"] == 0, IGNORE_INDEX)], 1)
    token_logps, _ = logprobs.model_token_logprobs(model, ids, mask, labels, ops.position_ids_from_mask(mask))
    token_logps = token_logps[:, P - 1 :]
    loss_mask = inputs["completion_mask"].float()
    weights = pg.aggregation_weights(loss_mask, aggregation, B, float(loss_mask.sum()), MAX_NEW)
    return pg.policy_gradient_loss(token_logps, loss_mask, inputs["advantages"], weights, old_logps=old, epsilon=0.2,
                                   epsilon_high=0.28, ref_logps=inputs["ref_per_token_logps"], kl_coef=beta,
                                   kl_estimator="k3", kl_in_reward=False), token_logps


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_our_loss_equals_trl_grpo_loss_on_pinned_inputs(grpo_trainer, loss_type, beta):
    model = grpo_trainer.model
    inputs = _inputs(model.config.vocab_size)
    with torch.no_grad():
        _, current = _ours(model, inputs, None, "token", 0.0)
    # old log-probs away from the current ones: ratios from about 0.6 to 1.6, both sides of the clip
    old = current - torch.linspace(-0.5, 0.5, B * C).view(B, C)
    ours, _ = _ours(model, inputs, old, LOSS_TYPES[loss_type], beta)
    _, pinned = _ours(model, inputs, old, LOSS_TYPES[loss_type], beta)
    grpo_trainer.loss_type, grpo_trainer.beta = loss_type, beta
    grpo_trainer._get_per_token_logps_and_entropies = lambda *a, **k: (pinned, torch.zeros_like(pinned), None)
    theirs = grpo_trainer._compute_loss(model, dict(inputs, old_per_token_logps=old))
    assert ours.clipped > 0, "the pinned ratios must reach the clip for the check to mean something"
    assert ours.loss.item() == pytest.approx(theirs.item(), abs=1e-6, rel=1e-6)
