"""Several GPUs against one on a prompt set: `illustrated-sd batch`'s machinery under `accelerate launch`.

    accelerate launch --num_processes 1 benchmarks/multi_gpu.py --prompts 200 --out one.json
    accelerate launch --multi_gpu --num_processes 2 benchmarks/multi_gpu.py --prompts 200 --out two.json

(One run of each is noisy: alternate them, one, two, two, one, and compare the means. NCCL_NVLS_ENABLE=0 keeps
NVLink multicast off, which the processes do not need: they never exchange tensors, only wait for each other.)

Each process builds the layout with random weights on its own GPU (the same seed: the same model), then, timed
from the moment every process is ready to the moment the last trace is written, the prompts are split between
the processes by accelerate (``PartialState.split_between_processes``, as ``illustrated-sd batch`` does) and
each traces its share (compact traces, in batches of --batch-size: 8 on a GPU, as the command draws them).
Rank 0 writes images per second to --out.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from accelerate import PartialState

import illustrated_sd as isd
from illustrated_sd.trace.sets import Job, run_prompt_set

from common import pipeline_for  # benchmarks/common.py (the script's own folder is on the path)
from prompt_set import prompts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sd15")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per call (default: 8 on a GPU, 1 on the CPU)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    state = PartialState(cpu=not torch.cuda.is_available())  # (a smoke run on the CPU: several processes through gloo)
    pipe, _ = pipeline_for(args.layout, str(state.device), args.steps)
    size = args.batch_size or (8 if torch.cuda.is_available() else 1)
    # the first batch of each process warms it up; then --prompts more are timed
    warm = size * state.num_processes
    jobs = [Job(index=i, prompt=p, seed=i, steps=args.steps, guidance=7.5) for i, p in enumerate(prompts(args.prompts + warm))]
    # every process writes into the main process's folder (one machine, one disk)
    shared = [tempfile.mkdtemp(prefix="multi_gpu_")] if state.is_main_process else [None]
    if state.num_processes > 1:
        torch.distributed.broadcast_object_list(shared, src=0)
    folder = Path(shared[0])
    run_prompt_set(lambda device: pipe, jobs[:warm], folder, record=isd.RecordOptions(compact=True), progress=False, batch_size=size)  # warm-up
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    state.wait_for_everyone()
    start = time.perf_counter()
    result = run_prompt_set(lambda device: pipe, jobs, folder, record=isd.RecordOptions(compact=True), progress=False, batch_size=size)
    sync()
    state.wait_for_everyone()
    seconds = time.perf_counter() - start
    if state.is_main_process:
        made = len(jobs) - warm  # the warm-up's prompts were already there
        row = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "gpus": state.num_processes, "layout": args.layout,
               "steps": args.steps, "batch_size": size,
               "prompts": made, "seconds": round(seconds, 1), "images_per_s": round(made / seconds, 3),
               "traced": len(isd.TraceSet(folder)), "skipped_warmup": result["skipped"]}
        args.out.write_text(json.dumps(row, indent=1))
        print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
