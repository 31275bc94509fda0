"""Sentence splitting for the reference checks, offline.

IFEval's reference checks split sentences with NLTK's Punkt (``nltk.sent_tokenize``, the ``punkt_tab``
English model): ``length_constraints:number_sentences`` counts sentences with it, and
``change_case:capital_word_frequency`` tokenises words with ``nltk.word_tokenize``, which splits
sentences first. NLTK's model is data fetched from the network (``nltk.download("punkt_tab")``), and
lm-eval tries that download when its IFEval module is imported.

``ensure_punkt()`` runs before that import:

- where NLTK's own ``punkt_tab`` English model is installed (``nltk.data.find`` finds it), it is used:
  the checks are then exactly the reference's;
- otherwise it writes a ``punkt_tab`` English model folder under lit_align's cache and puts it on
  ``nltk.data.path`` (last, so real NLTK data installed later still wins). The model's parameters
  (abbreviations, collocations, sentence starters) are the ones the ``nupunkt`` package ships, a
  Punkt model trained on other English text; NLTK's own Punkt algorithm runs with them. The two kinds
  above are then approximate: docs/instruction_following.md gives the measured agreement.
"""

from __future__ import annotations

import gzip
import json
import os
from importlib import resources
from pathlib import Path

_MODEL = "tokenizers/punkt_tab/english/"
_FILES = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")


def cache_root() -> Path:
    """Where the substitute model is written: ``$LIT_ALIGN_CACHE`` or ``~/.cache/lit_align``."""
    return Path(os.environ.get("LIT_ALIGN_CACHE", Path.home() / ".cache" / "lit_align"))


def _nupunkt_parameters() -> dict:
    raw = resources.files("nupunkt").joinpath("models/default_model.json.gz").read_bytes()
    return json.loads(gzip.decompress(raw))["parameters"]


def write_substitute(folder: Path) -> Path:
    """Write the ``punkt_tab`` English model made from nupunkt's parameters under ``folder`` (an NLTK
    data root); returns the model folder. Files are written whole, then renamed into place."""
    from nltk.tabdata import TabEncoder

    params = _nupunkt_parameters()
    model = folder / _MODEL
    model.mkdir(parents=True, exist_ok=True)
    encode = TabEncoder()
    texts = {
        "collocations.tab": encode.tups2tab(sorted(tuple(c) for c in params["collocations"])),
        "sent_starters.txt": encode.set2txt(set(params["sent_starters"])),
        "abbrev_types.txt": encode.set2txt(set(params["abbrev_types"])),
        "ortho_context.tab": encode.ivdict2tab(dict(params["ortho_context"])),
    }
    for name, text in texts.items():
        partial = model / f"{name}.{os.getpid()}.part"
        partial.write_text(text, encoding="utf-8", newline="")
        partial.replace(model / name)
    return model


def nltk_has_punkt() -> bool:
    """Whether NLTK finds a ``punkt_tab`` English model on its data path (its own, or ours once added)."""
    import nltk

    try:
        nltk.data.find(_MODEL)
    except LookupError:
        return False
    return True


_SOURCE: str | None = None


def ensure_punkt() -> str:
    """Make ``nltk.sent_tokenize`` work offline; returns ``"nltk"`` (NLTK's own English model found) or
    ``"nupunkt"`` (the substitute in use). Idempotent."""
    global _SOURCE
    if _SOURCE is not None:
        return _SOURCE
    import nltk

    if nltk_has_punkt():
        _SOURCE = "nltk"
        return _SOURCE
    root = cache_root() / "nltk_data"
    if not all((root / _MODEL / name).is_file() for name in _FILES):
        write_substitute(root)
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    if not nltk_has_punkt():
        raise RuntimeError(f"the substitute Punkt model written to {root / _MODEL} is not found by nltk.data.find")
    _SOURCE = "nupunkt"
    return _SOURCE
