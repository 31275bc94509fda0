"""The examples in lit_align's docstrings run and give what they show."""

import doctest
import importlib
import pkgutil

import pytest

import lit_align

MODULES = sorted(m.name for m in pkgutil.walk_packages(lit_align.__path__, "lit_align.")
                 if not m.name.endswith("__main__"))


NEEDS_VLLM = {"lit_align.sampling.vllm_gloo"}  # runs inside vLLM's server processes: imports vLLM at the top


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name in NEEDS_VLLM:
        pytest.importorskip("vllm")
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
