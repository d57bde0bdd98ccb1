"""Rebuild tiny-sd 2's VAE with fewer GroupNorm groups, and train it back to the same latents and pictures.

Why: the decoder is not local (notebook 07; ``lessons.decoder_reach``): every GroupNorm divides by statistics of the
whole picture, so what an inpainting paints on the right moves the pixels it keeps on the left. Fine-tuning the
decoder to be local (``decoder.py``'s ``local`` term, parts 8, 13, 15 and 16 in the model card) got the kept half
from about 73 grey levels down to 12-17, and each time cost orange. One reason may be four of its five
full-resolution GroupNorms: their 32 groups hold one channel each (instance norms). A group of several channels can be
held still by one of them that the decoder keeps large and constant, whatever the picture (its share then sets the
group's mean and spread); a channel alone cannot hold itself still. So give every group several channels. (A first
run, on 2 CPU cores, 555 steps of 8: 15.8 grey levels with orange kept, the round trip not trained back yet; the
model card's part 17. This module trained the 16-group decoder shipped from session 32, 7.5 grey levels, and the
4-group one of session 39, part 26: 6.9 grey levels, and a third fewer marks at the objects' edges; part 27, that
decoder trained on with ``ring`` and ``near`` (session 40), ships since: the blots beside the objects gone from most
pictures.)

How, keeping diffusers' own class and the latent space every denoiser learned:
1. Build an ``AutoencoderKL`` like the source's, but for ``norm_num_groups`` (SD's 32 → ``groups``), and copy every weight
   across: a GroupNorm's scale and shift are per channel, so they fit any grouping. The copy is *not* the same
   function (each norm now pools other channels' statistics), and its pictures are far off until trained back.
2. Train the copy's encoder to give the source encoder's posterior (mean and log-variance) for the world's pictures,
   so that the UNet's and tiny-flux's latents keep their meaning;
3. and at the same time its decoder to draw the source decoder's picture of each latent (the encoder's, and the
   UNet's own from a bank drawn first: ``decoder.generated_bank``), and of a spliced latent each side's own picture
   (``decoder.spliced``): what ``scripts/decoder_locality.py`` measures. The source decoder is the teacher: its
   colours (orange included) are what the copy is held to, so a locality that costs colour shows as a loss that
   does not fall.

    python -m illustrated_sd.train.regroup SOURCE OUT [--groups 16] [--minutes 4] [--batch-size 128] [--local 1]
        [--start EARLIER/vae/diffusion_pytorch_model.safetensors --seed 1] [--colour 10] [--bank-colours orange,yellow]
        [--clean 3] [--near 10] [--splice-colour 10] [--droplet 1] [--spread 1] [--steady 1] [--worst 1] [--ring 2] [--truth]
        [--flux-bank 512]

SOURCE is a tiny-sd pipeline folder (say illustrated_sd/assets/tiny-sd); OUT becomes a copy of it whose ``vae/`` is the
regrouped one, with the run's losses in its ``train_log.json`` (``regroup``). Graded like any decoder candidate
(``scripts/grade_decoder.sh OUT NAME``).
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, StableDiffusionPipeline
from safetensors.torch import load_file

from .. import checks
from ..world import COLORS, render, sample_scenes
from .decoder import (RING_EDGE, DropletProbe, GroupNormProbe, decoder_loss, decoder_lr, droplet_loss, flux_bank,
                      generated_bank, impossible_colour, object_colour_error, object_weights, ring_error, ring_fill,
                      speckle_ring, spliced, spread_loss, steady_loss, stray_colour, worst_error)
from .export import write_atomically
from .stages import Budget, _autocast, _run

LOGVAR_WEIGHT = 0.1  # the posterior's spread matters less than its centre: the UNet learned the centres' space


def regrouped(vae: AutoencoderKL, groups: int) -> AutoencoderKL:
    """A copy of ``vae`` whose GroupNorms have ``groups`` groups, every weight copied (not the same function: see the
    module). ``ValueError`` if a layer's channels do not split into ``groups``."""
    widths = sorted({m.num_channels for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)})
    if groups < 1 or any(width % groups for width in widths):
        raise ValueError(f"--groups {groups} must divide every GroupNorm's channels ({', '.join(map(str, widths))}): "
                         f"try one of {[g for g in (1, 2, 4, 8, 16, 32, 64) if all(w % g == 0 for w in widths)]}")
    copy = AutoencoderKL.from_config({**vae.config, "norm_num_groups": groups})
    copy.load_state_dict(vae.state_dict())  # same names and shapes: a GroupNorm's affine weights are per channel
    return copy


