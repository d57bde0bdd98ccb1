"""Where the decoder draws its speckle, do its features spike? (StyleGAN's "water droplets", in tiny-sd 2's VAE.)

Karras et al. (StyleGAN2, 2020, section 2) traced blob-shaped artefacts to instance normalisation: a generator that
wants to set a picture's overall strength can draw one strong, local spike that dominates the norm's statistics, and
the spike shows as a blob. tiny-sd 2's decoder normalises with GroupNorms over the whole picture, and draws a few
pixels of green-and-purple speckle at an object's lower edge (the model card's "edge marks"). This script renders
single objects on plain backgrounds (the world's own styles), sends each through the VAE (the shipped encoder's
posterior mean, then each decoder), and per picture records whether the detector finds a coloured mark more than 2 px
from the object (``stray_marks(clearance=2)``), and, for the decoder's last two up blocks (full resolution), the peak
of the per-pixel feature norm over its mean and where the peak lies. And the latent itself: each channel's z-score
(over all the pictures' latents), the largest |z| per picture and where it lies: whether the encoder writes an
outlier where the decoder draws the speckle, and whether clamping the latent's outliers (each channel to 5, 4, 3 of its
standard deviations) before the shipped decoder takes the speckle away. Whether the spike dominates the statistics a
GroupNorm divides by: the share of each full-resolution GroupNorm's spread (its input's squared deviation from the
group's mean, the largest share over the groups) that the 5×5 pixels around the last block's peak supply (25 of
16,384 pixels: 0.15% if they were like any others). And how else a group can set its spread: the share that its
channels' own means supply (``decoder.constant_share``: a channel held large and constant, no spike needed), beside
the share its 25 most deviating pixels supply (``decoder.spread_share``), per GroupNorm with its channels per group
(and the same for the shipped encoder's GroupNorms).

    python scripts/decoder_droplets.py [--decoder NAME=FOLDER ...] [--scenes 64] [--out docs/decoder_droplets.json]

The limits ``decoder.DROPLET_LIMITS`` (what ``regroup --droplet`` prices) were read off this script's output.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL

import illustrated_sd as isd
from illustrated_sd.evaluate import NEAR
from illustrated_sd.train.decoder import DROPLET_LIMITS, DropletProbe, constant_share, spread_share
from illustrated_sd.world import as_uint8, render, sample_scenes
from illustrated_sd.world.detect import stray_marks


def peak_over_mean(x: torch.Tensor) -> np.ndarray:
    """``x [B, C, H, W]`` → ``[B]``: the per-pixel norm over channels, its peak over its mean."""
    norm = x.float().norm(dim=1).flatten(1)
    return (norm.amax(1) / norm.mean(1)).numpy()


def group_deviation(norm: torch.nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
    """A GroupNorm's input ``x [B, C, H, W]`` → ``[B, G, H, W]``: each pixel's squared deviation from its group's mean,
    summed over the group's channels. Summed over the picture it is what the norm's spread is taken from."""
    b, c, h, w = x.shape
    x = x.float().view(b, norm.num_groups, c // norm.num_groups, h, w)
    return (x - x.mean((2, 3, 4), keepdim=True)).pow(2).sum(2)


def share_at(deviation: torch.Tensor, where: np.ndarray, reach: int = 2) -> np.ndarray:
    """``deviation [B, G, H, W]`` (:func:`group_deviation`) and one (x, y) pixel per picture ``[B, 2]`` → ``[B]``: the
    largest share, over the groups, of a group's spread that comes from the (2·reach+1)² pixels around that pixel."""
    shares = []
    for d, (x, y) in zip(deviation, where.astype(int)):
        window = d[:, max(0, y - reach):y + reach + 1, max(0, x - reach):x + reach + 1].sum((1, 2))
        shares.append((window / d.sum((1, 2)).clamp(min=1e-12)).amax().item())
    return np.array(shares)


def how_groups_set_their_spread(norm: torch.nn.GroupNorm, x: torch.Tensor) -> dict:
    """A GroupNorm's input ``x [B, C, H, W]`` → its channels per group and the medians, over pictures and groups, of
    the share of a group's spread its channels' means supply (``constant_share``) and its top pixels (``spread_share``)."""
    return {"channels_per_group": x.shape[1] // norm.num_groups,
            "constant_share": round(constant_share(norm, x).median().item(), 3),
            "top_pixels_share": round(spread_share(norm, x).median().item(), 3)}


