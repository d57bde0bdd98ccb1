#!/bin/bash
# One device call (≤ 10 min): a part of tiny-flux's training (scripts/train_tiny_flux.sh PART, from the shipped model
# when the part imports it: part 5), exported over this copy's illustrated_sd/assets/tiny-flux (beside tiny-sd, whose
# VAE and CLIP it reads), then graded on the GPU as its model card grades it: held-out pairs, two-object pairs, single
# objects (1 seed), the backgrounds; and T5's binding (scripts/t5_binding.py) and the text-encoder swap on the held-out
# prompts (scripts/held_out_text_swap.py, on the GPU's CPU cores), new against shipped.
#   copy to the repository root as gpu_job.sh; carry [".whl"]; PART=5 FLUX_MINUTES=5 CONSISTENCY=1 bash gpu_job.sh
# Returns ≤ 8 files: the transformer's and T5's weights, the train log, the grades.
set -o pipefail
mkdir -p /tmp/site && tar xJf .whl/diffusers-0.42.1.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:.:benchmarks OMP_NUM_THREADS=2
T0=$(date +%s); M=illustrated_sd/assets/tiny-flux
cp -r $M /tmp/shipped-tiny-flux
PYTHON=python bash scripts/train_tiny_flux.sh /tmp/ckpt $M ${PART:?which part} 2>&1 | tr '\r' '\n' | grep -v "it/s\]\|s/it\]" | tail -5
echo "trained at $(( $(date +%s) - T0 )) s"
E="python -m illustrated_sd.evaluate --model tiny-flux --device cuda"
L=${LIMIT:-200}
timeout $L $E --only held-out --out $OUT/held-out.json > /tmp/held-out.log 2>&1 &
timeout $L $E --only pairs --out $OUT/pairs.json > /tmp/pairs.log 2>&1 &
timeout $L $E --only single --seeds 1 --out $OUT/single1.json > /tmp/single.log 2>&1 &
timeout $L $E --backgrounds 2 --out $OUT/backgrounds.json > /tmp/backgrounds.log 2>&1 &
timeout $L python scripts/t5_binding.py --model shipped=/tmp/shipped-tiny-flux --model new=$M --out $OUT/t5_binding.json > /tmp/t5.log 2>&1 &
wait
echo "graded at $(( $(date +%s) - T0 )) s"; nvidia-smi --query-gpu=name --format=csv,noheader
cp $M/transformer/diffusion_pytorch_model.safetensors $OUT/transformer.safetensors
cp $M/text_encoder_2/model.safetensors $OUT/text_encoder_2.safetensors; cp $M/train_log.json $OUT/
python - <<'PY'
import collections, json, os
from pathlib import Path
out = Path(os.environ["OUT"])
for name in ("held-out", "pairs", "single1", "backgrounds"):
    f = out / f"{name}.json"
    if not f.exists():
        print(name, "missing"); continue
    d = json.loads(f.read_text())
    s = d.get("summary") or d
    print(name, {k: v for k, v in s.items() if isinstance(v, (int, float)) and v is not None and "vae" not in k})
    if name == "held-out":
        print("  missed", collections.Counter((c["prompt"].split()[1], (o["read"] or ["nothing"])[0]) for c in d["cases"] for o in c["objects"] if not o["color"]))
if (out / "t5_binding.json").exists():
    print("t5", json.dumps(json.loads((out / "t5_binding.json").read_text()))[:600])
PY