def saved_grouping(weights: Path) -> int | None:
    """The GroupNorm groups a VAE's ``weights`` (its safetensors file) were trained with: the ``norm_num_groups`` of the
    ``config.json`` beside them, or None when there is none. Only the config can tell, since the weights fit any
    grouping (see ``regrouped``). ``ValueError`` if that config is another model's."""
    config = Path(weights).parent / "config.json"
    if not config.exists():
        return None
    config = json.loads(config.read_text())
    if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise ValueError(f"{weights} is a {config['_class_name']}'s weights, not a VAE's")
    return config.get("norm_num_groups", 32)  # diffusers' default, when the config leaves it out


def posterior_loss(new: AutoencoderKL, wanted, images: torch.Tensor) -> torch.Tensor:
    """How far ``new``'s encoder is from a posterior ``wanted`` (the source encoder's ``latent_dist`` of the same
    ``images`` ``[B, 3, H, W]``): the squared error of the mean, plus ``LOGVAR_WEIGHT`` times that of the log-variance
    (each ``[B, 4, h, w]``), averaged → a scalar."""
    posterior = new.encode(images).latent_dist
    return (F.mse_loss(posterior.mean.float(), wanted.mean.float())
            + LOGVAR_WEIGHT * F.mse_loss(posterior.logvar.float(), wanted.logvar.float()))


