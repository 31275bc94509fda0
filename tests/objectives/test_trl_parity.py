"""Our online-RL objectives against TRL's ``GRPOTrainer._compute_loss`` on the same pinned inputs, every TRL
loss type (GSPO, CISPO, SAPO, VESPO, LUSPO and the two-sided clip included), loss and gradient (skipped without TRL, the
``bench`` extra; ``.ci/run`` installs it).

The policy's log-probs come from ``logprobs.model_token_logprobs`` on a tiny model and are handed to
TRL's loss in place of its own forward as a leaf tensor, so both sides see the same log-probs and the
gradients with respect to them are compared; advantages, old and
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
from lit_align.methods.grpo import grpo_objective  # noqa: E402
from lit_align.objectives.rl import PolicyGradientBatch  # noqa: E402

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


CASES = [  # (loss_type, importance_sampling_level, epsilon_high, delta): every loss type of TRL 1.16
    ("grpo", "token", 0.28, None), ("bnpo", "token", 0.28, None), ("dr_grpo", "token", 0.28, None),
    ("dapo", "token", 0.28, None), ("dapo", "token", 0.28, 1.4),  # the two-sided clip
    ("grpo", "sequence", 0.28, None),  # GSPO
    ("luspo", "sequence", 0.28, None), ("cispo", "token", 1.3, None), ("sapo", "token", 0.28, None),
    ("vespo", "token", 0.28, None),
]


def _token_logps(model, inputs) -> torch.Tensor:
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    labels = torch.cat([torch.full_like(inputs["prompt_ids"], IGNORE_INDEX),
                        inputs["completion_ids"].masked_fill(inputs["completion_mask"] == 0, IGNORE_INDEX)], 1)
    with torch.no_grad():
        token_logps, _ = logprobs.model_token_logprobs(model, ids, mask, labels, ops.position_ids_from_mask(mask))
    return token_logps[:, P - 1 :]


@pytest.mark.parametrize("loss_type, level, epsilon_high, delta", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_our_objectives_equal_trl_grpo_loss_and_gradient_on_pinned_inputs(grpo_trainer, loss_type, level,
                                                                         epsilon_high, delta, beta):
    model = grpo_trainer.model
    inputs = _inputs(model.config.vocab_size)
    current = _token_logps(model, inputs)
    # old log-probs away from the current ones: token ratios from about 0.37 to 2.7, sequence ratios from
    # about 0.45 to 1.8, both sides of the clip
    old = current - torch.linspace(-1.0, 1.0, B * C).view(B, C)
    objective = grpo_objective(loss_type, beta, 0.2, epsilon_high, delta, "group", level, 0.0)
    ours_logps = current.clone().requires_grad_(True)
    loss_mask = inputs["completion_mask"].float()
    ours = objective(PolicyGradientBatch(logps=ours_logps, mask=loss_mask, advantages=inputs["advantages"],
                                         step_sequences=float(B), step_tokens=float(loss_mask.sum()),
                                         max_new_tokens=MAX_NEW, old_logps=old, ref_logps=inputs["ref_per_token_logps"]))
    ours.loss.backward()
    theirs_logps = current.clone().requires_grad_(True)
    grpo_trainer.loss_type, grpo_trainer.beta, grpo_trainer.importance_sampling_level = loss_type, beta, level
    grpo_trainer.epsilon_high, grpo_trainer.args.delta = epsilon_high, delta
    grpo_trainer._get_per_token_logps_and_entropies = lambda *a, **k: (theirs_logps, torch.zeros_like(theirs_logps), None)
    theirs = grpo_trainer._compute_loss(model, dict(inputs, old_per_token_logps=old))
    theirs.backward()
    if loss_type not in ("sapo", "vespo"):  # soft gates clip nothing
        assert ours.clipped > 0, "the pinned ratios must reach the clip for the check to mean something"
    assert ours.loss.item() == pytest.approx(theirs.item(), abs=1e-6, rel=1e-6)
    assert ours_logps.grad.abs().max() > 1e-3
    assert torch.allclose(ours_logps.grad, theirs_logps.grad, atol=1e-6, rtol=1e-6), \
        (ours_logps.grad - theirs_logps.grad).abs().max()
