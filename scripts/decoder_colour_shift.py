"""How a candidate VAE decoder moves the colours of tiny-sd 2's objects, against the shipped decoder, on the same
latents: the UNet's own (guided, 25 steps, six seeds per prompt) and the encoder's (rendered single-object scenes).

A decoder can keep every pixel close (a small per-pixel loss) and still move a whole object's colour by a few levels in
one channel, enough for the detector to read another colour word: the regrouped decoder of part 17 drew the UNet's
orange objects yellower (issue 35). For each prompt, the mean colour (R, G, B, 0-255) over the object the detector finds
in each decoder's picture, averaged over the seeds, and what the detector reads.

    python scripts/decoder_colour_shift.py CANDIDATE_VAE [--out FILE]

``CANDIDATE_VAE`` is a decoder's ``diffusion_pytorch_model.safetensors`` (its GroupNorm groups read from the weights'
folder ``config.json`` when there is one, else ``--groups``, default 16: a regrouped VAE). About 3 minutes on 2 CPU
cores.
"""

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

import illustrated_sd as isd
from illustrated_sd.evaluate import prompt_set
from illustrated_sd.world import as_uint8, render, sample_scenes
from illustrated_sd.world.detect import detect

SEEN = ["an orange circle in the center", "an orange star on the left", "an orange square", "a yellow heart in the center",
        "a yellow star on the right"]


def candidate_vae(weights: Path, shipped: AutoencoderKL, groups: int) -> AutoencoderKL:
    """The candidate decoder: ``shipped``'s config with the weights' folder's ``norm_num_groups`` (or ``groups``)."""
    config = weights.parent / "config.json"
    groups = json.loads(config.read_text())["norm_num_groups"] if config.exists() else groups
    vae = AutoencoderKL.from_config({**shipped.config, "norm_num_groups": groups})
    vae.load_state_dict(load_file(weights))
    return vae.float().eval()


def read_colours(images: torch.Tensor) -> dict:
    """``images [B, 3, H, W]`` in [-1, 1] → the first detected object's mean colour over the pictures and the colour
    words read (a picture with nothing found counts as "nothing")."""
    colours, words = [], Counter()
    for image in as_uint8(images):
        found = detect(image, version=2)
        words[found[0].color if found else "nothing"] += 1
        if found:
            colours.append(image[found[0].mask].mean(0))
    return {"mean_rgb": np.round(np.mean(colours, 0), 1).tolist() if colours else None, "read": dict(words)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--groups", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pipe = isd.load_pipeline().pipeline
    shipped = pipe.vae.float().eval()
    candidate = candidate_vae(args.candidate, shipped, args.groups)
    held_out = sorted({text for text, objects, held in prompt_set(world=2) if held and objects[0][:2] == ("orange", "heart")})
    rows = {}

    def compare(name: str, latents: torch.Tensor):
        with torch.no_grad():
            rows[name] = {"shipped": read_colours(shipped.decode(latents).sample.clamp(-1, 1)),
                          "candidate": read_colours(candidate.decode(latents).sample.clamp(-1, 1))}
        print(f"{name}: shipped {rows[name]['shipped']}, candidate {rows[name]['candidate']}")

    for i, prompt in enumerate(SEEN + held_out):
        generator = torch.Generator().manual_seed(i)
        with torch.no_grad():
            latents = pipe([prompt] * args.seeds, num_inference_steps=25, guidance_scale=7.5, generator=generator,
                           output_type="latent").images
        compare(f"UNet: {prompt}" + (" (held out)" if prompt in held_out else ""), latents / shipped.config.scaling_factor)
    scenes = [s for s in sample_scenes([5], 600, version=2) if len(s.objects) == 1 and s.objects[0].color == "orange"][:12]
    images, _ = render(scenes)
    with torch.no_grad():
        compare("encoder: 12 rendered orange objects", shipped.encode(images).latent_dist.mean)
    rows["originals: the same 12"] = read_colours(images)
    if args.out:
        args.out.write_text(json.dumps({"candidate": str(args.candidate), "seeds": args.seeds, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
