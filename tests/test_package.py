"""The installed package stands alone: built from this checkout and used from elsewhere, it imports,
answers `fit --help`, and carries nothing that needs the checkout (the study runner is a tool of it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_installed_package_works_outside_the_checkout(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                            "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    shipped = {p.name for p in (target / "lit_align").iterdir()}
    assert {"cli.py", "sampling", "methods", "data"} <= shipped and "reproduce" not in shipped
    env = os.environ | {"PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import lit_align; print(lit_align.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert where.returncode == 0 and where.stdout.strip().startswith(str(target)), where.stderr[-2000:]
    usage = subprocess.run([sys.executable, "-m", "lit_align", "fit", "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert usage.returncode == 0 and "--trainer" in usage.stdout, usage.stderr[-2000:]
