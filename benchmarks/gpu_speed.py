"""Traced vs plain diffusers on a GPU, same process, same seed, alternating runs.

Builds the real SD 1.5 architecture with random weights (speed does not depend on the weights),
fp16, 512×512, 50 steps, guidance 7.5, and reports seconds per image (min, median), the ratio, peak
GPU memory, the size of the trace, and whether the images are identical.

    python benchmarks/gpu_speed.py --layout sd15 --repeats 3 --out docs/gpu_speed.json
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import illustrated_sd as isd


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sd15")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/gpu_speed.json"))
    args = parser.parse_args()
    pipe = isd.IllustratedPipeline(isd.build_random_pipeline(args.layout, dtype=torch.float16).to("cuda"))
    prompt, size = "a red circle on the left", 512

    def plain():
        return pipe.pipeline(prompt, num_inference_steps=args.steps, guidance_scale=7.5, height=size, width=size,
                             generator=torch.Generator().manual_seed(0)).images[0]

    def traced():
        return pipe(prompt, num_inference_steps=args.steps, guidance_scale=7.5, height=size, width=size, seed=0, progress=False)

    def timed(fn):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - start, torch.cuda.max_memory_allocated()

    plain(), traced()  # warm-up
    runs = {"plain": [], "traced": []}
    peaks = {}
    for _ in range(args.repeats):
        image, seconds, peaks["plain"] = timed(plain)
        runs["plain"].append(seconds)
        trace, seconds, peaks["traced"] = timed(traced)
        runs["traced"].append(seconds)
    trace_bytes = sum(t.numel() * t.element_size() for t in [*trace.attention_maps.values(), trace.latents, trace.noise_pred,
                                                            trace.noise_pred_text, trace.noise_pred_uncond, trace.pred_x0,
                                                            trace.text_hidden_states])
    result = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "layout": args.layout, "dtype": "float16",
        "size": size, "steps": args.steps, "repeats": args.repeats,
        **{f"{k}_s_min": round(min(v), 3) for k, v in runs.items()},
        **{f"{k}_s_median": round(statistics.median(v), 3) for k, v in runs.items()},
        "traced_over_plain_median": round(statistics.median(runs["traced"]) / statistics.median(runs["plain"]), 3),
        "peak_gib": {k: round(v / 2**30, 2) for k, v in peaks.items()},
        "trace_mib": round(trace_bytes / 2**20, 1),
        "max_abs_pixel_difference": int(np.abs(np.asarray(image, dtype=int) - np.asarray(trace.image, dtype=int)).max()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
