"""What each part of the joint-attention recording costs: one transformer call (one denoising step) timed on a GPU.

The released architectures with random bf16 weights (Flux-dev at 1024²: 4,096 image + 512 text tokens, one row;
SD3.5-large: 4,096 + 333, the CFG batch of 2). Variants, timed in rounds that alternate their order, each a median of
``--rounds`` calls measured with CUDA events:

    plain            diffusers' own attention processors
    processor        the package's recording processor, recording switched off (the fused kernel called directly, so
                     that it returns the log-sum-exp)
    processor_sdpa   the same, the kernel replaced by F.scaled_dot_product_attention (what the log-sum-exp costs)
    image_to_text, text_to_image, text_to_text   each quadrant recorded alone
    default          the default recording (the three quadrants above)

Then torch.profiler's table of the default variant's kernels, to see what remains.

    python benchmarks/dit_layer.py --models flux-dev,sd3.5-large --rounds 20 --out /tmp/dit_layer.json
"""

import argparse
import json
import statistics
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import illustrated_sd.recording.joint_attention as joint
from illustrated_sd.models.transformers import real_transformer
from common import gpu_busy_ms, round_order  # benchmarks/common.py (the script's own folder is on the path)

SHAPES = {"flux-dev": dict(batch=1, image=4096, text=512), "sd3.5-large": dict(batch=2, image=4096, text=333),
          "sd3.5-medium": dict(batch=2, image=4096, text=333)}
KEPT = 33  # the prompt's own tokens (the benchmark prompt has 33 under T5)


def inputs(model: str, transformer) -> dict:
    """One step's inputs, random, shaped as the pipelines pass them."""
    s, c = SHAPES[model], transformer.config
    if model.startswith("flux"):
        return dict(hidden_states=torch.randn(1, s["image"], c.in_channels), encoder_hidden_states=torch.randn(1, s["text"], c.joint_attention_dim),
                    pooled_projections=torch.randn(1, c.pooled_projection_dim), timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
                    img_ids=torch.randn(s["image"], 3), txt_ids=torch.zeros(s["text"], 3), return_dict=False)
    side = int(s["image"] ** 0.5) * 2
    return dict(hidden_states=torch.randn(2, c.in_channels, side, side), encoder_hidden_states=torch.randn(2, s["text"], c.joint_attention_dim),
                pooled_projections=torch.randn(2, c.pooled_projection_dim), timestep=torch.tensor([500.0, 500.0]), return_dict=False)


def sdpa_with_zero_lse(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask), torch.zeros(q.shape[:-1], device=q.device)


def measure(model: str, rounds: int) -> dict:
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        torch.manual_seed(0)
        transformer = real_transformer(model).eval()
        x = inputs(model, transformer)
    torch.set_default_dtype(torch.float32)
    x = {k: v.to(torch.float32) if k in ("timestep", "guidance") else v for k, v in x.items()}
    s = SHAPES[model]
    layers = list(joint.joint_layers(transformer))
    heads = transformer.config.num_attention_heads

    def recording(quadrants, active=True):
        r = joint.JointAttentionRecording(layers, s["text"], s["image"], model.startswith("flux"), torch.arange(KEPT), 1,
                                          quadrants, False, heads, torch.bfloat16, "cuda")
        r.active = active
        return r

    kernel = joint.fused_attention
    variants = {
        "plain": lambda: nullcontext(),
        "processor": lambda: joint.recording_joint_attention(transformer, recording(("image_to_text",), active=False)),
        "processor_sdpa": lambda: joint.recording_joint_attention(transformer, recording(("image_to_text",), active=False)),
        **{q: (lambda q=q: joint.recording_joint_attention(transformer, recording((q,)))) for q in joint.QUADRANTS[:3]},
        "default": lambda: joint.recording_joint_attention(transformer, recording(joint.QUADRANTS[:3])),
    }

    def run(name):
        joint.fused_attention = sdpa_with_zero_lse if name == "processor_sdpa" else kernel
        try:
            with torch.no_grad(), variants[name]():
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                transformer(**x)
                end.record()
                torch.cuda.synchronize()
                return start.elapsed_time(end)
        finally:
            joint.fused_attention = kernel

    for name in variants:
        run(name), run(name)  # warm-up (and each shape's kernel chosen)
    times = {name: [] for name in variants}
    for r in range(rounds):
        for name in round_order(list(variants), r):
            times[name].append(run(name))
    ms = {name: round(statistics.median(t), 2) for name, t in times.items()}
    result = {"model": model, **s, "heads": heads, "layers": len(layers), "rounds": rounds, "ms_per_step": ms,
              "over_plain": {name: round(v / ms["plain"], 4) for name, v in ms.items()}, "kernels": joint.kernels_in_use()}
    print(json.dumps(result), flush=True)
    for name in ("plain", "default"):
        joint.fused_attention = kernel
        with torch.no_grad(), variants[name](), profile(activities=[ProfilerActivity.CUDA]) as prof:
            transformer(**x)
            torch.cuda.synchronize()
        events = prof.key_averages()
        print(f"== {model} {name}: GPU busy {gpu_busy_ms(events):.1f} ms")
        print(events.table(sort_by="self_device_time_total", row_limit=16, max_name_column_width=70), flush=True)
    del transformer
    torch.cuda.empty_cache()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="flux-dev,sd3.5-large")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default="/tmp/dit_layer.json")
    args = parser.parse_args()
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    for model in args.models.split(","):
        results["runs"].append(measure(model, args.rounds))
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
