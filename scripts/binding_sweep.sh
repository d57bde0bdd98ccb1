#!/usr/bin/env bash
# Compare two continuations of the shipped model's grounding stage on the GPU, side by side:
#   a: more grounding on scenes with 60% two-object pictures;  b: the same plus the binding loss.
# Both are graded with the pair prompts (3 seeds each) and the single-object prompts, next to the
# shipped model (pairs only). Writes the UNets and summaries.json to $OUT (device tool) or ./outputs.
#     bash scripts/binding_sweep.sh [minutes]
set -e
OUT=${OUT:-outputs/binding_sweep}; MIN=${1:-4}; mkdir -p "$OUT"
python -m illustrated_sd.train import illustrated_sd/assets/tiny-sd /tmp/sweep_a > /dev/null 2>&1
rm -rf /tmp/sweep_b && cp -r /tmp/sweep_a /tmp/sweep_b
train() {  # checkpoint, extra flags
  python -m illustrated_sd.train run --stages ground --minutes "$MIN" --two-objects 0.6 --out "$1" "${@:2}" > "$1.log" 2>&1
  python -m illustrated_sd.train export "$1" "$1_model" > /dev/null 2>&1
}
train /tmp/sweep_a & train /tmp/sweep_b --binding 0.1 &
python -m illustrated_sd.evaluate --device cuda --only pairs --seeds 3 --out /tmp/sweep_eval_shipped_pairs.json > /dev/null 2>&1 &
wait
for m in a b; do
  python -m illustrated_sd.evaluate --model /tmp/sweep_${m}_model --device cuda --only pairs --seeds 3 --out /tmp/sweep_eval_${m}_pairs.json > /dev/null 2>&1 &
  python -m illustrated_sd.evaluate --model /tmp/sweep_${m}_model --device cuda --only single --out /tmp/sweep_eval_${m}_single.json > /dev/null 2>&1 &
  for f in /tmp/sweep_${m}_model/unet/diffusion_pytorch_model-0000*.safetensors; do cp "$f" "$OUT/unet_${m}_$(basename "$f")"; done
done
wait
python - "$OUT" <<'PY'
import glob, json, sys
out = {f.split("sweep_eval_")[1][:-5]: json.load(open(f))["summary"] for f in sorted(glob.glob("/tmp/sweep_eval_*.json"))}
out.update({f"log_{m}": json.load(open(f"/tmp/sweep_{m}/train_log.json"))["ground"] for m in "ab"})
json.dump(out, open(f"{sys.argv[1]}/summaries.json", "w"), indent=1)
print(json.dumps({k: {x: v[x] for x in v if x.startswith(("pair_both", "single_", "pointing_game"))} for k, v in out.items() if not k.startswith("log")}, indent=1))
PY
