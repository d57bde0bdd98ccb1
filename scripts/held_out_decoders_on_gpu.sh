#!/bin/bash
# One device call: the held-out grade of both embedded models (tiny-sd 2, and tiny-flux, which shares its VAE) through
# the shipped decoder and a candidate, side by side on one GPU, with more seeds than the 3 a candidate's own call grades
# (SEEDS, default 9: 324 pictures a model), so that a difference of a picture or two can be told from the seeds' noise.
#   cp CANDIDATE_VAE_WEIGHTS candidate_vae.safetensors (untracked: it travels); copy this to the root as gpu_job.sh;
#   carry [".whl"]; SEEDS=9 bash gpu_job.sh
# The candidate's GroupNorm groups must be the shipped decoder's (its config is the shipped one). The tracked tree and a
# 7.8 MB candidate exceed the 64 MiB that travels: move docs/ and illustrated_sd/assets/tiny-flux-fast out of the working
# tree for the call (neither is read here). Written in session 35, whose starts were refused: not run yet (the 9-seed
# grades of part 22 in its JSON ran on the CPU with the same evaluate commands).
set -o pipefail
mkdir -p /tmp/site && tar xJf .whl/diffusers-0.42.1.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:.:benchmarks OMP_NUM_THREADS=2
T0=$(date +%s); C=/tmp/candidate
mkdir -p $C && cp -r illustrated_sd/assets/tiny-sd illustrated_sd/assets/tiny-flux $C/
cp candidate_vae.safetensors $C/tiny-sd/vae/diffusion_pytorch_model.safetensors
E="python -m illustrated_sd.evaluate --only held-out --device cuda --seeds ${SEEDS:-9}"
L=${LIMIT:-300}
timeout $L $E --out $OUT/shipped-tiny-sd.json > /dev/null 2>&1 &
timeout $L $E --model $C/tiny-sd --out $OUT/candidate-tiny-sd.json > /dev/null 2>&1 &
timeout $L $E --model tiny-flux --out $OUT/shipped-tiny-flux.json > /dev/null 2>&1 &
timeout $L $E --model $C/tiny-flux --out $OUT/candidate-tiny-flux.json > /dev/null 2>&1 &
wait
echo "graded at $(( $(date +%s) - T0 )) s"; nvidia-smi --query-gpu=name --format=csv,noheader
python - <<'PY'
import collections, json, os
from pathlib import Path
for f in sorted(Path(os.environ["OUT"]).glob("*.json")):
    d = json.loads(f.read_text()); s = d["summary"]
    missed = collections.Counter((c["prompt"].split()[1], (o["read"] or ["nothing"])[0]) for c in d["cases"] for o in c["objects"] if not o["color"])
    print(f.stem, s["held_out_color_accuracy"], s["held_out_shape_accuracy"], s["held_out_prompts"], dict(missed))
PY
