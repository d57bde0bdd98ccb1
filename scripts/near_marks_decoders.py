"""Whose are the smudges at the objects' edges: the UNet's latents or the decoder's drawing of them?

The guided pictures of ``evaluate --smudges`` (24 single-object prompts spread over the evaluation's, seed 30,000 + i,
25 DDIM steps, guidance 7.5) are drawn once by tiny-sd 2's UNet; each final latent is then decoded by several VAE
decoders, and the detector counts, per decoder, the pictures with a coloured mark within 2 px of an object
(``stray_marks(clearance=2)``, the count ``ghost_smudges`` reports as ``near_objects``) and more than 4 px away (its
default). The same latents through another decoder: a mark every decoder draws is in the latents. Where the shipped
decoder's marks lie: each one's offset from its picture's first detected object's centre (of its bounding box), in
pixels, x to the right and y down; the world's photo style draws an object's soft shadow 6 px below right.

    python scripts/near_marks_decoders.py --decoder part7=FOLDER --decoder part14=FOLDER [--sheet out.png] [--out out.json]
    python scripts/near_marks_decoders.py --style photo     # each prompt asking for a style ("a photo of a red heart …")
    python scripts/near_marks_decoders.py --model tiny-flux # another denoiser's latents, the same decoder (its own steps
                                                            # and guidance; no --decoder: its latents are packed)

Each ``FOLDER`` holds a VAE's ``config.json`` and ``diffusion_pytorch_model.safetensors`` (part 7's: ``git show
6c041c6:illustrated_sd/assets/tiny-sd/vae/…``); the shipped decoder is always the first column. ``--sheet`` writes
six of the pictures, each decoder's drawing side by side, at 2×. ``--style`` puts the world's caption prefix for a
style before each prompt (``world.vocabulary.STYLES``: flat → "a picture of", photo → "a photo of", …); the evaluation's
prompts name none, which leaves open whether the scene is a photo, the one style with a shadow.
Per decoder also the off-plane colour around the objects (``speckle_colour``): the detector counts a soft grey shade
and the green-and-purple speckle alike, this only the speckle.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

import illustrated_sd as isd
from illustrated_sd.evaluate import NEAR, draw, prompt_group, prompt_set
from illustrated_sd.models.loading import model_defaults
from illustrated_sd.train.decoder import impossible_colour
from illustrated_sd.world import as_uint8
from illustrated_sd.world.detect import detect, stray_marks
from illustrated_sd.world.vocabulary import STYLES

SHOWN = (2, 3, 12, 13, 17, 21)  # cases on grey and white backgrounds, where the marks are easiest to see


SPECKLE = 0.04  # off-plane colour (speckle_colour) that counts as speckle: midway between impossible_colour's 0.020
# on pictures without a mark near an object and 0.067 on those with one (its docstring)


def guided_cases() -> list:
    """The 24 single-object evaluation cases (``(prompt, scene)``) whose guided pictures this script decodes, spread over
    the evaluation's single-object prompts as ``evaluate --smudges`` spreads its own."""
    single = prompt_group(prompt_set(world=2), "single")
    return single[:: max(1, len(single) // 24)][:24]


def speckle_colour(picture) -> float:
    """One decoded ``picture`` (PIL, RGB) → how far the colours around its objects lie off the plane the world draws
    there (``decoder.impossible_colour``, with the detector's masks and the picture's own border and object colours as
    reference): a soft grey shadow or a blended edge reads near 0, the green-and-purple speckle high. The detector's
    marks count both; this tells them apart."""
    objects = detect(np.asarray(picture), version=2)
    if not objects:
        return 0.0
    x = torch.from_numpy(np.asarray(picture)).permute(2, 0, 1)[None].float() / 127.5 - 1  # [1, 3, H, W] in [-1, 1]
    masks = torch.from_numpy(np.stack([o.mask for o in objects]))[None].float()  # [1, K, H, W]
    return float(impossible_colour(x, x, masks))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", action="append", default=[], metavar="NAME=FOLDER", help="another VAE to decode with")
    parser.add_argument("--sheet", type=Path, help="a PNG of six pictures, each decoder's side by side")
    parser.add_argument("--out", type=Path, help="the counts as JSON")
    parser.add_argument("--model", default="tiny-sd", help="the denoiser whose latents are decoded (default: %(default)s)")
    parser.add_argument("--style", choices=sorted(STYLES), help="ask every prompt for this style (default: none named)")
    args = parser.parse_args(argv)
    if args.decoder and args.model != "tiny-sd":
        parser.error("--decoder decodes tiny-sd 2's latents; with --model only the pipeline's own picture is counted")
    torch.set_num_threads(2)
    pipe = isd.load_pipeline(args.model)
    defaults = model_defaults(args.model)
    decoders = {"shipped": pipe.vae.float().eval()}
    for spec in args.decoder:
        name, _, folder = spec.partition("=")
        if not (Path(folder) / "config.json").is_file():
            parser.error(f"--decoder {spec}: no config.json in {folder} (give NAME=FOLDER, the VAE's own folder)")
        decoders[name] = AutoencoderKL.from_pretrained(folder).float().eval()  # each with its own grouping (config.json)
    cases = guided_cases()
    near, far, shown, offsets = dict.fromkeys(decoders, 0), dict.fromkeys(decoders, 0), [], []
    off_plane = {name: [] for name in decoders}
    for i, case in enumerate(cases):
        prompt = f"{STYLES[args.style]} {case[0]}" if args.style else case[0]
        trace = draw(pipe, prompt, defaults["steps"], defaults["guidance"], 30_000 + i)
        row = []
        for name, vae in decoders.items():
            if name == "shipped":  # the pipeline's own picture
                picture = trace.image.convert("RGB")
            else:
                latent = trace.latents[-1].float()[None] / pipe.vae.config.scaling_factor  # [1, 4, h, w], as decoders take it
                with torch.no_grad():
                    picture = as_uint8(vae.decode(latent).sample.clamp(-1, 1))[0]
            marks = stray_marks(picture, version=2, clearance=NEAR)
            near[name] += len(marks) > 0
            off_plane[name].append(speckle_colour(picture))
            if name == "shipped" and (objects := detect(np.asarray(picture), version=2)):
                ys, xs = np.nonzero(objects[0].mask)
                size = np.asarray(picture).shape[0]
                offsets += [(x * size - (xs.min() + xs.max() + 1) / 2, y * size - (ys.min() + ys.max() + 1) / 2) for _, (x, y) in marks]
            far[name] += len(stray_marks(picture, version=2)) > 0
            row.append(Image.fromarray(np.asarray(picture)))
        if i in SHOWN:
            shown.append(row)
    result = {"written_by": "scripts/near_marks_decoders.py", "model": args.model, "pictures": len(cases), "style": args.style, "decoders": list(decoders),
              "with_marks_within_2px": near, "with_marks_beyond_4px": far,
              "off_plane_colour": {name: {"mean": round(float(np.mean(v)), 4), f"pictures_over_{SPECKLE}": int(np.sum(np.array(v) > SPECKLE))}
                                   for name, v in off_plane.items()}}
    if offsets:
        xy = np.array(offsets)
        result["shipped_marks_within_2px"] = {"marks": len(xy), "mean_offset_px": [round(float(v), 1) for v in xy.mean(0)],
                                              "share_below_centre": round(float((xy[:, 1] > 0).mean()), 3),
                                              "share_right_of_centre": round(float((xy[:, 0] > 0).mean()), 3)}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if args.sheet:
        size = 256
        sheet = Image.new("RGB", (size * len(decoders), size * len(shown)), "white")
        for r, row in enumerate(shown):
            for c, picture in enumerate(row):
                sheet.paste(picture.resize((size, size), Image.NEAREST), (c * size, r * size))
        sheet.save(args.sheet)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
