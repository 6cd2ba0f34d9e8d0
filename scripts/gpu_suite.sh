#!/usr/bin/env bash
# The GPU suite in one command (`make test-gpu`): tests/gpu (bf16 SFT packing under sdpa / flash_attention_2,
# DPO with shared vision features, vLLM CUDA sampling, every family; the shipped accelerate configs on the GPUs),
# then benchmarks/gpu_sft_tokens.py. Budget: under 8 minutes on one GPU. Without CUDA it says so and exits 2.
set -euo pipefail
PY=${PY:-.venv/bin/python}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_suite: needs a CUDA GPU (torch.cuda.is_available() is False); the CPU suite is \`make test\`." >&2
    exit 2
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
timeout 420 "$PY" -m pytest tests/gpu -q -rs -p no:cacheprovider "$@"
timeout 120 "$PY" benchmarks/gpu_sft_tokens.py --records 200
