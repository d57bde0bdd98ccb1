#!/usr/bin/env bash
# Grade a model as docs/evaluation.json was graded: the accuracy (3 seeds) and the phenomena (guidance curves, x̂₀
# sharpness, samplers; on N prompts) run side by side as two processes (the tiny model keeps neither a GPU nor two
# CPU cores busy alone), then are merged into one file. Each process logs to OUT.accuracy.log / OUT.phenomena.log.
#   bash scripts/evaluate_side_by_side.sh OUT.json [MODEL_DIR] [N=8]
#   (PYTHON=python3 chooses the interpreter, DEVICE=cuda the device, THREADS the torch threads of each process)
set -euo pipefail
out=${1:?output json}
model=${2:+--model $2}
n=${3:-8}
python=${PYTHON:-python}
device=${DEVICE:-cpu}
export OMP_NUM_THREADS=${THREADS:-1}  # two processes beside each other: cap their threads
"$python" -m illustrated_sd.evaluate $model --seeds 3 --device "$device" --out "$out.accuracy.json" > "$out.accuracy.log" 2>&1 &
accuracy=$!
"$python" -m illustrated_sd.evaluate $model --seeds 3 --device "$device" --phenomena "$n" --phenomena-only \
  --out "$out.phenomena.json" > "$out.phenomena.log" 2>&1 || { tail -5 "$out.phenomena.log"; exit 1; }
wait $accuracy || { tail -5 "$out.accuracy.log"; exit 1; }
"$python" - "$out.accuracy.json" "$out.phenomena.json" "$out" <<'PY'
import json, sys
accuracy, phenomena = (json.load(open(p)) for p in sys.argv[1:3])
accuracy["phenomena"] = phenomena["phenomena"]
json.dump(accuracy, open(sys.argv[3], "w"), indent=1)
print(json.dumps({"summary": accuracy["summary"], "phenomena": accuracy["phenomena"]}, indent=1))
PY
rm "$out.accuracy.json" "$out.phenomena.json"
