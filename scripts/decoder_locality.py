"""How local the VAE decoder is: decode latents spliced at a cut, as inpainting hands them over, and measure how far
the kept side's pixels move.

For pairs of held-out world-2 scenes (A, B): encode both (the posterior mean), put B's latent beyond the middle into
A's (left | right and top | bottom), decode, and compare A's side with A's own decoding, away from the cut by more
than ``--seam`` latent pixels (8 px each). Reported in grey levels (0-255): the mean, the 99th percentile and the
largest change, over every kept pixel of every pair. Notebook 07 shows one such case (an inpainting).

    python scripts/decoder_locality.py [--model FOLDER] [--pairs 64] [--out docs/decoder_locality.json]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import illustrated_sd as isd
from illustrated_sd.world import render, sample_scenes


@torch.no_grad()
def measure(model: str | None, pairs: int, seam: int, device: str) -> dict:
    pipe = isd.load_pipeline(model) if model else isd.load_pipeline()
    vae = pipe.vae.to(device).float().eval()
    images, _ = render(sample_scenes([2026, 12, 5], 2 * pairs, held_out=True, version=2), device=device)
    latents = vae.encode(images).latent_dist.mean  # [2P, 4, h, w]
    a, b = latents[:pairs], latents[pairs:]
    grey = lambda x: ((x.clamp(-1, 1) + 1) * 127.5)  # noqa: E731  [-1, 1] → grey levels
    own = grey(vae.decode(a).sample)
    h, w = a.shape[-2:]
    scale = images.shape[-1] // w
    changes = []
    for cut in ("left | right", "top | bottom"):
        beyond = torch.zeros(1, 1, h, w, device=device)
        if cut == "left | right":
            beyond[..., w // 2:] = 1
        else:
            beyond[..., h // 2:, :] = 1
        spliced = grey(vae.decode(a * (1 - beyond) + b * beyond).sample)
        kept = torch.zeros(h, w, dtype=torch.bool, device=device)
        if cut == "left | right":
            kept[:, :w // 2 - seam] = True
        else:
            kept[:h // 2 - seam] = True
        kept = kept.repeat_interleave(scale, 0).repeat_interleave(scale, 1)  # latent pixels → image pixels
        changes.append((spliced - own).abs().amax(1)[:, kept].flatten())  # the largest change of R, G, B per pixel
    change = torch.cat(changes).cpu().numpy()
    return {"model": model or "tiny-sd 2 (embedded)", "pairs": pairs, "cuts": ["left | right", "top | bottom"], "seam_latent_pixels": seam,
            "kept_pixels": int(change.size), "grey_levels": {"mean": round(float(change.mean()), 2),
                                                             "p99": round(float(np.percentile(change, 99)), 1),
                                                             "max": round(float(change.max()), 1)},
            "share_within_4_levels": round(float((change <= 4).mean()), 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a pipeline folder (default: the embedded tiny-sd 2)")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--seam", type=int, default=1, help="latent pixels next to the cut left out (default: %(default)s)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = measure(args.model, args.pairs, args.seam, "cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
