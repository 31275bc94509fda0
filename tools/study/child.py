"""Run one stage's module in this process and record this process's own peak RSS.

    python -c "$(cat tools/study/child.py)" PEAK_FILE MODULE [ARGS...]

runs ``python -m MODULE ARGS...`` and, on exit, writes the process's ``VmHWM`` (KiB) to PEAK_FILE. It is
handed to ``python -c`` as text, not run as a script: ``-c``, like ``-m``, puts the working directory first
on Python's path (a script would put its own folder there), so MODULE is found as ``python -m`` finds it.
The runner starts stages that sample with vLLM this way. The kernel's ``ru_maxrss`` of a child is no use here:
it carries the parent's high-water mark across the fork and exec, so a small stage started from a large
runner would report the runner's peak.
"""

import atexit
import runpy
import sys


def _write_peak(path: str) -> None:
    try:
        with open("/proc/self/status") as status:
            line = next((line for line in status if line.startswith("VmHWM:")), None)
    except OSError:
        line = None
    with open(path, "w") as out:
        out.write(line.split()[1] if line else "")


if __name__ == "__main__":
    peak_file, module, *args = sys.argv[1:]
    atexit.register(_write_peak, peak_file)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
