#!/usr/bin/env bash
# The exact commands that trained tiny-sd 2 (the version-2 world) on one GPU; see docs/model-card.md.
#   bash scripts/train_tiny_sd2.sh CHECKPOINT_DIR MODEL_DIR [--compile]     (PYTHON=python3 to choose the interpreter)
# Every stage resumes from CHECKPOINT_DIR, so a run cut short can be started again with the same command
# (a stage that already ran trains on for its budget once more).
set -euo pipefail
ckpt=${1:?checkpoint folder}
model=${2:?folder to export the pipeline to}
compile=${3:-}
train() { "${PYTHON:-python}" -m illustrated_sd.train run --world 2 --out "$ckpt" "$@"; }
train --stages clip,vae --minutes 2,4
train --stages unet --minutes 11 --batch-size 512 --dataset-size 200000 --anneal $compile
train --stages decoder --minutes 2.5
"${PYTHON:-python}" -m illustrated_sd.train export "$ckpt" "$model" --force
