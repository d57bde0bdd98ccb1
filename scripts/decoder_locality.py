"""How local the VAE decoder is: decode latents spliced at a cut, as inpainting hands them over, and measure how far
the kept side's pixels move.

For pairs of held-out world-2 scenes (A, B): encode both (the posterior mean), put B's latent beyond the middle into
A's (left | right and top | bottom), decode, and compare A's side with A's own decoding, away from the cut by more
than ``--seam`` latent pixels (8 px each). Reported in grey levels (0-255): the mean, the 99th percentile and the
largest change, over every kept pixel of every pair. Notebook 07 shows one such case (an inpainting).

    python scripts/decoder_locality.py [--model FOLDER] [--pairs 64] [--paths] [--by-distance] [--inpaint N] [--issue-example SEEDS] [--out docs/decoder_locality.json]

``--paths`` also measures which part of the decoder carries the change (``illustrated_sd.lessons.decoder_reach``): the
middle block's attention switched off, or every GroupNorm dividing by the kept picture's own statistics, or only the
GroupNorms whose groups hold one channel each (instance norms: tiny-sd 2's 32-channel full-resolution layers had them
with SD's 32 groups), or only the others; or every GroupNorm taking only the kept picture's means, or only its spreads.
``--by-distance`` also grades the kept side strip by strip away from the cut: a change that stays large far from the
cut is carried by something global (the norms' statistics, the middle attention), not by the convolutions' reach alone.
With ``--paths`` it also reports ``statistics_between_pictures``: how much the decoder's GroupNorm statistics differ
between the pairs' first pictures (``illustrated_sd.train.decoder.steady_loss``, what ``regroup --steady`` prices).

``--inpaint N`` also measures the case notebook 07 shows: N inpaintings by the pipeline's own ``inpaint`` (20 steps),
each a rendered held-out picture whose right half is repainted to another scene's caption (a world-2 caption: it may
name objects on either side), and how far the kept half's pixels (the seam left out, as above) move from the encoded
picture's own decoding: the leak through the decoder, where the model painted the new half to fit the kept one
rather than splicing a stranger in. Unlike the splices, ``inpaint`` encodes with a sample of the posterior (as
diffusers does), and the baseline is that latent's decoding. Beside it, how far the repainted half moved: the change
the leak is set against.

``--issue-example SEEDS`` measures the case issue 35 reported (the kept half then moved by about 50 grey levels): a red
circle on the left, its left half repainted to a blue square, 8 steps each, the kept half against the drawn picture
as the user sees it; and how much of that change is one uniform shift of the whole kept half (a tint).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import illustrated_sd as isd
from illustrated_sd.evaluate import vae_sha256, world_of
from illustrated_sd.lessons.decoder_reach import kept_change
from illustrated_sd.lessons.latent_space import to_latent
from illustrated_sd.paths import TINY_SD
from illustrated_sd.train.decoder import GroupNormProbe, steady_loss
from illustrated_sd.world import as_uint8, render, sample_scenes


PATHS = {"as decoded": {}, "middle attention off": {"mid_attention": False},
         "GroupNorm statistics of the kept picture": {"norms_of_original": True},
         "… in the single-channel GroupNorms only": {"norms_of_original": True, "which_norms": "single-channel"},
         "… in the multi-channel GroupNorms only": {"norms_of_original": True, "which_norms": "multi-channel"},
         "… the means only (each its own spread)": {"norms_of_original": True, "statistics": "mean"},
         "… the spreads only (each its own mean)": {"norms_of_original": True, "statistics": "spread"}}
BANDS = ((1, 2), (2, 3), (3, 4), (4, 8))  # latent pixels from the cut, for --by-distance


@torch.no_grad()
def measure(model: str | None, pairs: int, seam: int, device: str, paths: bool = False, by_distance: bool = False) -> dict:
    pipe = isd.load_pipeline(model) if model else isd.load_pipeline()
    vae = pipe.vae.to(device).float().eval()
    images, _ = render(sample_scenes([2026, 12, 5], 2 * pairs, held_out=True, version=2), device=device)
    latents = to_latent(vae, images, centre=True)  # [2P, 4, h, w]: the posterior's centre, scaled as the UNet's
    a, b = latents[:pairs], latents[pairs:]
    h, w = a.shape[-2:]
    scale = images.shape[-1] // w
    changes = {name: [] for name in (PATHS if paths else ["as decoded"])}
    bands = {f"{near}-{far}": [] for near, far in BANDS} if by_distance else {}
    for cut in ("left | right", "top | bottom"):
        beyond = torch.zeros(1, 1, h, w, device=device)
        if cut == "left | right":
            beyond[..., w // 2:] = 1
        else:
            beyond[..., h // 2:, :] = 1
        kept = torch.zeros(h, w, dtype=torch.bool, device=device)
        if cut == "left | right":
            kept[:, :w // 2 - seam] = True
        else:
            kept[:h // 2 - seam] = True
        kept = at_pixels(kept, scale)
        for name in changes:  # the largest change of R, G, B per kept pixel (lessons.decoder_reach)
            changes[name].append(kept_change(vae, a * (1 - beyond) + b * beyond, a, kept, **PATHS[name]))
        for near, far in BANDS if by_distance else ():  # a strip of the kept side, parallel to the cut
            strip = torch.zeros(h, w, dtype=torch.bool, device=device)
            if cut == "left | right":
                strip[:, w // 2 - far:w // 2 - near] = True
            else:
                strip[h // 2 - far:h // 2 - near] = True
            bands[f"{near}-{far}"].append(kept_change(vae, a * (1 - beyond) + b * beyond, a, at_pixels(strip, scale)))
    summary = {name: grades(torch.cat(change).cpu().numpy()) for name, change in changes.items()}
    result = {"model": model or "tiny-sd 2 (embedded)", "vae_sha256": vae_sha256(model or TINY_SD), "pairs": pairs, "cuts": ["left | right", "top | bottom"], "seam_latent_pixels": seam,
              **summary.pop("as decoded")}
    if paths:  # which part of the decoder carries the painted half across: each switched off, or fed the kept picture's
        result["paths"] = summary
        # and how much the norms' statistics differ from picture to picture (what regroup --steady prices)
        with GroupNormProbe(vae.decoder, everywhere=True) as probe:
            vae.decode(a / vae.config.scaling_factor)
        result["statistics_between_pictures"] = round(float(steady_loss(probe.inputs)), 4)
    if by_distance:  # near the cut the convolutions reach across; a change as large far from it is the statistics'
        result["by_latent_pixels_from_the_cut"] = {band: grades(torch.cat(c).cpu().numpy()) for band, c in bands.items()}
    return result


def at_pixels(latent_mask: torch.Tensor, scale: int) -> torch.Tensor:
    """A ``[h, w]`` mask of latent pixels as the ``[h·scale, w·scale]`` mask of the image pixels they decode to."""
    return latent_mask.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


@torch.no_grad()
def inpainted(model: str | None, n: int, seam: int, device: str = "cpu", steps: int = 20) -> dict:
    """The kept half's leak over ``n`` of the pipeline's own inpaintings (the right half repainted; see the module).

    Returns ``{"inpaintings", "steps", "kept_pixels", "grey_levels": {"mean", "p99", "max"}, "share_within_4_levels",
    "repainted": {"grey_levels": {…}}}``: grades (0–255) of every kept pixel's largest R, G or B change, and beside
    them the same for the repainted half's pixels."""
    from PIL import Image

    pipe = isd.load_pipeline(model, device=device)
    scenes = sample_scenes([2026, 12, 7], 2 * n, held_out=True, version=world_of(pipe))
    images, _ = render(scenes[:n])
    size = images.shape[-1]
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (size // 2, 0, size, size))  # white = repaint: the right half
    kept, repainted = [], []
    for i, (picture, scene) in enumerate(zip(as_uint8(images), scenes[n:])):
        trace = pipe.inpaint(scene.caption, Image.fromarray(picture), mask, num_inference_steps=steps, seed=i, progress=False,
                             record=isd.RecordOptions(cross_attention=False))
        keep = trace.mask == 0  # [h, w], the pipeline's own kept region at latent resolution
        seam_away = keep.clone()
        seam_away[:, keep.shape[1] // 2 - seam:] = False  # leave out the seam beside the cut, as the splices above
        painted, original = (x[None].to(pipe.device) for x in (trace.latents[-1], trace.init_latents))
        kept.append(kept_change(pipe.vae, painted, original, at_pixels(seam_away, pipe.vae_scale_factor)))
        repainted.append(kept_change(pipe.vae, painted, original, at_pixels(~keep, pipe.vae_scale_factor)))
    return {"inpaintings": n, "steps": steps, **grades(torch.cat(kept).cpu().numpy()),
            "repainted": {"grey_levels": grades(torch.cat(repainted).cpu().numpy())["grey_levels"]}}


@torch.no_grad()
def issue_example(model: str | None, seeds: int, device: str = "cpu", steps: int = 8) -> dict:
    """The case issue 35 reported (about 50 grey levels then): "a red circle on the left" drawn, its left half repainted
    to "a blue square on the left", ``steps`` steps each, one picture per seed. The kept (right) half, seam and all,
    against the drawn picture: how far what the user kept moves.

    Returns ``{"seeds", "steps", "kept_pixels", "grey_levels", "share_within_4_levels", "per_picture_mean",
    "tint", "beyond_the_tint"}``: the grades of every kept pixel's largest R, G or B change; each picture's mean; the
    size of each picture's uniform shift (the kept half's signed mean change, per channel, the largest of R, G and
    B), averaged over the pictures; and the mean change left once each picture's uniform shift is taken away."""
    from PIL import Image

    pipe = isd.load_pipeline(model, device=device)
    pixels = lambda im: torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32))  # noqa: E731  [H, W, 3]
    changes, means, tints, rest = [], [], [], []
    for seed in range(seeds):
        start = pipe("a red circle on the left", num_inference_steps=steps, seed=seed, progress=False).image
        mask = Image.new("L", start.size, 0)
        mask.paste(255, (0, 0, start.size[0] // 2, start.size[1]))  # white = repaint: the left half
        trace = pipe.inpaint("a blue square on the left", start, mask, num_inference_steps=steps, seed=seed, progress=False,
                             record=isd.RecordOptions(cross_attention=False))
        change = (pixels(trace.image) - pixels(start))[:, start.size[0] // 2:]  # [H, W/2, 3], signed
        tint = change.mean((0, 1))  # [3]: the kept half's uniform shift
        changes.append(change.abs().amax(-1).flatten())
        means.append(round(float(changes[-1].mean()), 2))
        tints.append(float(tint.abs().max()))
        rest.append(float((change - tint).abs().amax(-1).mean()))
    return {"seeds": seeds, "steps": steps, **grades(torch.cat(changes).numpy()), "per_picture_mean": means,
            "tint": round(float(np.mean(tints)), 2), "beyond_the_tint": round(float(np.mean(rest)), 2)}


def grades(change: np.ndarray) -> dict:
    return {"kept_pixels": int(change.size), "grey_levels": {"mean": round(float(change.mean()), 2), "p99": round(float(np.percentile(change, 99)), 1),
                                                          "max": round(float(change.max()), 1)},
            "share_within_4_levels": round(float((change <= 4).mean()), 4)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a pipeline folder (default: the embedded tiny-sd 2)")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--seam", type=int, default=1, help="latent pixels next to the cut left out (default: %(default)s)")
    parser.add_argument("--paths", action="store_true", help="also decode with the middle attention off, and with every GroupNorm "
                        "dividing by the kept picture's own statistics (which part carries the change across)")
    parser.add_argument("--by-distance", action="store_true",
                        help="also grade the kept side in strips by their distance from the cut (1-2, 2-3, 3-4, 4-8 latent pixels)")
    parser.add_argument("--inpaint", type=int, default=0, help="also N of the pipeline's own inpaintings (default: none)")
    parser.add_argument("--issue-example", type=int, default=0, metavar="SEEDS",
                        help="also issue 35's own case on SEEDS seeds: a red circle's left half repainted to a blue square (8 steps)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = measure(args.model, args.pairs, args.seam, "cuda" if torch.cuda.is_available() else "cpu", args.paths, args.by_distance)
    if args.inpaint:
        result["inpainting"] = inpainted(args.model, args.inpaint, args.seam, "cuda" if torch.cuda.is_available() else "cpu")
    if args.issue_example:
        result["issue_example"] = issue_example(args.model, args.issue_example, "cuda" if torch.cuda.is_available() else "cpu")
    print(json.dumps(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
