#!/usr/bin/env bash
# Attention at scale on the tiny world (issue 19): the evaluation prompts, each with SEEDS seeds (253 × 4 = 1,012
# generations by default), traced by `illustrated-sd batch` (compact traces), then every heatmap of every object the
# pictures drew right measured against the detector's mask: DAAM's IoU and the pointing game, per word class.
#   bash scripts/attention_at_scale.sh WORKDIR OUT.json
#   (PYTHON=python3 chooses the interpreter, DEVICE=cuda the device, SEEDS the seeds per prompt; a rerun resumes)
set -euo pipefail
work=${1:?a work folder}
out=${2:?output json}
python=${PYTHON:-python}
mkdir -p "$work"
"$python" -m illustrated_sd.evaluate --write-prompts "$work/prompts.jsonl" --seeds "${SEEDS:-4}"
"$python" -m illustrated_sd batch "$work/prompts.jsonl" --out "$work/set" --device "${DEVICE:-cpu}"
"$python" -m illustrated_sd.evaluate --trace-set "$work/set" --out "$out"
