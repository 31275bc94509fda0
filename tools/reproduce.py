"""Reproduce the study's two tracks, instruction following and Countdown, in one command.

    python tools/reproduce.py --profile embedded   # offline on CPU, about an hour on 2 cores
    python tools/reproduce.py --profile smoke      # tiny models, the whole chain in seconds
    python tools/reproduce.py --profile paper      # configs/paper/: hub access and a GPU
    python tools/reproduce.py --profile paper-smoke  # every configs/paper/ run on tiny stand-ins, CPU, ~1 min

The same as ``python -m lit_align.reproduce``; see lit_align/reproduce/runner.py for the options.
"""

from lit_align.reproduce.runner import main

if __name__ == "__main__":
    main()
