#!/usr/bin/env bash
# GPU check (issue 16): embedding, the hf backend's batched generation on a random ~1.3B Llama,
# and 2 GRPO steps of the bundled SmolLM2, each printing its throughput as one JSON line.
#   bench/gpu_check.sh               # a GPU machine with torch, transformers, sentence-transformers
#   bench/gpu_check.sh --cpu-smoke   # tiny sizes on the CPU: proves the script runs anywhere
# Other options go to bench/gpu_check.py (--texts N, --only embed|generate|grpo, --grpo-vllm).
# Stops after GPU_CHECK_TIMEOUT seconds (default 480: the 8 minutes it is sized for).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$PYTHON" bench/gpu_check.py "$@"
