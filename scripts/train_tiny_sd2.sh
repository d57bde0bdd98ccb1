#!/usr/bin/env bash
# The exact commands that trained tiny-sd 2 (the version-2 world) on one GPU; see docs/model-card.md.
#   bash scripts/train_tiny_sd2.sh CHECKPOINT_DIR MODEL_DIR [--compile]     (PYTHON=python3 to choose the interpreter)
# Every stage resumes from CHECKPOINT_DIR, so a run cut short can be started again with the same command
# (a stage that already ran trains on for its budget once more). The whole run takes about 25 GPU minutes.
# The first candidate (model card, "tiny-sd 2") was trained by this script as of commit 7973c37, that is
# the UNet stage with --batch-size 512, without --compile and without grounding (5,428 steps).
# benchmarks/train_speed.py then showed that the compiled stage takes a step of batch 1024 in the same
# time, and the candidate's pointing game (22.6%) and pairs (40%) showed that world 2 needs the grounding
# stage that fixed them in world 1, so the second run adds it (3.5 minutes after the UNet).
set -euo pipefail
ckpt=${1:?checkpoint folder}
model=${2:?folder to export the pipeline to}
compile=${3:-}
train() { "${PYTHON:-python}" -m illustrated_sd.train run --world 2 --out "$ckpt" "$@"; }
train --stages clip,vae --minutes 1.5,3.5
train --stages unet --minutes 10 --batch-size 1024 --dataset-size 200000 --anneal $compile
train --stages ground --minutes 3.5 --anneal
train --stages decoder --minutes 3
"${PYTHON:-python}" -m illustrated_sd.train export "$ckpt" "$model" --force
