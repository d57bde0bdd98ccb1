"""A prompt set through `illustrated-sd batch`'s machinery (isd.trace.sets.run_prompt_set): its time and trace sizes.

    python benchmarks/prompt_set.py --layout sd15 --prompts 1000 --device cuda --folder /tmp/set --out docs/prompt_set_sd15.json
    python benchmarks/prompt_set.py --prompts 20                      # the embedded tiny model on the CPU

Builds the layout with random weights (speed and sizes do not depend on the weights' values; the pictures are
noise, the worst case for the image stored in each trace), traces N prompts of the tiny world's kind (compact,
the batch command's default; batches of 8 on a GPU, as the command draws them) into --folder, timing each
batch (after one warm-up batch), and reports the set's time, the compact trace files' sizes, one full trace's
size for comparison, and what the rate makes of 100,000 prompts on 8 GPUs (assuming, as the batch command's
split does, no communication between processes: 8 GPUs are 8× one; benchmarks/multi_gpu.py measures 2).

Resumable, like the command: the batches' times are kept in the folder (timings.jsonl) beside the traces, so a
run cut short by --stop-after (or a kill) goes on where it stopped, and the set's time is the sum of its batches.
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
from illustrated_sd.trace.sets import Job, batches, read_index, run_prompt_set
from illustrated_sd.world.vocabulary import COLORS, POSITION_PHRASES, POSITIONS, SHAPES


def prompts(n: int) -> list[str]:
    """``n`` single-object prompts: colours × shapes × positions of the tiny world, repeated once all are used."""
    out = [f"a {c} {s} {POSITION_PHRASES[p][0]}" for p in POSITIONS for s in SHAPES for c in COLORS]
    return [out[i % len(out)] for i in range(n)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="tiny", help="'tiny' (the embedded model) or an isd.models.unet layout, e.g. sd15")
    parser.add_argument("--prompts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None, help="default: 25 for tiny, 50 otherwise")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="prompts per call (default: 8 on a GPU, 1 on the CPU)")
    parser.add_argument("--folder", type=Path, default=None, help="where the traces go (default: a temporary folder); "
                                                                  "a rerun with the same folder resumes")
    parser.add_argument("--stop-after", type=float, default=None, help="stop (resumably) after this many seconds")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON (once the set is complete)")
    args = parser.parse_args()
    began = time.perf_counter()
    pipe, steps = pipeline_for(args.layout, args.device, args.steps)
    size = args.batch_size or (8 if pipe.device.type == "cuda" else 1)
    record = isd.RecordOptions(compact=True)
    folder = args.folder or Path(tempfile.mkdtemp(prefix="prompt_set_"))
    jobs = [Job(index=i, prompt=p, seed=i, steps=steps, guidance=7.5) for i, p in enumerate(prompts(args.prompts))]
    with tempfile.TemporaryDirectory() as warm:  # the first call of a shape pays for memory and kernels: not timed
        run_prompt_set(lambda device: pipe, jobs[:size], warm, record=record, progress=False, batch_size=size)
    log = folder / "timings.jsonl"
    done = read_index(folder) if folder.is_dir() else {}
    for group in batches([job for job in jobs if job.index not in done], size):
        if args.stop_after is not None and time.perf_counter() - began > args.stop_after:
            print(f"stopped after {time.perf_counter() - began:.0f} s with {len(read_index(folder))} of {len(jobs)} prompts; run again to go on")
            return
        start = time.perf_counter()
        run_prompt_set(lambda device: pipe, group, folder, record=record, progress=False, batch_size=size)  # as the command does
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        with log.open("a") as f:
            f.write(json.dumps({"prompts": len(group), "s": time.perf_counter() - start}) + "\n")
    timings = [json.loads(line) for line in log.read_text().splitlines()]
    sizes = [p.stat().st_size for p in folder.glob("*.safetensors")]
    with tempfile.TemporaryDirectory() as spare:
        full = pipe(jobs[0].prompt, num_inference_steps=steps, seed=0, progress=False).save(Path(spare) / "full.safetensors").stat().st_size
    seconds = sum(t["s"] for t in timings)
    per_prompt = seconds / sum(t["prompts"] for t in timings)
    result = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "model": pipe.name, "layout": args.layout,
        "size": pipe.default_size, "steps": steps, "dtype": str(pipe.dtype), "batch_size": size,
        "prompts": len(jobs), "traced": len(read_index(folder)), "batches_timed": len(timings), "set_s": round(seconds, 1),
        "s_per_prompt": round(per_prompt, 3), "images_per_s": round(1 / per_prompt, 3),
        "s_per_batch_median": round(statistics.median(t["s"] for t in timings if t["prompts"] == size), 3),
        "compact_trace_mib_mean": round(statistics.mean(sizes) / 2**20, 3), "compact_trace_mib_max": round(max(sizes) / 2**20, 3),
        "full_trace_mib": round(full / 2**20, 1),
        "extrapolated": {"100000_prompts_8_gpus_h": round(100_000 * per_prompt / 8 / 3600, 1),
                         "100000_prompts_gib": round(100_000 * statistics.mean(sizes) / 2**30, 1)},
    }
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
