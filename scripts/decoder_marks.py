"""What the VAE decoder invents away from the objects, by kind: coloured, darker or lighter marks in round trips.

    python scripts/decoder_marks.py --out docs/decoder_marks.json                 # the embedded decoder
    python scripts/decoder_marks.py --reference OLD/vae --out F      # and another VAE folder (config.json + weights)
    (docs/decoder_marks.json's reference, part 7's decoder, the package's until 2026-12-06: `mkdir /tmp/part7 && for f in
    config.json diffusion_pytorch_model.safetensors; do git show 6c041c6:illustrated_sd/assets/tiny-sd/vae/$f >
    /tmp/part7/$f; done`)

`evaluate --smudges` counts the *coloured* marks the world's detector sees (``stray_marks`` takes the grey part of
each pixel's difference out, because the world's shadows and patterns are grey). A decoder trained against those
marks can trade them for grey ones, which a student sees just as well. Here the original is known, so any patch the
round trip adds is an invention, whatever its colour (``world.detect.invented_marks``: grey counts too), measured on
world pictures with a plain background, where there is no texture for the decoder to lose.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL

import illustrated_sd as isd
from illustrated_sd.evaluate import round_trip, vae_sha256, world_of
from illustrated_sd.paths import TINY_SD
from illustrated_sd.world.detect import invented_marks


def shares(round_trips, originals, masks, clearance: int) -> dict:
    """The share of round trips with each kind of invented mark: ``{"coloured": share, "darker": …, "lighter": …}``."""
    return {kind: round(float(found.float().mean()), 4) for kind, found in invented_marks(round_trips, originals, masks, clearance).items()}


def reference_vae(path: Path) -> AutoencoderKL:
    """The VAE at ``path``: a diffusers VAE folder, or its weights file with the folder's ``config.json`` beside it.
    Each VAE is built from its own config: decoders with other GroupNorm groups (part 17's 16, earlier ones' 32) share
    every weight's shape, so one VAE's weights load silently into another's grouping and draw wrong pictures."""
    folder = path if path.is_dir() else path.parent
    if not (folder / "config.json").is_file():
        raise SystemExit(f"--reference {path}: no config.json in {folder}; give the VAE's folder (config.json and "
                         "diffusion_pytorch_model.safetensors), e.g. from `git show COMMIT:illustrated_sd/assets/tiny-sd/vae/FILE`")
    return AutoencoderKL.from_pretrained(folder)


@torch.no_grad()
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a pipeline folder (default: the embedded tiny-sd 2)")
    parser.add_argument("--reference", type=Path, help="another VAE's folder (config.json and weights), measured beside it")
    parser.add_argument("--pictures", type=int, default=384, help="plain-background world pictures (default: %(default)s)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    start = time.perf_counter()
    pipe = isd.load_pipeline(args.model) if args.model else isd.load_pipeline()
    vae = pipe.vae
    # held-out colour–shape pairs drawn with a seed training never used, on a plain background: whatever the round
    # trip adds there is the decoder's own
    scenes = isd.world.sample_scenes([30_000, 8], 20 * args.pictures, held_out=True, version=world_of(pipe))
    scenes = [s for s in scenes if s.pattern == "plain"]
    scenes = scenes[: args.pictures]
    images, masks = isd.world.render(scenes)  # [N, 3, 128, 128], [N, objects, 128, 128]
    vaes = {"this decoder": vae}
    if args.reference:
        vaes["reference"] = reference_vae(args.reference).to(vae.device, vae.dtype).eval()
    result = {"model": args.model or "tiny-sd 2 (embedded)", "vae_sha256": vae_sha256(args.model or TINY_SD),
              "reference": str(args.reference) if args.reference else None, "pictures": len(scenes), "decoders": {}}
    for name, each in vaes.items():
        trips = round_trip(each, images)
        result["decoders"][name] = {f"more than {c} px from objects": shares(trips, images, masks, c) for c in (4, 2)}
        print(name, json.dumps(result["decoders"][name]))
    result["seconds"] = round(time.perf_counter() - start, 1)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
