"""Values are handed down, never pulled: what trains or evaluates a policy never looks its inputs up.

Methods, evaluations and the callbacks get what they use through declared interfaces (the CLI's
``connect``, a method's ``use_data``, constructor arguments). Read with ``ast``, none of their modules
reads ``.datamodule`` of anything (the trainer's data module included) or probes the trainer or the
module under training with ``getattr``/``hasattr``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lit_align"
CHECKED = sorted([*(PACKAGE / "methods").rglob("*.py"), *(PACKAGE / "evaluation").rglob("*.py"),
                  PACKAGE / "lightning" / "callbacks.py"])
PROBES = {"getattr", "hasattr"}
PROBED_NAMES = {"pl_module", "trainer"}  # Lightning's names for the module under training and its trainer
PROBED_ATTRIBUTES = {"trainer", "_trainer"}  # self.trainer, self._trainer


def _probed(node: ast.expr) -> bool:
    """Whether ``node`` is the trainer or the module under training (``pl_module``, ``self.trainer``, ...)."""
    if isinstance(node, ast.Name):
        return node.id in PROBED_NAMES
    return isinstance(node, ast.Attribute) and node.attr in PROBED_ATTRIBUTES


def pulls(source: str, filename: str) -> list[str]:
    """Each place in ``source`` that reads ``.datamodule`` or probes the trainer or module, as ``file:line: what``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and node.attr == "datamodule":
            found.append(f"{filename}:{node.lineno}: reads .datamodule")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in PROBES
              and node.args and _probed(node.args[0])):
            found.append(f"{filename}:{node.lineno}: {node.func.id}({ast.unparse(node.args[0])}, ...)")
    return found


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_method_evaluation_or_callback_pulls_its_inputs(path):
    assert pulls(path.read_text(), str(path.relative_to(PACKAGE))) == []


@pytest.mark.parametrize("planted", [
    "data = self.trainer.datamodule",
    "n = trainer.datamodule.max_length",
    "data = getattr(self.trainer, 'datamodule', None)",
    "engine = getattr(pl_module, 'rollout', None)",
    "ok = hasattr(pl_module, 'policy')",
    "dm = getattr(self._trainer, 'datamodule')",
])
def test_the_check_finds_a_planted_pull(planted):
    assert len(pulls(f"def hook(self, trainer, pl_module):\n    {planted}\n", "planted.py")) == 1


def test_the_check_leaves_ordinary_getattr_alone():
    source = "import signal\nnumber = getattr(signal, 'SIGUSR1')\nok = hasattr(policy, 'gradient_checkpointing_enable')\n"
    assert pulls(source, "fine.py") == []


def test_every_folder_it_guards_is_there():
    assert {p.parent.name for p in CHECKED} >= {"methods", "evaluation", "lightning"}
