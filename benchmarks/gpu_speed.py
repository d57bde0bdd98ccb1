"""Traced vs plain diffusers on a GPU: same process, same seed and settings, alternating runs.

Builds a real Stable Diffusion architecture with random weights (speed does not depend on the weights'
values), float16, 512×512, 50 DDIM steps, guidance 7.5 (SDXL: 1024², 30 Euler steps, guidance 5), and
times, in rounds after a warm-up, the order reversed every other round:

    plain             diffusers' StableDiffusionPipeline (SDPA attention)
    traced            IllustratedPipeline, default full trace (head-averaged cross-attention maps, ...)
    traced_no_maps    the same without attention maps (latents, noise, x0, text only): where time goes
    traced_per_head   one map per head
    traced_self       plus self-attention maps of the lowest-resolution (8×8) layers
    naive             DAAM-style recorder: classic softmax attention everywhere, host copy every step
    edited            traced, with one word's attention reweighted (×0) in every step and layer (isd.edits.Reweight):
                      every cross-attention call runs with an additive bias on its logits
    edited_no_maps    the same edit, recording no attention maps: what an edit itself costs (beside traced_no_maps)
    removed           traced, with one word removed (isd.edits.Remove: the text encoder's mask too)
    swapped           traced, "a red square ..." with the maps of a traced "a red circle ..." injected in the first
                      half of the steps (isd.edits.Swap)
    compact           traced, compact (RecordOptions(compact=True): heatmaps averaged as the loop goes, 3 steps kept)
    *_b8              the same for 8 prompts in one call (seeds 0–7): diffusers' batched call, ``pipe([...] * 8)``
    *_compiled        the same after ``unet.compile()`` (torch.compile), where it works

It reports seconds per image (min and median), the ratio to ``plain`` of the same run, peak GPU
memory, the trace's size, whether the images match plain diffusers, and how many times each pipeline
made the CPU wait for the GPU (``torch.cuda.set_sync_debug_mode``). Results are written after every
variant, so a run cut short still leaves its figures.

    python benchmarks/gpu_speed.py --layout sd15 --out docs/gpu_speed_sd15.json
    python benchmarks/gpu_speed.py --layout sd21-base --out docs/gpu_speed_sd21-base.json
    python benchmarks/gpu_speed.py --layout sdxl-base --variants plain,traced --repeats 20 --no-compile \
        --out docs/gpu_speed_sdxl-base.json
    python benchmarks/gpu_speed.py --layout sd15 --variants plain,traced,traced_no_maps,edited_no_maps,edited,removed,swapped \
        --repeats 20 --no-compile --out docs/gpu_speed_sd15_edits.json
    python benchmarks/gpu_speed.py --layout sd15 --variants plain,traced,compact,plain_b8,traced_b8,compact_b8 --repeats 20 \
        --no-compile --out docs/gpu_speed_sd15_batch.json
"""

import argparse
import json
import statistics
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch

import illustrated_sd as isd

from naive_recorder import naive_recording

EAGER = ["plain", "traced", "traced_no_maps", "traced_per_head", "traced_self", "naive", "edited", "edited_no_maps", "removed",
         "swapped", "compact", "plain_b8", "traced_b8", "compact_b8"]
BATCH = 8  # the prompts of a *_b8 variant's call
COMPILED = ["plain_compiled", "traced_compiled", "traced_per_head_compiled"]
RECORDS = {
    "traced": isd.RecordOptions(),
    "traced_no_maps": isd.RecordOptions(cross_attention=False),
    "traced_per_head": isd.RecordOptions(per_head=True),
    "traced_self": isd.RecordOptions(self_attention_resolutions=(8,)),
    "edited_no_maps": isd.RecordOptions(cross_attention=False),
    "compact": isd.RecordOptions(compact=True),
}
EDITS = {"edited": lambda: [isd.edits.Reweight("red", 0.0)], "edited_no_maps": lambda: [isd.edits.Reweight("red", 0.0)],
         "removed": lambda: [isd.edits.Remove("red")]}


