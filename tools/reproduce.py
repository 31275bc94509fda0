"""Reproduce the study's two tracks, instruction following and Countdown, in one command.

    python tools/reproduce.py --profile embedded   # offline on CPU, HF generate: about 105 min on 2 quiet cores
    .venv-vllm/bin/python tools/reproduce.py --profile embedded --rollout-config configs/rollout/vllm.yaml
                                                   # the same sampling with vLLM: the run in docs/results.md
    python tools/reproduce.py --profile smoke      # tiny models, the whole chain in seconds
    python tools/reproduce.py --profile paper      # configs/paper/: hub access and a GPU
    python tools/reproduce.py --profile paper-smoke  # every configs/paper/ run on tiny stand-ins, CPU

The stage plans and the runner live in ``tools/study/`` beside this script, with the ``configs/`` they
read: they belong to a checkout of the repository, not to the installed package. Run as a script, this
file's folder is the first entry of Python's path, so the ``study`` package beside it imports as it is.
See ``tools/study/runner.py`` for the options.
"""

from study.runner import main


if __name__ == "__main__":
    main()
