"""Render the benchmark JSON files in docs/ as the markdown tables of docs/performance.md.

    python benchmarks/tables.py          # prints the tables; paste them (the figures stay the measured ones)
"""

import json
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
LABELS = {
    "plain": "plain diffusers `StableDiffusionPipeline` (SDPA)",
    "traced": "traced, default (head-averaged cross-attention maps of every layer, latents, noise, x0, text)",
    "traced_no_maps": "traced without attention maps",
    "traced_per_head": "traced, one map per head",
    "traced_self": "traced, default + self-attention at 8×8",
    "naive": "naive recorder (classic softmax attention in every layer, host copy every step)",
}


def table(path: Path) -> str:
    result = json.loads(path.read_text())
    sampler = result.get("scheduler", "DDIMScheduler").removesuffix("DiscreteScheduler").removesuffix("Scheduler")
    order = ", order reversed every other round" if "scheduler" in result else ""  # (runs that record the scheduler did so)
    lines = [f"**{result['layout']}** (`{path.name}`) — {result['device']}, torch {result['torch']}, {result['dtype']}, {result['size']}², "
             f"{result['steps']} {sampler} steps, guidance {result['guidance_scale']}, {result['repeats']} alternating rounds{order} after a warm-up",
             "", "| variant | min s | median s | × plain (median) | peak GPU GiB | trace MiB | max pixel diff vs plain |",
             "|---|---|---|---|---|---|---|"]
    for name, row in result["variants"].items():
        base = name.removesuffix("_compiled")
        label = LABELS.get(base, base) + (", `unet.compile()`" if name.endswith("_compiled") else "")
        if "sdxl" in result["layout"]:
            label = label.replace("StableDiffusionPipeline", "StableDiffusionXLPipeline").replace(
                "every layer", "all 70 layers")
        ratio = f"{row['over_plain']:.3f}" + (f" ({row['over_plain_eager']:.3f} of eager plain)" if "over_plain_eager" in row else "")
        lines.append(f"| {label} | {row['s_min']:.3f} | {row['s_median']:.3f} | {ratio} | {row['peak_gib']:.2f} | "
                     f"{row.get('trace_mib', '–')} | {row.get('max_pixel_difference_vs_plain', '–')} |")
    if "host_waits" in result:
        waits = result["host_waits"]
        lines += ["", f"Host waits per image (`torch.cuda.set_sync_debug_mode`): plain {waits['plain']}, traced {waits['traced']}."]
    return "\n".join(lines)


TRAIN_LABELS = {
    "before": "as the UNet stage was: fp32 weights under bf16 autocast, NCHW, AdamW one kernel per tensor",
    "channels_last": "+ channels-last (NHWC) UNet",
    "fused_adamw": "+ fused AdamW",
    "compile": "+ `torch.compile`",
    "batch_512": "all of the above, batch 512",
    "batch_1024": "all of the above, batch 1024",
}


def train_table(path: Path) -> str:
    result = json.loads(path.read_text())
    before = result["variants"]["before"]["images_per_s"]
    lines = [f"`{path.name}` — {result['device']}, torch {result['torch']}, tiny-sd's UNet, "
             f"{result['rounds']} alternating rounds after a warm-up", "",
             "| variant | batch | steps/s (median) | images/s | × before |", "|---|---|---|---|---|"]
    for name, row in result["variants"].items():
        lines.append(f"| {TRAIN_LABELS.get(name, name)} | {row['batch']} | {row['steps_per_s']:.2f} | {row['images_per_s']:,} | "
                     f"{row['images_per_s'] / before:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    for path in sorted(DOCS.glob("gpu_speed_*.json")):
        print(table(path), end="\n\n")
    if (DOCS / "train_speed.json").is_file():
        print(train_table(DOCS / "train_speed.json"))