def make_runner(pipe, variant, steps, size, guidance, prompt="a red circle on the left"):
    """A function generating one image for ``variant``; returns ``(image, trace or None)``."""
    base = variant.removesuffix("_compiled")
    batch = BATCH if base.endswith("_b8") else 1
    base = base.removesuffix("_b8")
    settings = dict(num_inference_steps=steps, guidance_scale=guidance, height=size, width=size)

    def plain():
        if batch > 1:  # diffusers' own batched call: one generator per image
            generators = [torch.Generator().manual_seed(i) for i in range(batch)]
            return pipe.pipeline([prompt] * batch, generator=generators, **settings).images[0], None
        return pipe.pipeline(prompt, generator=torch.Generator().manual_seed(0), **settings).images[0], None

    def naive():
        with naive_recording(pipe.unet):
            return plain()

    def traced():
        edits = EDITS[base]() if base in EDITS else None
        record = RECORDS.get(base, RECORDS["traced"])
        if batch > 1:  # the first of the batch's traces stands for them (the same prompt, seed 0)
            trace = pipe([prompt] * batch, seed=list(range(batch)), progress=False, record=record, **settings)[0]
        else:
            trace = pipe(prompt, seed=0, progress=False, record=record, edits=edits, **settings)
        return trace.image, trace

    if base == "swapped":  # the source is generated once, outside the timing; its maps are injected in every run
        source = pipe(prompt, seed=0, progress=False, **settings)

        def swapped():
            trace = pipe(prompt.replace("circle", "square"), seed=0, progress=False, edits=[isd.edits.Swap(source)], **settings)
            return trace.image, trace
        return swapped

    return {"plain": plain, "naive": naive}.get(base, traced)


CUDA = torch.cuda.is_available()  # without a GPU (a smoke run of this script) memory and waits are not measured


def timed(fn):
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    image, trace = fn()
    if CUDA:
        torch.cuda.synchronize()
    return image, trace, time.perf_counter() - start, torch.cuda.max_memory_allocated() if CUDA else 0


