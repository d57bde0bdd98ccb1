#!/usr/bin/env bash
# Grade a candidate VAE decoder of tiny-sd 2 by the model card's commands, on the same prompts and seeds as every
# candidate before it (docs/model-card.md, "Known flaws"), so its column can stand beside theirs:
#   bash scripts/grade_decoder.sh MODEL_DIR NAME [OUT_DIR]     (PYTHON=.venv/bin/python to choose the interpreter)
# MODEL_DIR is a whole pipeline folder (the shipped UNet with the candidate's vae/); the grades go to
# OUT_DIR/NAME-{smudges,marks,held-out,pairs,backgrounds,locality,single}.json (OUT_DIR: docs/decoder_candidates).
# REFERENCE=DIR (another VAE's folder: config.json and weights) measures the marks of every kind beside that VAE's.
# About 30 minutes on 2 CPU cores, the quick grades first: the smudges (what the decoder is trained against) and
# the held-out prompts (what it most easily loses) tell within 6 minutes whether the rest is worth waiting for.
# Each grade is skipped when its file exists, so a run cut short goes on where it stopped.
set -euo pipefail
model=${1:?a pipeline folder holding the candidate decoder}
name=${2:?a name for the candidate (the files are NAME-*.json)}
out=${3:-docs/decoder_candidates}
python=${PYTHON:-python}
# Two torch threads on two cores: run this alone (two such jobs slow each other several times over).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$out"

grade() {  # grade WHAT ARGS...: one evaluation, written to $out/$name-WHAT.json unless it is there already
  local what=$1; shift
  local file="$out/$name-$what.json"
  if [[ -f $file ]]; then echo "$file: there already, skipped"; return; fi
  echo "== $what ($(date +%H:%M:%S))"
  "$@" --out "$file.partial"
  mv "$file.partial" "$file"   # only a finished grade gets the name the skip above trusts
}
evaluate() { "$python" -m illustrated_sd.evaluate --model "$model" "$@"; }

grade smudges evaluate --smudges 2
grade marks "$python" scripts/decoder_marks.py --model "$model" ${REFERENCE:+--reference "$REFERENCE"}
grade held-out evaluate --only held-out
grade pairs evaluate --only pairs
grade backgrounds evaluate --backgrounds 2
grade locality "$python" scripts/decoder_locality.py --model "$model"
grade single evaluate --only single
echo "== done ($(date +%H:%M:%S)): $out/$name-*.json"
