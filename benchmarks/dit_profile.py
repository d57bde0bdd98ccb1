"""Where a traced Flux-dev step spends its time against a plain one: torch.profiler's table of both (GPU).

First each call's wall time against the GPU's busy time (a call whose wall time exceeds its GPU time waits for Python
or for copies), then the kernels by GPU time and the operators by CPU time.

    python benchmarks/dit_profile.py --steps 4
    python benchmarks/dit_profile.py --model sd3.5-medium --steps 4
"""

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import illustrated_sd as isd
from dit_speed import PROMPT, build


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="flux-dev")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    pipe = build(args.model)
    traced = isd.IllustratedPipeline(pipe)
    runs = {"plain": lambda: pipe(PROMPT, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0)),
            "traced": lambda: traced(PROMPT, num_inference_steps=args.steps, progress=False)}
    walls = {name: [] for name in runs}
    for name, run in [*runs.items()] * 5:  # wall times, alternating, after a first warm-up call of each
        torch.cuda.synchronize()
        began = time.perf_counter()
        run()
        torch.cuda.synchronize()
        walls[name].append(time.perf_counter() - began)
    print({name: f"wall {statistics.median(w[1:]) * 1e3:.0f} ms (median of {len(w) - 1})" for name, w in walls.items()}, flush=True)
    for name, run in runs.items():
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        events = prof.key_averages()
        gpu = sum(e.self_device_time_total for e in events) / 1e3
        cpu = sum(e.self_cpu_time_total for e in events) / 1e3
        print(f"== {name}: GPU busy {gpu:.0f} ms, CPU in operators {cpu:.0f} ms, over {args.steps} steps")
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=60))
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60), flush=True)


if __name__ == "__main__":
    main()