def host_waits(fn) -> int:
    """How many times ``fn`` made the CPU wait for the GPU (each is a warning in sync-debug mode)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def bench(pipe, variants, args, result, out):
    """Warm each variant up, then time them in alternating rounds; record failures with their reason."""
    runners, failed = {}, {}
    for v in variants:
        runner = make_runner(pipe, v, args.steps, args.size, args.guidance)
        try:
            start = time.perf_counter()
            runner()  # warm-up (and compilation for *_compiled)
            result.setdefault("warmup_s", {})[v] = round(time.perf_counter() - start, 1)
            runners[v] = runner
        except Exception as error:  # noqa: BLE001 — a benchmark reports what fails and goes on
            failed[v] = f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
            traceback.print_exc()
    result.setdefault("failed", {}).update(failed)
    times = {v: [] for v in runners}
    for round_ in range(args.repeats):
        # reversed every other round: a variant that runs right after another pays for its left-overs only half the time
        order = list(runners.items()) if round_ % 2 == 0 else list(runners.items())[::-1]
        for v, runner in order:
            image, trace, seconds, peak = timed(runner)
            times[v].append(seconds)
            row = result["variants"].setdefault(v, {})
            row["images"] = BATCH if "_b8" in v else 1
            row["peak_gib"] = round(peak / 2**30, 2)
            if trace is not None:
                row["trace_mib"] = round(trace.nbytes / 2**20, 1)
            row["image"] = image
        for v, seconds in times.items():
            row = result["variants"][v]
            row.update(s_min=round(min(seconds), 3), s_median=round(statistics.median(seconds), 3), runs=len(seconds),
                       images_per_s=round(row["images"] / statistics.median(seconds), 3))
        write(result, out)


def write(result, out):
    rows = result["variants"]
    for group in ("", "_compiled", "_b8"):  # each compared with plain diffusers of its own kind
        plain = rows.get("plain" + group) or {}
        if "image" not in plain:
            continue
        for name, row in rows.items():
            kind = "_compiled" if name.endswith("_compiled") else "_b8" if name.endswith("_b8") else ""
            if kind == group and plain.get("s_median") and row.get("s_median"):
                row["over_plain"] = round(row["s_median"] / plain["s_median"], 3)
                if "image" in row and "image" in plain:
                    row["max_pixel_difference_vs_plain"] = int(np.abs(np.asarray(row["image"], int) - np.asarray(plain["image"], int)).max())
    if rows.get("plain", {}).get("s_median"):
        for name, row in rows.items():
            if name.endswith("_compiled") and row.get("s_median"):
                row["over_plain_eager"] = round(row["s_median"] / rows["plain"]["s_median"], 3)
    clean = {**result, "variants": {n: {k: v for k, v in r.items() if k != "image"} for n, r in rows.items()}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(clean, indent=1))
    print(json.dumps(clean, indent=1), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", default="sd15", help="an architecture from isd.models.unet.LAYOUTS")
    parser.add_argument("--steps", type=int, default=None, help="default 50 (SDXL: 30)")
    parser.add_argument("--size", type=int, default=None, help="default: the layout's native size (512, SDXL 1024)")
    parser.add_argument("--guidance", type=float, default=None, help="default 7.5 (SDXL: 5)")
    parser.add_argument("--variants", default=None, help=f"comma-separated eager variants (default: {','.join(EAGER)})")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--out", type=Path, default=Path("docs/gpu_speed_sd15.json"))
    args = parser.parse_args()

    dtype, device = (torch.float16, "cuda") if CUDA else (torch.float32, "cpu")
    xl = "sdxl" in args.layout
    args.steps = args.steps or (30 if xl else 50)
    args.guidance = args.guidance if args.guidance is not None else (5.0 if xl else 7.5)
    with torch.device(device):  # weights drawn where they will live: SDXL's 3.5 B would take minutes on the CPU
        pipe = isd.IllustratedPipeline(isd.build_random_pipeline(args.layout, dtype=dtype))
    args.size = args.size or pipe.default_size
    result = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__, "layout": args.layout, "dtype": str(dtype),
              "size": args.size, "steps": args.steps, "guidance_scale": args.guidance, "scheduler": type(pipe.scheduler).__name__,
              "repeats": args.repeats, "variants": {}}
    variants = args.variants.split(",") if args.variants else EAGER
    unknown = sorted(set(variants) - set(EAGER))
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {EAGER}")
    bench(pipe, variants, args, result, args.out)
    if "traced" in variants and "traced_b8" in variants:  # what batching changes in a trace: fp16 rounding only
        one, batched = (make_runner(pipe, v, args.steps, args.size, args.guidance)()[1] for v in ("traced", "traced_b8"))
        diff = lambda a, b: float((a.float() - b.float()).abs().max())  # noqa: E731
        result["b8_vs_b1_max_abs_difference"] = {
            **{name: diff(getattr(batched, name), getattr(one, name)) for name in ("latents", "noise_pred", "pred_x0")},
            "attention_maps": max(diff(batched.attention_maps[k], m) for k, m in one.attention_maps.items()),
            "image_pixels": int(np.abs(np.asarray(batched.image, int) - np.asarray(one.image, int)).max())}
        write(result, args.out)
    # Waits for the GPU inside one generation (the loop's own and diffusers' schedulers' alike).
    if CUDA:
        result["host_waits"] = {v: host_waits(make_runner(pipe, v, args.steps, args.size, args.guidance)) for v in ("plain", "traced")}
        write(result, args.out)
    if not args.no_compile:
        pipe.unet.compile()  # in place: the module and its layer names stay as they are, hooks included
        bench(pipe, COMPILED, args, result, args.out)
        # The naive peer compiled, timed on its own last: its per-step host copies break the graph at
        # every layer, so it compiles slowly, if at all.
        bench(pipe, ["naive_compiled"], args, result, args.out)


if __name__ == "__main__":
    main()
