"""Tiny, randomly initialised models and an offline tokenizer, for tests and smoke runs.

``tiny:causal-lm`` is a 2-layer Llama (the SmolLM2 architecture) and ``tiny:classifier`` a
2-layer BERT with one output. Both share a byte-level BPE tokenizer trained here in
milliseconds on a fixed corpus, so nothing is downloaded. The tokenizer is deliberately
awkward: it adds a BOS token on its own *and* its chat template writes one, which is how
doubled-BOS bugs appear with real models.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
)

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<pad>", "<s>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "using the numbers create an equation that equals the target",
    "<think> let me try </think> <answer> (1 + 2) * 3 </answer>",
    "0 1 2 3 4 5 6 7 8 9 10 25 50 75 100 + - * / ( ) = , .",
    "system user assistant you are a helpful assistant write answer question",
    "hello world good bad yes no please thanks reward chosen rejected prompt",
] * 4


def tiny_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with ChatML-style special tokens, made offline."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHAT_TEMPLATE,
    )


def _llama_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        num_labels=1,
    )


def tiny_causal_lm(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer, 64-wide Llama whose vocabulary matches ``tokenizer``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(_llama_config(tokenizer))


def tiny_causal_classifier(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForSequenceClassification:
    """The same tiny Llama with a scalar score head: a causal-LM reward model."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForSequenceClassification(_llama_config(tokenizer))


def tiny_classifier(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> BertForSequenceClassification:
    """A 2-layer, 32-wide BERT with one scalar output (a reward-model backbone)."""
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=1024,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return BertForSequenceClassification(config)
