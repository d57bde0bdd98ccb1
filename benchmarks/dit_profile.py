"""Where a traced generation (Flux-dev by default) spends its time against a plain one: torch.profiler's table of both (GPU).

First each call's wall time (medians, the two alternating), then for one profiled call of each the GPU's busy time
(a call whose wall time exceeds it waits for Python or for copies), the kernels by GPU time and the operators by CPU
self time (blocking CUDA calls, such as a copy to the CPU that waits for the GPU, included).

    python benchmarks/dit_profile.py --steps 4
    python benchmarks/dit_profile.py --model sd3.5-medium --steps 4
"""

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import illustrated_sd as isd
from common import gpu_busy_ms, round_order  # benchmarks/common.py (the script's own folder is on the path)
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
    for run in runs.values():  # warm-up
        run()
    walls = {name: [] for name in runs}
    for r in range(6):  # wall times, in rounds whose order alternates
        for name in round_order(list(runs), r):
            torch.cuda.synchronize()
            began = time.perf_counter()
            runs[name]()
            torch.cuda.synchronize()
            walls[name].append(time.perf_counter() - began)
    print({name: f"wall {statistics.median(w) * 1e3:.0f} ms (median of {len(w)})" for name, w in walls.items()}, flush=True)
    for name, run in runs.items():
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        events = prof.key_averages()
        cpu = sum(e.self_cpu_time_total for e in events) / 1e3
        print(f"== {name}: GPU busy {gpu_busy_ms(events):.0f} ms, CPU self time {cpu:.0f} ms, over {args.steps} steps")
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=60))
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60), flush=True)


if __name__ == "__main__":
    main()
