#!/usr/bin/env bash
# The rollout checks that need a GPU, in one command (about 5 minutes on one H100/H200, engine starts
# included): sleep mode on a real engine, vLLM's own server on a GPU (its own where two exist) with the
# gloo plugin, two server replicas behind one client, tensor parallelism over two GPUs (where two exist),
# QLoRA with vLLM refused. Needs vLLM for CUDA (pip install -e ".[vllm,test]").
#
#   bash tools/bench/gpu_rollouts.sh OUT_DIR
set -u
OUT=${1:?output folder}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/machine.txt"
timeout 540 python3 -m pytest -m "gpu and vllm" tests/test_gpu_rollouts.py -q -p no:cacheprovider 2>&1 | tee "$OUT/gpu_rollouts.txt"