def droplets(vae, latents: torch.Tensor) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray], dict, dict, dict]:
    """Decode ``latents [B, 4, h, w]``: the pictures ``[B, H, W, 3]`` uint8, per probed block the peak-over-mean
    ratio ``[B]`` and the peak's (x, y) in pixels ``[B, 2]``, the same ratio of the input of every GroupNorm of the
    decoder's last two up blocks (``{name: [B]}``: where the spike builds up), and for the full-resolution GroupNorms
    the share of their spread that the 5×5 pixels around the last block's peak supply (``{name: [B]}``: whether the
    spike dominates the statistics the norm divides by), and per GroupNorm how its groups set their spread
    (``{name: {"channels_per_group", "constant_share", "top_pixels_share"}}``, medians over pictures and groups)."""
    inputs, deviations, how, hooks = {}, {}, {}, []

    def watch(module, args, output, name):
        inputs[name] = peak_over_mean(args[0])
        how[name] = how_groups_set_their_spread(module, args[0])
        if args[0].shape[-1] == latents.shape[-1] * 8:  # full resolution
            deviations[name] = group_deviation(module, args[0])
    for name, module in vae.decoder.named_modules():
        if isinstance(module, torch.nn.GroupNorm) and name.startswith(("up_blocks.2", "up_blocks.3", "conv_norm_out")):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: watch(m, i, o, name)))
    try:
        with torch.no_grad(), DropletProbe(vae.decoder) as probe:
            pictures = as_uint8(vae.decode(latents).sample.clamp(-1, 1))
    finally:
        for h in hooks:
            h.remove()
    ratios, peaks = [], []
    for f in probe.features:
        norm = f.float().norm(dim=1)  # [B, h, w]
        flat = norm.flatten(1)
        ratios.append((flat.amax(1) / flat.mean(1)).numpy())
        y, x = np.divmod(flat.argmax(1).numpy(), norm.shape[-1])
        peaks.append(np.stack([x + 0.5, y + 0.5], 1) * pictures.shape[1] / norm.shape[-1])
    shares = {name: share_at(d, peaks[-1]) for name, d in deviations.items()}
    return pictures, ratios, peaks, inputs, shares, how


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", action="append", default=[], metavar="NAME=FOLDER", help="another VAE to decode with")
    parser.add_argument("--scenes", type=int, default=64, help="single objects on plain backgrounds (default: %(default)s)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    shipped = isd.load_pipeline("tiny-sd").vae.float().eval()
    decoders = {"shipped": shipped}
    for spec in args.decoder:
        name, _, folder = spec.partition("=")
        if not (Path(folder) / "config.json").is_file():
            parser.error(f"--decoder {spec}: no config.json in {folder} (give NAME=FOLDER, the VAE's own folder)")
        decoders[name] = AutoencoderKL.from_pretrained(folder).float().eval()
    scenes = [s for s in sample_scenes([5, 1], 20 * args.scenes, version=2, n_objects=1) if s.pattern == "plain"][: args.scenes]
    images, _ = render(scenes)
    in_render = np.array([len(stray_marks(p, version=2, clearance=NEAR)) > 0 for p in as_uint8(images)])  # shadows, strokes
    renders_marked = int(in_render.sum())
    encoder_groups, hooks = {}, []  # the same reading of the encoder's GroupNorms: does it droplet too?

    def read_encoder(module, args, output, name):
        if args[0].ndim == 4:  # not the middle attention's norm, whose input is [B, C, H·W]
            encoder_groups[name] = how_groups_set_their_spread(module, args[0])
    for name, module in shipped.encoder.named_modules():
        if isinstance(module, torch.nn.GroupNorm):
            hooks.append(module.register_forward_hook(lambda m, i, o, name=name: read_encoder(m, i, o, name)))
    try:
        with torch.no_grad():
            latents = shipped.encode(images).latent_dist.mean  # the latent space both denoisers learned
    finally:
        for h in hooks:
            h.remove()
    z = ((latents - latents.mean((0, 2, 3), keepdim=True)) / latents.std((0, 2, 3), keepdim=True)).abs().amax(1)  # [B, h, w]
    outlier = z.flatten(1).amax(1).numpy()  # each picture's most extreme latent value, in standard deviations
    oy, ox = np.divmod(z.flatten(1).argmax(1).numpy(), z.shape[-1])
    result = {"written_by": "scripts/decoder_droplets.py", "pictures": len(scenes), "limits": list(DROPLET_LIMITS),
              "renders_with_marks": int(renders_marked), "shipped_encoder_groups": encoder_groups, "decoders": {}}
    for name, vae in decoders.items():
        pictures, ratios, peaks, inputs, shares, how = droplets(vae, latents)
        marks = [stray_marks(p, version=2, clearance=NEAR) for p in pictures]
        marked = np.array([len(m) > 0 for m in marks])
        # how far the last block's peak lies from the nearest mark's centre, in pixels (marked pictures only)
        size = pictures.shape[1]
        distance = [min(np.hypot(x * size - peaks[-1][i][0], y * size - peaks[-1][i][1]) for _, (x, y) in marks[i])
                    for i in np.flatnonzero(marked)]
        scale = size / z.shape[-1]  # pixels per latent pixel
        near_outlier = [min(np.hypot(x * size - (ox[i] + 0.5) * scale, y * size - (oy[i] + 0.5) * scale) for _, (x, y) in marks[i])
                        for i in np.flatnonzero(marked)]
        last = ratios[-1]
        spiked = last > DROPLET_LIMITS[-1]
        result["decoders"][name] = {
            "with_marks": int(marked.sum()),
            "with_marks_the_render_lacks": int((marked & ~in_render).sum()),
            "last_block_peak_over_mean": {"median_with_marks": round(float(np.median(last[marked])), 1) if marked.any() else None,
                                          "median_without": round(float(np.median(last[~marked])), 1) if (~marked).any() else None},
            "spiked_pictures": int(spiked.sum()),
            "marked_pictures_spiked": int((marked & spiked).sum()),
            "marks_within_4px_of_the_peak": int(sum(d <= 4 for d in distance)),
            "latent_outlier_z": {"median_with_marks": round(float(np.median(outlier[marked])), 1) if marked.any() else None,
                                 "median_without": round(float(np.median(outlier[~marked])), 1) if (~marked).any() else None},
            "marks_within_one_latent_pixel_of_the_outlier": int(sum(d <= 1.5 * scale for d in near_outlier)),
            "groupnorm_inputs_peak_over_mean": {n: {"median_with_marks": round(float(np.median(r[marked])), 1),
                                                    "median_without": round(float(np.median(r[~marked])), 1)}
                                                for n, r in inputs.items() if marked.any() and (~marked).any()},
            "spread_share_at_the_peak": {n: {"median_with_marks": round(float(np.median(r[marked])), 3),
                                             "median_without": round(float(np.median(r[~marked])), 3)}
                                         for n, r in shares.items() if marked.any() and (~marked).any()},
            "how_groups_set_their_spread": how,
            "ratios": [[round(float(r), 1) for r in block] for block in ratios]}
        summary = {k: v for k, v in result["decoders"][name].items() if k not in ("ratios", "groupnorm_inputs_peak_over_mean", "spread_share_at_the_peak", "how_groups_set_their_spread")}
        print(name, json.dumps(summary))
    mean, spread = latents.mean((0, 2, 3), keepdim=True), latents.std((0, 2, 3), keepdim=True)
    result["shipped_with_latents_clamped"] = {}
    for k in (5, 4, 3):
        with torch.no_grad():
            clamped = shipped.decode(mean + ((latents - mean) / spread).clamp(-k, k) * spread).sample.clamp(-1, 1)
        result["shipped_with_latents_clamped"][f"{k} sd"] = {
            "with_marks": int(sum(len(stray_marks(p, version=2, clearance=NEAR)) > 0 for p in as_uint8(clamped)))}
    print("shipped decoder, latents clamped:", result["shipped_with_latents_clamped"])
    print("renders with a mark:", renders_marked, "of", len(scenes))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
