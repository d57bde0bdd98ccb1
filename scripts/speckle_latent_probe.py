"""Is the speckle at the objects' edges carried by the latent's outliers, or by one latent pixel?

The 24 guided latents of ``scripts/near_marks_decoders.py`` (tiny-sd 2, seed 30,000 + i, its default steps and
guidance) are decoded by the shipped decoder three ways: as they are, and with every latent channel clamped to 4 or 3
of its standard deviations around its mean (the outliers cut). Each picture's speckle is read as
``near_marks_decoders.speckle_colour`` reads it (colour off the plane the world draws beside an object). Then, for the
``--occlude`` most speckled pictures, each of the 16×16 latent pixels in turn is replaced by the mean of its 3×3
neighbourhood, and the largest drop in that picture's speckle is reported: a speckle carried by one latent pixel would
fall there.

    python scripts/speckle_latent_probe.py [--occlude 3] [--out probe.json]

Part 21 (the model card) clamped the encoder's latents and counted the detector's marks, which count a grey shade too;
this reads the speckle's colour itself.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # near_marks_decoders, beside this script
from near_marks_decoders import guided_cases, speckle_colour  # noqa: E402

import illustrated_sd as isd  # noqa: E402
from illustrated_sd.evaluate import draw  # noqa: E402
from illustrated_sd.models.loading import model_defaults  # noqa: E402
from illustrated_sd.world import as_uint8  # noqa: E402


def clamped(z: torch.Tensor, k: float) -> torch.Tensor:
    """``z`` ``[B, 4, h, w]`` with each picture's every channel clamped to its mean ± ``k`` standard deviations."""
    mean, std = z.mean((2, 3), keepdim=True), z.std((2, 3), keepdim=True)
    return torch.maximum(torch.minimum(z, mean + k * std), mean - k * std)


def speckle(vae, z: torch.Tensor) -> list[float]:
    """Each latent of ``z`` ``[B, 4, h, w]`` decoded → its speckle colour (``speckle_colour``)."""
    with torch.no_grad():
        return [speckle_colour(p) for batch in z.split(32) for p in as_uint8(vae.decode(batch).sample.clamp(-1, 1))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--occlude", type=int, default=3, help="the most speckled pictures probed pixel by pixel")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    pipe = isd.load_pipeline("tiny-sd")
    defaults, vae = model_defaults("tiny-sd"), pipe.vae.float().eval()
    cases = guided_cases()  # the 24 of near_marks_decoders.py
    z = torch.stack([draw(pipe, case[0], defaults["steps"], defaults["guidance"], 30_000 + i).latents[-1].float()
                     for i, case in enumerate(cases)]) / vae.config.scaling_factor  # [24, 4, h, w], as the decoder takes it
    read = {"as drawn": speckle(vae, z), "clamped to 4 std": speckle(vae, clamped(z, 4)), "clamped to 3 std": speckle(vae, clamped(z, 3))}
    result = {"written_by": "scripts/speckle_latent_probe.py", "pictures": len(z),
              "speckle_colour": {name: {"mean": round(float(np.mean(v)), 4), "pictures_over_0.04": int(np.sum(np.array(v) > 0.04))}
                                 for name, v in read.items()}, "one_latent_pixel": []}
    neighbours = F.avg_pool2d(F.pad(z, (1, 1, 1, 1), mode="replicate"), 3, 1)  # [24, 4, h, w]: each pixel's 3×3 mean
    h, w = z.shape[-2:]
    for i in np.argsort(read["as drawn"])[::-1][: args.occlude]:
        probes = z[i].repeat(h * w, 1, 1, 1)  # [h·w, 4, h, w]: one copy per latent pixel, that pixel replaced
        for n in range(h * w):
            probes[n, :, n // w, n % w] = neighbours[i, :, n // w, n % w]
        after = np.array(speckle(vae, probes))
        result["one_latent_pixel"].append({"picture": int(i), "prompt": cases[i][0], "speckle": round(read["as drawn"][i], 4),
                                           "largest_drop": round(float(read["as drawn"][i] - after.min()), 4),
                                           "at_latent_pixel": [int(after.argmin()) // w, int(after.argmin()) % w]})
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
