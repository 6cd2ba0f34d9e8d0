#!/usr/bin/env bash
# The README's first command (`make demo`): the whole recipe on the embedded default, then the report.
#   bash scripts/demo.sh [RUN_DIR] [PIPELINE_YAML]   (default runs/demo and configs/pipeline/demo.yaml; rerunning
#                                                    skips finished stages)
# The run ends with the held-out accuracy of the base model, after SFT and after DPO (the eval stage).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${1:-runs/demo}
CONFIG=${2:-configs/pipeline/demo.yaml}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# vLLM on a CPU: a small KV cache, the engine in this process (fast start), its compile cache inside the run folder
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} VLLM_ENABLE_V1_MULTIPROCESSING=0
export VLLM_CACHE_ROOT=${VLLM_CACHE_ROOT:-$RUN_DIR/.vllm_cache}
start=$(date +%s)
.venv/bin/postvl run "$CONFIG" --run-dir "$RUN_DIR"
.venv/bin/postvl report "$RUN_DIR"
echo "demo finished in $(( $(date +%s) - start )) s; open $RUN_DIR/report.html"
