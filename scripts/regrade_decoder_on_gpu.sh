#!/bin/bash
# Every grade a shipped decoder change moves, side by side on one GPU in one device call (run 2026-12-07 for part
# 17's decoder, LIMIT=440: six of its eleven jobs finished in time; the rest ran on the CPU or were labelled as the
# earlier decoder's). Put the new VAE into illustrated_sd/assets/tiny-sd/vae first; carry [".whl"] (the tree stays
# under 64 MiB: same-size weights). ≤ LIMIT s each, results in one tarball. Afterwards, on the CPU:
# scripts/decoder_marks.py --reference PART7_VAE_FOLDER (part 7's VAE from commit 6c041c6) --out docs/decoder_marks.json;
# the notebooks (ISD_CLAIMS=survey lists every sentence to revisit); both model cards. ONLY="smudges backgrounds …" runs
# just the jobs named (part 26, session 39: all but evaluation and interventions, LIMIT=430; part 27, session 40: all,
# LIMIT=490, where evaluation, interventions, jump and single did not finish, then ONLY="jump single" LIMIT=430: single).
set -o pipefail
mkdir -p /tmp/site && tar xJf .whl/diffusers-0.42.1.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:.:benchmarks OMP_NUM_THREADS=1
R=/tmp/res; rm -rf $R; mkdir -p $R; T0=$(date +%s)
E="python -m illustrated_sd.evaluate --device cuda"
L=${LIMIT:-530}
j() { local name=$1; shift; [[ -z $ONLY || " $ONLY " == *" $name "* ]] || return 0; ( timeout $L "$@" > $R/$name.log 2>&1; echo "$name rc=$? at $(( $(date +%s) - T0 )) s" >> $R/done.txt ) & }
j evaluation bash -c "DEVICE=cuda THREADS=1 PYTHON=python bash scripts/evaluate_side_by_side.sh $R/evaluation.json"
j interventions $E --interventions 100 --interventions-only --out $R/interventions.json
j smudges $E --smudges 2 --out $R/ghost_smudges.json
j backgrounds $E --backgrounds 2 --out $R/background_obedience.json
j remove $E --remove-colour 4 --out $R/remove_colour.json
j pairs $E --only pairs --out $R/sd-pairs.json
j single $E --only single --out $R/sd-single.json
j jump python scripts/jump_grades.py --seeds 3 --groups held-out,pairs,single --device cuda --out $R/jump.json
j flux bash -c "$E --model tiny-flux --only held-out --out $R/flux-held-out.json && $E --model tiny-flux --only pairs --out $R/flux-pairs.json && $E --model tiny-flux --only single --seeds 1 --out $R/flux-single1.json && $E --model tiny-flux --backgrounds 2 --out $R/flux-backgrounds.json"
j locality python scripts/decoder_locality.py --pairs 64 --paths --inpaint 32 --out $R/decoder_locality.json
j reading env OMP_NUM_THREADS=2 python scripts/held_out_reading.py --out $R/held_out_reading.json
wait
cat $R/done.txt; nvidia-smi --query-gpu=name --format=csv,noheader
tar czf $OUT/results.tgz -C $R .
