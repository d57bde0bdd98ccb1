#!/usr/bin/env bash
# The exact commands that distilled tiny-flux-fast (docs/model-card-tiny-flux-fast.md) from the shipped tiny-flux on one
# GPU, one foreground device call (≤ 10 minutes) per part:
#   bash scripts/train_tiny_flux_fast.sh CHECKPOINT_DIR MODEL_DIR [PART]     (PYTHON=python3 to choose the interpreter)
#   part 1  the teacher draws (noise, picture) pairs: 25 Euler steps with real guidance at a scale drawn from 1 to 8
#           per pair (61,440 pairs: 60 batches of 1,024); then reflow trains a rank-16 correction B·A of every linear
#           layer and a guidance embedder on the straight lines between them (float32, batches of 512); exported to
#           MODEL_DIR. Session 28 (2026-12-06, one H100): pairs 106 s a call; the call before had drawn its 61,440
#           pairs into the same checkpoint on the same machine before its reflow failed (in bfloat16, since float32),
#           so part 1 learned from 122,880; reflow 6,959 steps in 4.6 minutes (25 a second), loss 0.336 → 0.090 (first
#           and last logged, on its own σ mix). Held-out, 1 / 2 / 4 steps (3 seeds): colour 77.8 / 81.5 / 85.2%, shape
#           81.5 / 89.8 / 88.9%, position 97.2 / 99.1 / 99.1% (the teacher at 25 steps: 92.6 / 94.4 / 100). Not shipped:
#   part 2  new pairs (seed 1), and a rank-32 student started from part 1's rank-16 one (its A and B fill the first 16
#           ranks; the rest start at B = 0), trained on: PART1_DIR is part 1's export. Session 28 (one H100): 61,440
#           pairs, reflow 8,999 steps in 3.6 minutes, loss 0.089 → 0.074. Held-out at 1 / 2 / 4 steps: colour
#           83.3 / 88.9 / 91.7%, shape 85.2 / 89.8 / 89.8%, position 97.2 / 100 / 100%: within 10 points of the
#           teacher at one step, 5 at two (docs/jump.json). That is the shipped tiny-flux-fast (model card).
# MODEL_DIR must sit beside tiny-flux's folder (illustrated_sd/assets/tiny-flux-fast beside illustrated_sd/assets/tiny-flux):
# tiny-flux-fast ships only its transformer's correction, and takes everything else from tiny-flux and tiny-sd.
set -euo pipefail
ckpt=${1:?checkpoint folder}
model=${2:?folder to export the pipeline to}
part=${3:-1}
python=${PYTHON:-python}
train() { "$python" -m illustrated_sd.train run --world 2 "$@"; }
if [[ $part == 1 ]]; then
  train --out "$ckpt" --stages pairs --minutes 2.2 --max-steps 60 --batch-size 1024
  train --out "$ckpt" --stages reflow --minutes "${REFLOW_MINUTES:-4.6}" --batch-size 512 --rank 16
fi
if [[ $part == 2 ]]; then
  train --out "$ckpt" --stages pairs --minutes 2.2 --max-steps 60 --batch-size 1024 --seed 1
  train --out "$ckpt" --stages reflow --minutes "${REFLOW_MINUTES:-3.6}" --batch-size 512 --seed 1 --rank 32 --init "${PART1_DIR:?part 1's exported folder}"
fi
"$python" -m illustrated_sd.train export "$ckpt" "$model" --force
