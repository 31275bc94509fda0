"""lit_align at an earlier commit as one more contender: ``python -m tools.bench.run --baseline REV``.

The orchestrator checks REV out once, as a detached git worktree under ``outputs/bench_worktrees/<commit>``
(reused by later commands), and adds ``lit_align@<commit>`` beside each method's ``lit_align``. That
contender runs the same worker and the same workload from this tree; only the ``lit_align`` package is
imported from the checkout. The worker puts the checkout first on ``sys.path`` after its own ``tools``
package is imported, not through ``PYTHONPATH``: ``python -m`` puts the working directory (this tree,
which holds a ``lit_align`` folder) ahead of ``PYTHONPATH``, and the checkout holds a ``tools`` folder
of its own. Every run records which ``lit_align`` it imported (``provenance``), and a run whose
``lit_align`` modules did not all come from the checkout it was handed is an error, not a row.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]  # the checkout this harness runs from
WORKTREES = Path("outputs") / "bench_worktrees"  # under the repository; outputs/ is git-ignored


@dataclass(frozen=True)
class Checkout:
    """An earlier commit's tree on disk, and the contender name it runs under."""

    commit: str  # the full id REV resolved to
    short: str  # git's short id: the folder's and the contender's name
    path: Path

    def contender(self, base: str = "lit_align") -> str:
        return f"{base}@{self.short}"


def _git(folder: Path, *args: str) -> str:
    """``git args`` in ``folder``; read-only commands take no optional locks (others may be using the index)."""
    done = subprocess.run(["git", "--no-optional-locks", "-C", str(folder), *args], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        raise RuntimeError(f"git {' '.join(args)} in {folder} failed: {done.stderr.strip()}")
    return done.stdout.strip()


def checkout(rev: str, repository: Path = REPOSITORY, under: Path | None = None) -> Checkout:
    """REV's tree as a detached worktree of ``repository`` under ``under``: made if missing, reused if present.

    A branch name or ``HEAD~3`` is resolved to its commit first, so the folder is named by the commit and
    a moving name never reuses a stale tree. A folder that is there but at another commit, or with
    changes to its ``lit_align``, is refused rather than measured.
    """
    try:
        commit = _git(repository, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except RuntimeError:
        raise ValueError(f"{rev!r} is not a commit of {repository}") from None
    short = _git(repository, "rev-parse", "--short", commit)
    path = (under if under is not None else repository / WORKTREES) / short
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _git(repository, "worktree", "add", "--detach", str(path), commit)
    if Path(_git(path, "rev-parse", "--show-toplevel")).resolve() != path.resolve():
        raise RuntimeError(f"{path} is not a checkout of its own; remove it to have it made again")
    found = _git(path, "rev-parse", "HEAD")
    if found != commit:
        raise RuntimeError(f"{path} is at {found}, not at {rev} ({commit}); remove it (git worktree remove) or move it")
    if edited := changes(path):
        raise RuntimeError(f"{path} has uncommitted changes in lit_align/: {', '.join(edited[:5])}")
    if not (path / "lit_align" / "__init__.py").is_file():
        raise RuntimeError(f"{rev} ({commit}) has no lit_align package")
    return Checkout(commit, short, path.resolve())


def changes(root: Path) -> list[str]:
    """Files under ``root/lit_align`` that differ from the checked-out commit (git status), at most 50."""
    lines = _git(root, "status", "--porcelain", "--", "lit_align").splitlines()
    return [line.split(None, 1)[1] for line in lines][:50]  # "XY path": the output is stripped, X may be a space


def import_first(path: str | None) -> None:
    """Make ``import lit_align`` find the checkout at ``path`` before this tree (the worker, before any import)."""
    if not path:
        return
    if "lit_align" in sys.modules:
        raise RuntimeError(f"lit_align was imported before the checkout {path} was put first on the path")
    sys.path.insert(0, path)


def provenance(expected: str | None = None) -> dict:
    """Which ``lit_align`` this process imported: its checkout, that checkout's HEAD, its uncommitted files.

    With ``expected`` (the checkout the run was handed), every imported ``lit_align`` module must lie
    under it: a submodule found elsewhere (say, a module the checkout lacks, found in the installed tree)
    raises instead of being measured. Empty if this process has not imported ``lit_align``.
    """
    package = sys.modules.get("lit_align")
    if package is None:
        return {}
    root = Path(package.__file__).resolve().parents[1]
    if expected is not None:
        want = Path(expected).resolve()
        stray = sorted(name for name, module in list(sys.modules.items())
                       if name.split(".")[0] == "lit_align" and getattr(module, "__file__", None)
                       and not Path(module.__file__).resolve().is_relative_to(want))
        if root != want or stray:
            raise RuntimeError(f"lit_align came from {root}, not only from the checkout {want}: {stray[:5]}")
    try:
        commit, uncommitted = _git(root, "rev-parse", "HEAD"), changes(root)
    except (OSError, RuntimeError):  # an installed copy, not a checkout
        commit, uncommitted = None, []
    return {"lit_align_path": str(root), "lit_align_commit": commit, "lit_align_uncommitted": uncommitted}
