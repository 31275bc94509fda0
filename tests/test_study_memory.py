"""The study's machine-wide memory reading: this process and its children summed, at the same moment."""

from __future__ import annotations

import subprocess
import sys

from tools.study.memory import TreePeak, rss_mib, tree_rss_mib


def test_the_tree_peak_sums_a_child_held_beside_the_parent():
    hold = 300  # MiB the child touches and holds while the parent polls
    code = (f"import sys, time; b = bytearray({hold} * 2**20); b[::4096] = b'x' * len(b[::4096]); "
            "print('ready', flush=True); sys.stdin.readline()")
    with TreePeak(interval=0.05) as peak:
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        both = tree_rss_mib(__import__("os").getpid())
        child.communicate("\n", timeout=30)
    parent = rss_mib()
    assert both >= parent + hold * 0.9, (both, parent)  # the child's pages are in the sum
    assert peak.peak_mib >= both * 0.95 and peak.peak_mib >= parent + hold * 0.9
    assert tree_rss_mib(__import__("os").getpid()) < parent + hold * 0.5  # and gone with it
