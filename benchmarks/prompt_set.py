"""A prompt set through `illustrated-sd batch`'s machinery (isd.batch.run_prompt_set): time per prompt and trace sizes.

    python benchmarks/prompt_set.py --layout sd15 --prompts 40 --device cuda --out docs/prompt_set_sd15.json
    python benchmarks/prompt_set.py --prompts 20                      # the embedded tiny model on the CPU

Builds the layout with random weights (speed and sizes do not depend on the weights' values; the pictures are
noise, the worst case for the image stored in each trace), traces N prompts of the tiny world's kind (compact,
the batch command's default) into a temporary folder, and reports seconds per prompt (after one warm-up
prompt), the compact trace files' sizes, one full trace's size for comparison, and what N prompts' rate makes
of 1,000 and 100,000 prompts on one GPU and on 8 (assuming, as the batch command's split does, no
communication between processes: 8 GPUs are 8× one).
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import illustrated_sd as isd
from common import pipeline_for  # benchmarks/common.py
from illustrated_sd.batch import Job, run_prompt_set
from illustrated_sd.world.vocabulary import COLORS, POSITIONS, SHAPES


def prompts(n: int) -> list[str]:
    """``n`` single-object prompts: colours × shapes × positions of the tiny world, repeated once all are used."""
    out = [f"a {c} {s} {'on the' if p in ('left', 'right') else 'at the'} {p}" for p in POSITIONS for s in SHAPES for c in COLORS]
    return [out[i % len(out)] for i in range(n)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="tiny", help="'tiny' (the embedded model) or an isd.architectures layout, e.g. sd15")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="default: 25 for tiny, 50 otherwise")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()
    pipe, steps = pipeline_for(args.layout, args.device, args.steps)
    texts = prompts(args.prompts + 1)
    jobs = [Job(index=i, prompt=p, seed=i, steps=steps, guidance=7.5) for i, p in enumerate(texts)]
    with tempfile.TemporaryDirectory() as folder:
        run_prompt_set(lambda device: pipe, jobs[:1], folder, record=isd.RecordOptions(compact=True), progress=False)  # warm-up
        seconds = []
        for job in jobs[1:]:  # one at a time, to time each (the same calls the batch command makes)
            start = time.perf_counter()
            run_prompt_set(lambda device: pipe, [job], folder, record=isd.RecordOptions(compact=True), progress=False)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
        sizes = [p.stat().st_size for p in Path(folder).glob("*.safetensors")]
        full = pipe(texts[0], num_inference_steps=steps, seed=0, progress=False).save(Path(folder) / "full.safetensors").stat().st_size
    per_prompt = statistics.median(seconds)
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "model": pipe.name, "layout": args.layout,
        "size": pipe.default_size, "steps": steps, "prompts_timed": len(seconds), "dtype": str(pipe.dtype),
        "s_per_prompt_median": round(per_prompt, 3), "s_per_prompt_min": round(min(seconds), 3),
        "compact_trace_mib_mean": round(statistics.mean(sizes) / 2**20, 3), "compact_trace_mib_max": round(max(sizes) / 2**20, 3),
        "full_trace_mib": round(full / 2**20, 1),
        "extrapolated": {"1000_prompts_1_gpu_h": round(1000 * per_prompt / 3600, 2), "100000_prompts_8_gpus_h": round(100_000 * per_prompt / 8 / 3600, 1),
                         "100000_prompts_gib": round(100_000 * statistics.mean(sizes) / 2**30, 1)},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
