"""How a candidate VAE decoder moves the colours of tiny-sd 2's objects, against the shipped decoder, on the same
latents: the UNet's own (the evaluation's single-object prompts asking for orange or yellow, held-out orange hearts
included; guided, 25 steps, the same seeds for every prompt) and the encoder's (rendered orange objects).

A decoder can keep every pixel close (a small per-pixel loss) and still move a whole object's colour by a few levels in
one channel, enough for the detector to read another colour word: the regrouped decoder of part 17 drew the UNet's
orange objects yellower (issue 35). Per group of prompts (colour asked, held out or not): what the detector reads in
each decoder's pictures (the object nearest the named place, as ``illustrated_sd.evaluate`` matches it) and that
object's mean colour (R, G, B, 0-255) over the pictures.

    python scripts/decoder_colour_shift.py CANDIDATE_VAE [--seeds 3] [--out FILE]

``CANDIDATE_VAE`` is a decoder's ``diffusion_pytorch_model.safetensors`` (its GroupNorm groups read from the
``config.json`` beside it when there is one, else ``--groups``, default 16: a regrouped VAE). About 4 minutes on 2
CPU cores with 3 seeds.
"""

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file

import illustrated_sd as isd
from illustrated_sd import checks
from illustrated_sd.evaluate import match_object, prompt_set
from illustrated_sd.trace.files import atomic_write
from illustrated_sd.train.regroup import saved_grouping
from illustrated_sd.world import as_uint8, render, sample_scenes
from illustrated_sd.world.detect import detect


def candidate_vae(weights: Path, shipped: AutoencoderKL, groups: int) -> AutoencoderKL:
    """The candidate decoder: ``shipped``'s config with the weights' folder's ``norm_num_groups`` (or ``groups``)."""
    vae = AutoencoderKL.from_config({**shipped.config, "norm_num_groups": saved_grouping(weights) or groups})
    vae.load_state_dict(load_file(weights))
    return vae.float().eval()


def read(images: torch.Tensor, position: str | None) -> list[tuple[str, list[float] | None]]:
    """``images [B, 3, H, W]`` in [-1, 1] → per picture the colour word read and the object's mean colour (the object
    nearest ``position``, or the largest when None; ``("nothing", None)`` where nothing was found)."""
    out = []
    for image in as_uint8(images):
        found = detect(image, version=2)
        obj = (match_object(found, position, 1, world=2) if position else found[0]) if found else None
        out.append((obj.color, image[obj.mask].mean(0).tolist()) if obj else ("nothing", None))
    return out


def summary(reads: list) -> dict:
    """Colour words counted and the mean colour over the pictures where something was found."""
    colours = [rgb for _, rgb in reads if rgb is not None]
    return {"read": dict(Counter(word for word, _ in reads)),
            "mean_rgb": np.round(np.mean(colours, 0), 1).tolist() if colours else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--groups", type=checks.positive_int, default=16)
    parser.add_argument("--seeds", type=checks.positive_int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.candidate.is_file():
        parser.error(f"{args.candidate} is not a file: give a VAE's diffusion_pytorch_model.safetensors")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pipe = isd.load_pipeline().pipeline
    pipe.set_progress_bar_config(disable=True)
    shipped = pipe.vae.float().eval()
    candidate = candidate_vae(args.candidate, shipped, args.groups)
    cases = [c for c in prompt_set(world=2) if len(c[1]) == 1 and c[1][0][0] in ("orange", "yellow")]
    groups = defaultdict(lambda: {"shipped": [], "candidate": []})

    def compare(group: str, latents: torch.Tensor, position: str | None):
        with torch.no_grad():
            for name, vae in (("shipped", shipped), ("candidate", candidate)):
                groups[group][name] += read(vae.decode(latents).sample.clamp(-1, 1), position)

    for text, [(colour, shape, position)], held_out in cases:
        generators = [torch.Generator().manual_seed(seed) for seed in range(args.seeds)]  # the same noises for every prompt
        with torch.no_grad():
            latents = pipe([text] * args.seeds, num_inference_steps=25, guidance_scale=7.5, generator=generators,
                           output_type="latent").images / shipped.config.scaling_factor
        compare(f"UNet, {colour} asked" + (f" ({colour} {shape}, held out)" if held_out else ""), latents, position)
    scenes = [s for s in sample_scenes([5], 2000, version=2) if len(s.objects) == 1 and s.objects[0].color == "orange"][:12]
    images, _ = render(scenes)
    with torch.no_grad():
        compare(f"encoder, {len(scenes)} rendered orange objects", shipped.encode(images).latent_dist.mean, None)
    rows = {group: {name: summary(reads) for name, reads in pair.items()} for group, pair in groups.items()}
    rows[f"the same {len(scenes)} rendered originals"] = summary(read(images, None))
    for group, row in rows.items():
        print(f"{group}: {json.dumps(row)}")
    if args.out:
        with atomic_write(args.out, "colour shift") as tmp:
            tmp.write_text(json.dumps({"candidate": str(args.candidate), "seeds": args.seeds, "groups": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
