"""Padding-free SFT packing: same loss tokens, same loss, same gradients as padded batches."""

import torch

from lit_align.data.collate import collate_sft, collate_sft_packed, pack_rows
from lit_align.data.datamodule import AlignDataModule
from lit_align.data.formats import IGNORE_INDEX, Example
from lit_align.data.kinds import SFTKind
from lit_align.methods import SFT

from in_memory import InMemory
from conftest import trainer

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "hello", "world", "good", "bad", "yes", "no"]


def records(n=8):
    # Prompts and completions of different lengths, so packed rows mix several examples.
    return [
        {"messages": [{"role": "user", "content": " ".join(WORDS[: 1 + (3 * i) % 5])},
                      {"role": "assistant", "content": " ".join(WORDS[: 1 + (5 * i) % 11])}]}
        for i in range(n)
    ]


def examples():
    torch.manual_seed(0)
    out = []
    for i, n in enumerate([9, 4, 13, 6, 2, 11]):
        ids = torch.randint(4, 300, (n,)).tolist()
        labels = [IGNORE_INDEX] * (n // 3) + ids[n // 3 :]
        if i == 1:
            labels = list(ids)  # loss on every token, the first included: packing must not train across rows
        out.append(Example(ids, labels, f"ex{i}"))
    return out


def test_pack_rows_respects_capacity_and_keeps_every_index():
    lengths = [7, 3, 9, 1, 4, 6, 2, 12]
    rows = pack_rows(lengths, capacity=10)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 10 or len(row) == 1 for row in rows)
    assert len(rows) < len(lengths)


def test_packed_batch_has_the_padded_batch_loss_tokens_and_restarting_positions():
    exs = examples()
    padded, packed = collate_sft(exs, pad_id=0), collate_sft_packed(exs, pad_id=0, capacity=20)
    assert packed.num_loss_tokens == padded.num_loss_tokens == sum(e.num_loss_tokens for e in exs)
    assert packed.loss_normalizer == padded.loss_normalizer
    assert packed.input_ids.shape[0] < padded.input_ids.shape[0] and packed.input_ids.shape[1] <= 20
    assert int(packed.attention_mask.sum()) == int(padded.attention_mask.sum())
    starts = (packed.position_ids == 0) & (packed.attention_mask == 1)
    assert int(starts.sum()) == len(exs)
    assert (packed.labels[starts] == IGNORE_INDEX).all()


def _loss_and_grads(module: SFT, batch):
    module.policy.zero_grad()
    loss = module._nll(batch, batch.loss_normalizer)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.policy.named_parameters()}


def test_packed_and_padded_sft_give_equal_loss_and_gradients():
    module = SFT(model="tiny:causal-lm")
    module.configure_model()  # train mode: transformers would build a KV cache unless told not to
    exs = examples()
    loss_a, grads_a = _loss_and_grads(module, collate_sft(exs, pad_id=0))
    loss_b, grads_b = _loss_and_grads(module, collate_sft_packed(exs, pad_id=0, capacity=24))
    assert torch.allclose(loss_a, loss_b, atol=1e-5), (loss_a, loss_b)
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], atol=1e-5), name
    assert module.policy.config.use_cache, "the cache switch must be restored after the packed forward"


def _one_step(batch_size: int, accumulate: int, packing: bool) -> dict:
    torch.manual_seed(0)
    module = SFT(model="tiny:causal-lm", optimizer=lambda p: torch.optim.SGD(p, lr=0.5),
                 scheduler=lambda opt: torch.optim.lr_scheduler.ConstantLR(opt, 1.0))
    data = AlignDataModule(InMemory(records(8)), batch_size=batch_size, seed=0, packing=packing, max_length=48)
    data.connect(module.tokenizer, module.batch_kind)
    trainer(max_steps=1, limit_val_batches=0, accumulate_grad_batches=accumulate).fit(module, data)
    # applied gradients are freed at once, not kept alive through the next forward
    assert all(p.grad is None for p in module.policy.parameters())
    return {k: v.clone() for k, v in module.policy.state_dict().items()}


def test_packed_training_keeps_the_global_batch_token_mean_and_frees_gradients():
    reference = _one_step(batch_size=4, accumulate=1, packing=False)
    for batch_size, accumulate in ((4, 1), (2, 2)):
        packed = _one_step(batch_size, accumulate, packing=True)
        for key, value in reference.items():
            assert torch.allclose(value, packed[key], atol=1e-5), (batch_size, accumulate, key)


def test_datamodule_packs_sft_micro_batches_into_rows_of_at_most_max_length(tokenizer):
    data = AlignDataModule(InMemory(records(8)), batch_size=8, packing=True, max_length=40).connect(tokenizer, SFTKind())
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch.position_ids is not None and batch.input_ids.shape[0] < 8 and batch.input_ids.shape[1] <= 40
    assert batch.num_loss_tokens == sum(e.num_loss_tokens for e in data.train_items)
