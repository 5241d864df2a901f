#!/usr/bin/env bash
# The distiller recipe of examples/train_distiller.yaml, end to end, with the time of each step.
#   bash examples/train_distiller.sh [OUT]        (default OUT: runs/distiller)
# Re-running resumes: finished steps are skipped or answered from the call cache, training
# continues from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-runs/distiller}"
LM="${LMMIXUP:-.venv/bin/lmmixup}"
RECIPE=examples/train_distiller.yaml
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

step() {  # step NAME COMMAND...: run it and log its wall time
  local name="$1" start=$SECONDS
  shift
  echo "== $name"
  "$@"
  echo "== $name: $((SECONDS - start)) s" | tee -a "$OUT/timings.txt"
}

mkdir -p "$OUT"
: >"$OUT/timings.txt"
step mixture "$LM" mixture build -c examples/mixture_small.yaml -o "$OUT/mixture"
step pool "$LM" data import gsm8k sharegpt --sample 60 --seed 7 --max-completion-chars 600 \
  -o "$OUT/pool.jsonl"
step rate "$LM" rate "$OUT/pool.jsonl" -o "$OUT/rated.jsonl" --propagate 0.5
step library "$LM" rewards build-library "$OUT/rated.jsonl" -o "$OUT/quality-library" --overwrite
step sft "$LM" train sft -c "$RECIPE" --mixture "$OUT/mixture" -o "$OUT/sft"
step grpo "$LM" train grpo -c "$RECIPE" --model "$OUT/sft/final" --mixture "$OUT/mixture" \
  -o "$OUT/grpo" --set "rewards.quality_library=$OUT/quality-library"
step eval "$LM" eval distiller base=bundled:smollm2-135m-instruct sft="$OUT/sft/final" \
  grpo="$OUT/grpo/final" --test "$OUT/mixture/grpo_test.jsonl" -o "$OUT/eval" -c "$RECIPE" \
  --quality-library "$OUT/quality-library"
echo "total: $(awk '{s += $(NF-1)} END {print s}' "$OUT/timings.txt") s"
