"""Notebook 03's training loop with 2 and 1 torch threads, alone and beside one busy process.

    python benchmarks/threads.py       # prints seconds per step for each case (see isd.cpu_threads)

On a 2-core machine two threads win only while nothing else runs; this measures by how much either way.
"""

import subprocess
import sys
import time

import torch

BUSY = "import torch, time\ntorch.set_num_threads(2)\na = torch.randn(1500, 1500)\nt = time.time()\nwhile time.time() - t < 600: a @ a"


def seconds_per_step(threads: int, steps: int = 20) -> float:
    import illustrated_sd as isd

    pipe = isd.load_pipeline()
    scenes = isd.world.sample_scenes(21, 16)
    images, _ = isd.world.render(scenes)
    latents, context = isd.encode_examples(pipe, images, [s.caption for s in scenes])
    unet = isd.build_random_pipeline("tiny-sd", seed=0).unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    with isd.cpu_threads(threads):
        start = time.perf_counter()
        for _ in range(steps):
            loss = isd.diffusion_loss(unet, latents, context, pipe.scheduler.alphas_cumprod, generator)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / steps


def main():
    for busy in (False, True):
        neighbour = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
        try:
            for threads in (2, 1):
                print(f"{'beside a busy process' if busy else 'alone':22s} {threads} thread(s): "
                      f"{seconds_per_step(threads):.2f} s/step", flush=True)
        finally:
            if neighbour:
                neighbour.kill()


if __name__ == "__main__":
    main()
