"""Where a decoder darkens the background, by distance from the objects: what pricing one band does to its neighbours.

Part 27's decoder (tiny-sd 2's model card) was trained with the ring 2 to 6 px beyond each object priced against a
picture with only background there (``decoder.ring_error``), and the 2 px next to the object left out (its soft edge).
Does the error it took out of the ring go somewhere else? The round trips of 32 world pictures (``sample_scenes(424242,
32)``, the ones notebook 02 measures) through each decoder; per picture, the most a 5×5 patch is darkened (the mean of
R, G and B, in grey levels, as ``world.detect.darkest_addition``) in each band of background pixels: 0-2 px from an
object, 2-4, 4-8 and beyond 8 (3 px from the picture's edge left out); the median and the mean over the pictures.

    python scripts/edge_darkening.py --decoder part26=FOLDER [--decoder …] [--out docs/decoder_candidates/part27-edge-darkening.json]

Each ``FOLDER`` holds a VAE's ``config.json`` and ``diffusion_pytorch_model.safetensors`` (part 26's: ``git show
48b8bb9:illustrated_sd/assets/tiny-sd/vae/…``); the shipped decoder is always the first column. 2-core CPU: seconds.
"""

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

import illustrated_sd as isd

BANDS = ((0, 2), (2, 4), (4, 8), (8, None))  # pixels from the nearest object


def band_masks(masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """``masks`` ``[N, K, H, W]`` object coverage → ``{"0-2 px": [N, H, W] bool, …}``: the background pixels (coverage
    under 5%) whose distance from the nearest object lies in each of ``BANDS``, 3 px from the picture's edge left out."""
    coverage = masks.sum(1).clamp(max=1)  # [N, H, W]
    grow = lambda r: F.max_pool2d(coverage, 2 * r + 1, stride=1, padding=r) > 0  # noqa: E731
    inside = torch.zeros_like(coverage, dtype=torch.bool)
    inside[:, 3:-3, 3:-3] = True
    out = {}
    for near, far in BANDS:
        band = (coverage < 0.05) & inside & ~(grow(near) if near else torch.zeros_like(inside))
        out[f"{near}-{far} px" if far else f"beyond {near} px"] = band & grow(far) if far else band
    return out


def darkest_by_band(round_trips: torch.Tensor, originals: torch.Tensor, masks: torch.Tensor) -> dict[str, list[float]]:
    """Per band (``band_masks``), each picture's largest 5×5 darkening in grey levels: ``{band: [N] floats}`` (0 where a
    picture has no pixel in the band). ``round_trips``, ``originals`` ``[N, 3, H, W]`` in [-1, 1]."""
    darker = F.avg_pool2d((originals - round_trips).mean(1, keepdim=True) * 127.5, 5, stride=1, padding=2,
                          count_include_pad=False)[:, 0]  # [N, H, W]: positive where the round trip is darker
    return {name: [float(d[m].max()) if m.any() else 0.0 for d, m in zip(darker, band)]
            for name, band in band_masks(masks).items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decoder", action="append", default=[], metavar="NAME=FOLDER", help="another VAE to compare")
    parser.add_argument("--out", type=Path, help="the medians and means as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    decoders = {"shipped": AutoencoderKL.from_pretrained(isd.paths.TINY_SD / "vae").float().eval()}
    for spec in args.decoder:
        name, sep, folder = spec.partition("=")
        if not sep or not (Path(folder) / "config.json").is_file():
            parser.error(f"--decoder {spec!r}: give NAME=FOLDER, a folder with a VAE's config.json and weights")
        decoders[name] = AutoencoderKL.from_pretrained(folder).float().eval()
    originals, masks = isd.world.render(isd.world.sample_scenes(424242, 32, version=2))
    result = {"written_by": "scripts/edge_darkening.py", "pictures": len(originals), "decoders": {}}
    for name, vae in decoders.items():
        with torch.no_grad():
            trips = vae.decode(vae.encode(originals).latent_dist.mode()).sample.clamp(-1, 1)
        per = darkest_by_band(trips, originals, masks)
        result["decoders"][name] = {band: {"median": round(float(torch.tensor(v).median()), 2),
                                           "mean": round(sum(v) / len(v), 2)} for band, v in per.items()}
        print(name, {band: d["median"] for band, d in result["decoders"][name].items()})
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
