"""How fast a regrouped encoder comes back to the shipped posterior (``illustrated_sd.train.regroup``, part 17 of
``scripts/train_tiny_sd2.sh``): the encoder alone, trained on 2 CPU cores for a few minutes at batches of 16, its
posterior mean compared with the shipped encoder's on 32 held-out pictures (the latents' spread is about 1).

    python scripts/regroup_encoder_trial.py [--groups 16] [--seconds 300]

Session 29 (2026-12-06, this project's 2-core CPU): 0.289 at the start, 0.053 after 50 steps, 0.035 after 266 (5
minutes). The encoder is the easy half; a whole regroup step of 16 took 13 s on the same CPU, so the decoder needs a GPU.
"""

import argparse
import time

import torch

import illustrated_sd as isd
from illustrated_sd.train.regroup import posterior_loss, regrouped
from illustrated_sd.world import render, sample_scenes


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=300)
    args = parser.parse_args()
    torch.set_num_threads(2)  # two cores: run it alone
    torch.manual_seed(0)
    old = isd.load_pipeline().vae.float().eval().requires_grad_(False)
    new = regrouped(old, args.groups).train()
    params = [*new.encoder.parameters(), *new.quant_conv.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    test, _ = render(sample_scenes([9, 9], 32, held_out=True, version=2))
    with torch.no_grad():
        want = old.encode(test).latent_dist.mean

    def gap() -> float:  # mean |Δ| of the posterior mean on the held-out pictures
        with torch.no_grad():
            return (new.encode(test).latent_dist.mean - want).abs().mean().item()

    print(f"start: {gap():.3f}")
    start, step = time.time(), 0
    while time.time() - start < args.seconds:
        images, _ = render(sample_scenes([1, step], 16, version=2))
        with torch.no_grad():
            wanted = old.encode(images).latent_dist
        loss = posterior_loss(new, wanted, images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % 50 == 0:
            print(f"{step} steps, {time.time() - start:.0f} s: {gap():.3f}", flush=True)
    print(f"end: {step} steps, {gap():.3f}")


if __name__ == "__main__":
    main()
