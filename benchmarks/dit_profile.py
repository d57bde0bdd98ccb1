"""Where a traced Flux-dev step spends its time against a plain one: torch.profiler's table of both (GPU).

    python benchmarks/dit_profile.py --steps 4
"""

import argparse

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
    for name, run in runs.items():
        run()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
        events = prof.key_averages()
        gpu = sum(e.self_device_time_total for e in events) / 1e3
        print(f"== {name}: GPU busy {gpu:.0f} ms over {args.steps} steps")
        print(events.table(sort_by="self_device_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
