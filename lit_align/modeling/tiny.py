"""Tiny, randomly initialised models and an offline tokenizer, for tests and smoke runs.

``tiny:causal-lm`` is a 2-layer Llama (the SmolLM2 architecture) and ``tiny:classifier`` a
2-layer BERT with one output. Both share a byte-level BPE tokenizer trained here in
milliseconds on a fixed corpus, so nothing is downloaded. The tokenizer is deliberately
awkward: it adds a BOS token on its own *and* its chat template writes one, which is how
doubled-BOS bugs appear with real models.

``tiny:qwen2`` and ``tiny:qwen2-instruct`` stand in for the study's model family: a random 2-layer
``Qwen2ForCausalLM`` with Qwen2.5-0.5B's layout (tied head, grouped-query attention, biases on
q/k/v, the padded 151,936-row vocabulary) around the real Qwen tokenizer (151,665 tokens, where id 0
is the ordinary token "!"). ``build_tiny_qwen2`` writes one as a Hugging Face folder from the
tokenizer files; ``lit_align.modeling.models`` fetches those files and caches the folder.

``tiny:deberta-v2`` and ``tiny:distilbert`` stand in for the study's reward-model backbones
(DeBERTa-v3 and DistilBERT): random 2-layer ``DebertaV2ForSequenceClassification`` and
``DistilBertForSequenceClassification`` with one output, around a WordPiece tokenizer trained here
(cased for DeBERTa, lowercasing for DistilBERT) that, like an encoder's, has no chat template and
writes a text pair as ``[CLS] prompt [SEP] response [SEP]``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
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


# Qwen2.5's chat format for plain conversations (no tools): a default system turn when the chat has
# none, every turn closed by <|im_end|> and a newline, and an open assistant header to generate from.
QWEN25_CHAT_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN_LAYOUTS = {
    # Qwen2.5-0.5B (base): EOS is <|endoftext|>, while its chat template closes turns with <|im_end|>.
    "base": dict(eos="<|endoftext|>", generation=dict(do_sample=False, max_new_tokens=2048)),
    # The instruct layout ends on <|im_end|> and ships sampling defaults, a repetition penalty among them.
    "instruct": dict(eos="<|im_end|>", generation=dict(
        do_sample=True, repetition_penalty=1.1, temperature=0.7, top_p=0.8, top_k=20)),
}
QWEN_PADDED_VOCAB = 151_936  # Qwen2.5-0.5B's embedding rows: more than the tokenizer's 151,665 ids


def build_tiny_qwen2(tokenizer_files: Path, target: Path, layout: str = "base", seed: int = 0) -> Path:
    """Write a random 2-layer Qwen2 with the Qwen tokenizer set up as ``layout`` into ``target``.

    ``tokenizer_files``: a folder with the Qwen ``tokenizer.json`` and ``tokenizer_config.json``.
    """
    if layout not in QWEN_LAYOUTS:
        raise ValueError(f"unknown Qwen layout {layout!r}: choose from {sorted(QWEN_LAYOUTS)}")
    spec = QWEN_LAYOUTS[layout]
    target.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "vocab.json", "merges.txt"):
        if (tokenizer_files / name).is_file():
            shutil.copy(tokenizer_files / name, target / name)
    config = json.loads((tokenizer_files / "tokenizer_config.json").read_text())
    config.update(eos_token=spec["eos"], pad_token="<|endoftext|>", bos_token=None, chat_template=QWEN25_CHAT_TEMPLATE)
    (target / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(target)
    eos, pad = tokenizer.convert_tokens_to_ids(spec["eos"]), tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model_config = Qwen2Config(
        vocab_size=QWEN_PADDED_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        # heads 32 wide (vLLM's CPU attention has no narrower kernels), two query heads per key/value head
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048, rope_theta=1_000_000.0,
        tie_word_embeddings=True, use_sliding_window=False, bos_token_id=pad, eos_token_id=eos,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(model_config)
    end_ids = [eos] if layout == "base" else [eos, pad]
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=end_ids, pad_token_id=pad, **spec["generation"])
    model.save_pretrained(target)
    return target


# Encoder reward-model stand-ins. The corpus covers the words of the test fixtures and the
# constraint prompts well enough that most text maps to real pieces, not [UNK].
ENCODER_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_ENCODER_CORPUS = _CORPUS + [
    "What is the capital of France? The capital of France is Paris.",
    "Write a short poem about the sea. Answer in fewer than fifty words, all in lowercase letters.",
    "Respond with exactly three bullet points and end your reply with the phrase Is there anything else?",
    "A mammal that can fly is the bat; the penguin is a bird that swims but cannot fly.",
    "Explain each step: multiply the numbers, then add them, and check the result equals the target.",
    "Summarize in one sentence. Rewrite this more formally. Include the keywords apple and river.",
    "I apologise, but I will be arriving late. Hello! How can I help you today?",
] * 4


def _wordpiece_vocab(lowercase: bool, vocab_size: int) -> dict[str, int]:
    """A WordPiece vocabulary built by rule, the same in every process: the special tokens, every character of
    the corpus alone and as a continuation (``##c``), then the corpus's words, most frequent first (ties in
    alphabetical order), up to ``vocab_size``. (The library's WordPiece trainer breaks ties differently from
    run to run: two tokenizers trained in one process could differ, and a model sized for one then met
    token ids of the other.)"""
    normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    pre = pre_tokenizers.BertPreTokenizer()
    counts: dict[str, int] = {}
    for text in _ENCODER_CORPUS:
        for word, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[word] = counts.get(word, 0) + 1
    chars = sorted({c for word in counts for c in word})
    vocab = list(ENCODER_SPECIAL_TOKENS) + chars + ["##" + c for c in chars]
    known = set(vocab)
    vocab += [w for w in sorted(counts, key=lambda w: (-counts[w], w)) if w not in known][: max(0, vocab_size - len(vocab))]
    return {token: i for i, token in enumerate(vocab)}


def wordpiece_tokenizer(lowercase: bool = True, vocab_size: int = 600) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer made offline, the same in every call: no chat template, text pairs as
    [CLS] A [SEP] B [SEP]."""
    tok = Tokenizer(models.WordPiece(_wordpiece_vocab(lowercase, vocab_size), unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    # The reward code feeds input ids and the attention mask only, as DistilBERT's own tokenizer does.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]",
        mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"],
    )


def tiny_deberta_v2(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> DebertaV2ForSequenceClassification:
    """A 2-layer, 32-wide DeBERTa-v2 with DeBERTa-v3's attention layout and one scalar output."""
    config = DebertaV2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=512, type_vocab_size=0, relative_attention=True, position_buckets=64,
        pos_att_type=["p2c", "c2p"], position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True,
        pooler_hidden_size=32, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DebertaV2ForSequenceClassification(config)


def tiny_distilbert(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> DistilBertForSequenceClassification:
    """A 2-layer, 32-wide DistilBERT with one scalar output."""
    config = DistilBertConfig(
        vocab_size=len(tokenizer), dim=32, hidden_dim=64, n_layers=2, n_heads=2, max_position_embeddings=512,
        num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return DistilBertForSequenceClassification(config)
