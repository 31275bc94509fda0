#!/usr/bin/env bash
# Everything the GPU figures of docs/benchmarks.md need, in one command on a one-GPU machine that has
# torch, lightning, transformers and peft but not the embedded models (see random_models.py):
#
#   bash tools/bench/gpu_session.sh OUT_DIR
#
# Wheels for what that machine lacks (trl, datasets, ...) may sit in .whl/; model skeletons (configs
# and tokenizers) in .bench_models/ (python -m tools.bench.random_models --write-skeletons .bench_models).
set -u
OUT=${1:?output folder}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
rm -rf /tmp/site
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PWD:/tmp/site"
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, transformers, lightning, trl, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'lightning', lightning.__version__, 'trl', trl.__version__, 'peft', peft.__version__, 'cuda', torch.version.cuda)"
  nproc; free -g | head -2
} 2>&1 | tee "$OUT/machine.txt"

echo "== random copies of the embedded models" | tee -a "$OUT/log.txt"
python3 -m tools.bench.random_models --skeletons .bench_models --out /tmp/bench_models 2>&1 | tail -3 | tee -a "$OUT/log.txt"
export LIT_ALIGN_BENCH_POLICY=/tmp/bench_models/smollm2-135m-instruct LIT_ALIGN_BENCH_RM=/tmp/bench_models/all-minilm-l6-v2

# the table first (17 runs of ~20 s on an H200), then the MFU, so a command cut at 10 minutes keeps the table
echo "== side-by-side table, one GPU, bf16-mixed" | tee -a "$OUT/log.txt"
timeout 430 python3 -m tools.bench.run --device cuda --precision bf16-mixed --threads 4 --repeats 1 --steps 8 --warmup 2 \
  --methods sft rm dpo rloo logprobs --timeout 90 --out /tmp/bench_gpu 2>&1 | tee -a "$OUT/log.txt"
python3 -m tools.bench.run --report-only --out /tmp/bench_gpu >/dev/null 2>&1
cp /tmp/bench_gpu/results.md /tmp/bench_gpu/results.json /tmp/bench_gpu/runs.jsonl "$OUT/" 2>/dev/null
tar czf "$OUT/logs.tgz" -C /tmp/bench_gpu logs 2>/dev/null

echo "== tensor memory of one SFT step: lit_align's log-prob path vs the model's own loss" | tee -a "$OUT/log.txt"
timeout 60 python3 -m tools.bench.live_memory --device cuda --threads 4 2>&1 | tail -6 | tee "$OUT/live_memory.md" | tee -a "$OUT/log.txt"

echo "== MFU: SFT, Qwen2.5-0.5B-sized, bf16-mixed (add --compile for per-layer torch.compile)" | tee -a "$OUT/log.txt"
timeout 100 python3 -m tools.bench.mfu --batch 8 --seq 2048 --steps 8 --warmup 3 --out "$OUT/mfu.json" 2>&1 | tail -2 | tee -a "$OUT/log.txt"
echo "== done" | tee -a "$OUT/log.txt"
