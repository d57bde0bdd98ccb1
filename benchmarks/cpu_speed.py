"""Seconds per image of the embedded model on this machine's CPU: traced (IllustratedPipeline, default
recording) vs plain diffusers, same components, 25 steps, guidance 7.5, alternating runs.

    python benchmarks/cpu_speed.py --threads 2 --out docs/cpu_speed.json
"""

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import illustrated_sd as isd

PROMPT = "a yellow triangle on the left and a purple heart on the right"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("docs/cpu_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = isd.load_pipeline()

    def traced():
        pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, seed=0, progress=False)

    def plain():
        pipe.pipeline(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, generator=torch.Generator().manual_seed(0))

    runs = {"traced": [], "plain": []}
    traced(), plain()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("traced", traced), ("plain", plain)):
            start = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - start)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}",
        "steps": args.steps, "guidance": 7.5, "prompt": PROMPT,
        **{f"{name}_s_min": round(min(v), 3) for name, v in runs.items()},
        **{f"{name}_s_median": round(statistics.median(v), 3) for name, v in runs.items()},
    }
    result["traced_over_plain_median"] = round(result["traced_s_median"] / result["plain_s_median"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
