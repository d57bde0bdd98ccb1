#!/usr/bin/env bash
# Grade a model on one GPU as docs/evaluation.json was graded: the accuracy (3 seeds) and the phenomena
# (guidance curves, x̂₀ sharpness, samplers; on N prompts) run side by side as two processes, since the tiny model
# leaves the GPU mostly idle, then are merged into one file.
#   bash scripts/evaluate_gpu.sh OUT.json [MODEL_DIR] [N=16]     (PYTHON=python3 to choose the interpreter)
set -euo pipefail
out=${1:?output json}
model=${2:+--model $2}
n=${3:-16}
python=${PYTHON:-python}
tmp=$(mktemp -d)
export OMP_NUM_THREADS=4  # two processes beside each other: cap their threads
"$python" -m illustrated_sd.evaluate $model --seeds 3 --device cuda --out "$tmp/accuracy.json" > "$tmp/accuracy.log" 2>&1 &
accuracy=$!
"$python" -m illustrated_sd.evaluate $model --seeds 3 --device cuda --phenomena "$n" --phenomena-only --out "$tmp/phenomena.json" \
  > "$tmp/phenomena.log" 2>&1 || { tail -20 "$tmp/phenomena.log"; exit 1; }
wait $accuracy || { tail -20 "$tmp/accuracy.log"; exit 1; }
"$python" - "$tmp/accuracy.json" "$tmp/phenomena.json" "$out" <<'PY'
import json, sys
accuracy, phenomena = (json.load(open(p)) for p in sys.argv[1:3])
accuracy["phenomena"] = phenomena["phenomena"]
accuracy["settings"]["device"] = "cuda"
json.dump(accuracy, open(sys.argv[3], "w"), indent=1)
print(json.dumps({"summary": accuracy["summary"], "phenomena": accuracy["phenomena"]}, indent=1))
PY
