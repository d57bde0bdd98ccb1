"""How fast the UNet stage trains tiny-sd, before and after each speed-up (GPU).

    python benchmarks/train_speed.py --out docs/train_speed.json      # ~3 minutes on an H100

The UNet stage trains from pre-encoded latents, so a step is: sample a batch, noise it, run the UNet
forward and backward under bf16 autocast, and update the weights. Variants, each adding one change:

- ``before``: as the stage was (fp32 weights, bf16 autocast, NCHW, AdamW with one kernel per tensor), batch 256;
- ``channels_last``: the UNet's convolutions in NHWC, which tensor cores prefer;
- ``fused_adamw``: AdamW's update for all parameters in one kernel;
- ``compile``: ``torch.compile`` of the UNet (fuses the small GroupNorm/SiLU/attention kernels);
- ``batch_512``, ``batch_1024``: all of the above with larger batches (steps/s falls, images/s rises).

Variants take turns (``--rounds`` rounds of ``--seconds`` each), so drifts of the machine fall on all alike.
"""

import argparse
import json
import statistics
import time

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout: python benchmarks/train_speed.py
from illustrated_sd.models.unet import build_random_pipeline
from illustrated_sd.lessons.forward_diffusion import diffusion_loss

VARIANTS = {  # name: (channels_last, fused, compile, batch)
    "before": (False, False, False, 256),
    "channels_last": (True, False, False, 256),
    "fused_adamw": (True, True, False, 256),
    "compile": (True, True, True, 256),
    "batch_512": (True, True, True, 512),
    "batch_1024": (True, True, True, 1024),
}


def make_step(channels_last: bool, fused: bool, compile: bool, batch: int, device):
    pipe = build_random_pipeline("tiny-sd", seed=0)
    unet = pipe.unet.to(device).train()
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    forward = torch.compile(unet) if compile else unet
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4, fused=fused)
    alphas = pipe.scheduler.alphas_cumprod.to(device)
    latents = torch.randn(batch, 4, 16, 16, device=device)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device, dtype=torch.bfloat16)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = diffusion_loss(forward, latents, context, alphas)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("train_speed.py measures the GPU training loop; run it on a machine with CUDA")
    device = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    steps = {name: make_step(*spec, device) for name, spec in VARIANTS.items()}
    for name, step in steps.items():  # warm up: cuDNN autotuning, and compiling (a minute or so)
        for _ in range(15):
            step()
    torch.cuda.synchronize()
    rates = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, step in steps.items():
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                step()
                n += 1
                if n % 10 == 0:
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
            rates[name].append(n / (time.perf_counter() - start))
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rounds": args.rounds,
              "variants": {name: {"batch": VARIANTS[name][3], "steps_per_s": round(statistics.median(r), 2),
                                  "images_per_s": round(statistics.median(r) * VARIANTS[name][3]),
                                  "rounds": [round(x, 2) for x in r]} for name, r in rates.items()}}
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