def regroup_vae(source: Path, out: Path, groups: int, minutes: float, batch_size: int, device, seed: int = 0,
                local: float = 1.0, bank_size: int = 256, max_steps: int | None = None, log_every: int = 20,
                start: Path | None = None, colour: float = 0.0, bank_colours: tuple[str, ...] = (), clean: float = 0.0,
                near: float = 0.0, splice_colour: float = 0.0, droplet: float = 0.0, truth: bool = False,
                spread: float = 0.0, flux_bank_size: int = 0, flux_model: str | Path = "tiny-flux", steady: float = 0.0,
                worst: float = 0.0, ring: float = 0.0) -> int:
    """Write ``out``: the ``source`` pipeline folder with its VAE regrouped to ``groups`` and trained back (see the
    module) for ``minutes`` (the bank's drawing included) or ``max_steps``. Returns the steps taken.

    The run cannot resume: it trains in a scratch folder beside ``out`` and puts it in ``out``'s place only at the end
    (float16, as every shipped weight), so a run cut short leaves no ``out`` that looks finished. To train on, pass
    ``start``: an earlier run's regrouped VAE weights (its ``vae/diffusion_pytorch_model.safetensors``; the
    ``config.json`` beside them, when there is one, must have ``groups`` groups); the teacher stays ``source``'s VAE.
    With the earlier run's ``seed`` the batches replay its own: give another.

    ``colour`` weighs a term that holds each object's mean colour to the source decoder's (``object_colour_error``, on
    the encoder's latents and the UNet's): part 17's first GPU run (2026-12-06) without it drew the UNet's orange
    objects yellower (``scripts/decoder_colour_shift.py``) while its per-pixel loss hardly noticed. ``bank_colours``
    gives half the UNet bank to captions asking for those colours (``generated_bank``). ``clean`` weighs the faint marks
    away from the objects, coloured or grey (``stray_colour`` against the world's original, as part 14, and on the UNet's
    latents against the source decoder's picture, which has few): the colour
    run of session 31, trained without it, drew a mark beside the objects in nearly every plain round trip
    (``scripts/decoder_marks.py``), in the background the object-weighted loss hardly looks at. ``near`` weighs the
    smudges that stay: speckled green-and-purple patches at an object's lower edge (in every style, and in tiny-flux's
    pictures too: they come with the latents), which the source decoder draws too (so holding to it keeps them) and
    part 7's drew a few pixels farther out; ``impossible_colour`` prices them with no target, as colours the world
    never puts there. (Part 19 in the model card: the speckle turned grey, and stayed.) ``splice_colour`` holds each
    object's mean colour on the spliced latents too, each side's to its own picture (beyond the seam): a decoder
    trained to be local must tell orange from yellow without the rest of the picture, and every local candidate so far
    (parts 13 to 18) drew orange yellower; this prices it where locality is asked. ``droplet`` weighs the spikes in
    the decoder's full-resolution features that draw the speckle (``decoder.droplet_loss``: StyleGAN's droplets).
    The source decoder draws that speckle too, so holding the copy to its pictures holds the speckle: with ``truth``
    the encoder's latents (whole and spliced) are held to the world's own pictures instead, and the UNet's (which have
    no original) to the source decoder's pictures but for the ring around each object where it draws the speckle.
    ``spread`` weighs the share of each GroupNorm group's spread, in the last two up blocks and ``conv_norm_out``, that
    a few pixels supply (``decoder.spread_loss``): the droplet as the norm sees it. (Part 21 priced ``droplet``: the
    peak came down, and 25 pixels still supplied half of a group's spread.) ``flux_bank_size`` adds that many of
    ``flux_model``'s latents to the bank (``decoder.flux_bank``, its captions naming ``bank_colours`` as the UNet's do):
    tiny-flux shares the decoder, and every local decoder held to the UNet's latents alone drew its orange yellower.
    ``steady`` weighs how much every GroupNorm's statistics differ between the batch's pictures (``decoder.steady_loss``):
    the leak's carrier priced where it is computed, not only in the spliced output. ``worst`` weighs each encoder
    latent's worst pixels against its target (``decoder.worst_error``; with ``truth`` the world's picture, which has no
    speckle): the speckle as a loss of its own, not a sliver of the per-pixel one. ``ring`` weighs the worst pixels of
    the ring around each object beyond its soft edge (``decoder.ring_error``), where the world draws nothing but
    background: for the encoder's latents against the world's picture, for the UNet's against the source decoder's
    picture with that ring painted in from the background beyond (``decoder.ring_fill``; pictures whose background is
    patterned, and the pixels a photo's shadow may reach, left out). Part 26's decoder still drew a soft dark or pink
    blot at one corner of an object in a fifth of the guided pictures, grey for ``near`` and left out by ``--truth``;
    part 27 (``--ring 2 --near 10`` on from it, the model card) drew none in the sheet's six."""
    source, out, device = Path(source), Path(out), torch.device(device)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new folder (the regrouped pipeline is written there whole)")
    budget = Budget(minutes, max_steps)
    pipe = StableDiffusionPipeline.from_pretrained(source, dtype=torch.float32, safety_checker=None,
                                                   requires_safety_checker=False).to(device)
    old = pipe.vae.float().eval().requires_grad_(False)
    new = regrouped(old, groups)
    if start is not None:
        if (was := saved_grouping(start) or groups) != groups:  # no config beside them: --groups is taken on trust
            raise ValueError(f"--start {start} was trained with {was} GroupNorm groups, not {groups}: pass --groups {was}")
        new.load_state_dict(load_file(start))  # strict: another model's weights are refused by name
    new = new.to(device).train()
    # the UNet's own latents, and the source decoder's pictures of them (its colours: what the copy is held to)
    bank = generated_bank(pipe, old, bank_size, device, seed, world=2, colours=bank_colours)
    if flux_bank_size:  # tiny-flux's latents too, drawn by its own pipeline (it reads tiny-sd 2's latent space)
        from ..models.loading import load_pipeline

        flux = load_pipeline(flux_model, device=device).pipeline.to(dtype=torch.float32)
        more = flux_bank(flux, old, flux_bank_size, device, seed, world=2, colours=bank_colours)
        bank = tuple(torch.cat(pair) for pair in zip(bank, more, strict=True))
        del flux
    if ring:  # each bank picture's ring painted clean once: the target the UNet's latents are held to there
        ring_targets, ring_where = (torch.cat(parts) for parts in zip(*(
            ring_fill(pictures, masks) for pictures, masks in zip(bank[1].split(128), bank[2].split(128)))))
    gen = torch.Generator(device).manual_seed(seed * 1_000_003 + 17)
    budget.begin_steps()

    def step_fn(step):
        images, masks = render(sample_scenes([seed, 17, step], batch_size, version=2), device=device)
        pick = torch.randint(0, len(bank[0]), (max(1, batch_size // 4),), generator=gen, device=device)
        with torch.no_grad():  # the source's posterior, a latent from it (the denoisers' space) and its picture, in float32
            posterior = old.encode(images).latent_dist
            latents = posterior.sample(generator=gen)
            wanted = old.decode(latents).sample.clamp(-1, 1)
        if truth:  # the world's picture, not the source decoder's (which draws the speckle)
            wanted = images
        mixed, targets, target_masks, far = spliced(latents, wanted, masks, gen)
        bank_mixed, bank_targets, bank_masks, bank_far = spliced(bank[0][pick], bank[1][pick], bank[2][pick], gen)
        with (_autocast(device), DropletProbe(new.decoder) as probe, GroupNormProbe(new.decoder) as norms,
              GroupNormProbe(new.decoder, everywhere=True) as every_norm):
            encoder = posterior_loss(new, posterior, images)
            recon, recon_mixed, from_bank, from_bank_mixed = new.decode(
                torch.cat([latents, mixed, bank[0][pick], bank_mixed])).sample.float().split([len(latents)] * 2 + [len(pick)] * 2)
        weigh = lambda m: object_weights(m, equal_objects=True)  # noqa: E731
        bank_weights = weigh(bank[2][pick])
        if truth:  # the source decoder's speckle is not a target: its ring around the objects is left out
            bank_weights = bank_weights * ~speckle_ring(bank[2][pick])
        decoder = (decoder_loss(recon, wanted, weigh(masks)) + decoder_loss(from_bank, bank[1][pick], bank_weights)
                   + local * decoder_loss(recon_mixed, targets, far * weigh(target_masks))
                   + local * decoder_loss(from_bank_mixed, bank_targets, bank_far * weigh(bank_masks)))
        if colour:  # a few levels on one channel of a whole object: little per pixel, another colour word
            decoder = decoder + colour * (object_colour_error(recon, wanted, masks)
                                          + object_colour_error(from_bank, bank[1][pick], bank[2][pick]))
        if splice_colour:  # each side's objects, beyond the seam, in their own picture's colours
            decoder = decoder + splice_colour * (object_colour_error(recon_mixed, targets, target_masks * far)
                                                 + object_colour_error(from_bank_mixed, bank_targets, bank_masks * bank_far))
        if droplet:  # a spike that dominates a GroupNorm's statistics, drawn as speckle where it sits
            decoder = decoder + droplet * droplet_loss(probe.features)
        if spread:  # a few pixels that supply most of what a GroupNorm divides every pixel by
            decoder = decoder + spread * spread_loss(norms.inputs)
        if steady:  # every norm's statistics the same whatever the picture: then nothing painted elsewhere moves them
            decoder = decoder + steady * steady_loss(every_norm.inputs)
        if worst:  # the few pixels a mark spoils, which the per-pixel loss averages away, against the encoder's targets
            decoder = decoder + worst * worst_error(recon, wanted)
        if ring:  # a blot beside an object, beyond its soft edge, where the world draws only background
            decoder = decoder + ring * (ring_error(recon, images, speckle_ring(masks, edge=RING_EDGE))
                                        + ring_error(from_bank, ring_targets[pick], ring_where[pick]))
        if clean:  # a faint mark beside an object costs little per pixel: price it as the world's detector sees it,
            # against the world's clean original, and on the UNet's latents against the source decoder's picture
            decoder = decoder + clean * (stray_colour(recon, images, masks, grey=1.0)
                                         + stray_colour(from_bank, bank[1][pick], bank[2][pick], grey=1.0))
        if near:  # the speckled smudge at an object's edge, which the teacher draws too: priced as a colour the world
            # never puts beside an object (off the plane of its blends and shadows), with no target to copy
            decoder = decoder + near * (impossible_colour(recon, images, masks)
                                        + impossible_colour(from_bank, bank[1][pick], bank[2][pick]))
        return encoder + decoder

    steps = 0

    def write(tmp: Path):
        nonlocal steps
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        steps = _run("regroup", step_fn, list(new.parameters()), decoder_lr(batch_size), tmp, budget, log_every, warmup=50,
                     anneal=True)
        shutil.rmtree(tmp / "vae")
        new.to(torch.float16).save_pretrained(tmp / "vae")  # its last use: float16, as every shipped weight

    write_atomically(out, write)
    return steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m illustrated_sd.train.regroup", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a tiny-sd pipeline folder (say illustrated_sd/assets/tiny-sd)")
    parser.add_argument("out", type=Path, help="a new folder: the pipeline with the regrouped VAE")
    parser.add_argument("--groups", type=checks.positive_int, default=16, help="GroupNorm groups (default: %(default)s, the shipped decoder's; SD and part 7's decoder have 32)")
    parser.add_argument("--minutes", type=checks.positive_float, default=4.0, help="the whole run's wall time, the bank's drawing included")
    parser.add_argument("--max-steps", type=checks.positive_int, default=None)
    parser.add_argument("--batch-size", type=checks.positive_int, default=128)
    parser.add_argument("--local", type=checks.finite_float, default=1.0, help="weight of the spliced latents' loss (default: %(default)s)")
    parser.add_argument("--bank-size", type=checks.positive_int, default=256, help="the UNet's latents drawn first (default: %(default)s)")
    parser.add_argument("--seed", type=checks.natural_int, default=0)
    parser.add_argument("--start", type=Path, default=None,
                        help="train on from an earlier run's regrouped weights (its vae/diffusion_pytorch_model.safetensors)")
    weights = {  # the optional terms, each a loss weight (0, the default, leaves it out)
        "colour": "the objects' mean colours held to the source decoder's",
        "clean": "the faint marks away from the objects, coloured or grey: against the world's originals, and on the "
                 "UNet's latents against the source decoder's pictures (decoder.stray_colour; part 14 used 1)",
        "near": "the smudges at the objects' edges: colours off the plane of an object's blends with the background and "
                "its shadow (decoder.impossible_colour)",
        "splice_colour": "the objects' mean colours on the spliced latents, each side held to its own picture",
        "droplet": "the spikes in the decoder's full-resolution features that draw the speckle at objects' edges "
                   "(decoder.droplet_loss)",
        "spread": "the share of each full-resolution GroupNorm group's spread that a few pixels supply (decoder.spread_loss)",
        "steady": "how much every GroupNorm's statistics differ between pictures (decoder.steady_loss)",
        "worst": "each picture's 20 worst pixels against its target (decoder.worst_error; with --truth, the world's picture)",
        "ring": "the worst pixels of the ring around each object beyond its soft edge, against a picture with nothing there "
                "but background (decoder.ring_error)"}
    for name, what in weights.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=checks.finite_float, default=0.0,
                            help=f"weight of {what} (default: %(default)s)")
    parser.add_argument("--truth", action="store_true",
                        help="hold the encoder's latents to the world's pictures, not the source decoder's (which draw "
                             "the speckle), and leave the speckle's ring out of the UNet bank's targets")
    parser.add_argument("--flux-bank", type=checks.natural_int, default=0,
                        help="also hold the decoder to this many of tiny-flux's latents (its pictures, as the source decoder draws them)")
    parser.add_argument("--flux-model", default="tiny-flux", help="the Flux model the --flux-bank latents come from (default: %(default)s)")
    parser.add_argument("--bank-colours", default="", help="comma-separated colours half the bank's captions name (say orange,yellow)")
    args = parser.parse_args(argv)
    for name in ("local", *weights):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} is a loss weight, ≥ 0 (got {getattr(args, name):g})")
    if args.start is not None and not args.start.is_file():
        parser.error(f"--start {args.start} is not a file: give an earlier run's vae/diffusion_pytorch_model.safetensors")
    bank_colours = tuple(c for c in args.bank_colours.split(",") if c)
    if unknown := [c for c in bank_colours if c not in COLORS]:
        parser.error(f"--bank-colours: {', '.join(unknown)} not among the world's colours ({', '.join(COLORS)})")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = regroup_vae(args.source, args.out, args.groups, args.minutes, args.batch_size, device, args.seed, args.local,
                        args.bank_size, args.max_steps, start=args.start, bank_colours=bank_colours, truth=args.truth,
                        flux_bank_size=args.flux_bank, flux_model=args.flux_model,
                        **{name: getattr(args, name) for name in weights})
    print(f"regroup: {steps} steps on {device.type}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
