"""python -m illustrated_sd.train run|export … (see ``illustrated_sd.train``)."""

import sys
from pathlib import Path

import torch

from .. import checks
from ..cli import OneLineParser, one_line, parse
from ..models.loading import ModelLoadError

from .checkpoint import read_log, write_log
from .export import export, import_folder
from .decoder import BANK, train_decoder
from ..paths import TINY_FLUX_FAST
from .distill import RANK, correction_rank, make_pairs, rebase_correction, train_reflow
from .flux import train_flux, train_t5
from .grounding import train_grounding
from .stages import train_clip, train_unet, train_vae

# "ground" and "decoder" are optional: "ground" fine-tunes a trained UNet so that each object's words are
# looked at on the object; "decoder" sharpens the VAE's decoder while its encoder (and so the UNet) stays valid
STAGES = {"clip": train_clip, "vae": train_vae, "unet": train_unet, "ground": train_grounding, "decoder": train_decoder,
          "t5": train_t5, "flux": train_flux,  # tiny-flux, in a checkpoint of its own
          "pairs": make_pairs, "reflow": train_reflow}  # tiny-flux-fast (distilled from the shipped tiny-flux), likewise


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m illustrated_sd.train", description="Train the embedded tiny Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train stages for a time budget each, resuming from --out")
    run.add_argument("--stages", default="clip,vae,unet", help="comma-separated, in order (default: %(default)s)")
    run.add_argument("--minutes", default="1.5,4,3.5", help="time budget per stage, comma-separated (default: %(default)s)")
    run.add_argument("--out", type=Path, required=True, help="checkpoint folder (created, or resumed from)")
    run.add_argument("--batch-size", type=checks.positive_int, default=256)
    run.add_argument("--seed", type=checks.natural_int, default=0)
    run.add_argument("--anneal", action="store_true", help="unet: let the learning rate fall over the second half of the budget (the last run)")
    run.add_argument("--binding", type=checks.finite_float, default=0.0, help="ground, flux: weight of the binding loss (default: %(default)s, off)")
    run.add_argument("--token-loss", type=checks.finite_float, default=0.0,
                     help="flux: weight of the token loss that grounds each object word's image→text attention in its object "
                          "(the ground stage's, for tiny-flux; default: %(default)s, off)")
    run.add_argument("--two-objects", type=checks.finite_float, default=None,
                     help="ground, flux: share of scenes that practise binding: two-object scenes in world 1 (default 0.3), "
                          "two objects both named with colour and place in world 2 (default 0)")
    run.add_argument("--name-backgrounds", type=checks.finite_float, default=None,
                     help="ground, flux (world 2): share of scenes whose caption surely names the background's colour (default: the "
                          "world's own mix, where 40%% of captions name the colour, the pattern or both)")
    run.add_argument("--name-all", type=checks.finite_float, default=None,
                     help="ground, flux (world 2): share of scenes whose caption names every object (default: the world's own mix, "
                          "where 39%% of scenes hold an object the caption leaves out)")
    run.add_argument("--equal-objects", action="store_true",
                     help="decoder: a small object weighs as much in the loss as a big one (its pixels up to 4× more)")
    run.add_argument("--local", type=checks.finite_float, default=0.0,
                     help="decoder: weight of the loss on spliced latents that keeps the decoder local (default: %(default)s, off)")
    run.add_argument("--local-teacher", action="store_true",
                     help="decoder, with --local: the spliced halves' targets are the starting decoder's own pictures (or "
                          "--colour-reference's), and with --keep-generated the UNet's latents are spliced too")
    run.add_argument("--clean", type=checks.finite_float, default=0.0,
                     help="decoder: weight of the loss on faint colour marks away from the objects, the ghost smudges (default: %(default)s, off)")
    run.add_argument("--clean-grey", type=checks.finite_float, default=0.0,
                     help="decoder, with --clean: weight of a mark's grey part (darker or lighter) beside its colour; the detector "
                          "ignores grey, and a decoder trained without it kept its dark marks (default: %(default)s, colour only)")
    run.add_argument("--object-colour", type=checks.finite_float, default=0.0,
                     help="decoder: weight of the loss on each object's mean colour, as the detector reads it (default: %(default)s, off)")
    run.add_argument("--keep-generated", type=checks.finite_float, default=0.0,
                     help="decoder: weight of the loss that keeps the colours the decoder gave the UNet's own latents when the "
                          "stage began (default: %(default)s, off)")
    run.add_argument("--colour-reference", type=Path, default=None,
                     help="decoder, with --keep-generated: a pipeline folder whose VAE draws the pictures whose colours are kept "
                          "(default: the decoder being trained, as the stage begins)")
    run.add_argument("--bank-size", type=checks.positive_int, default=None,
                     help=f"decoder, with --keep-generated: how many of the UNet's latents to draw and keep (default: {BANK})")
    run.add_argument("--teacher", type=Path, default=None,
                     help="pairs: the tiny-flux folder to distill (default: the shipped illustrated_sd/assets/tiny-flux)")
    run.add_argument("--rank", type=checks.positive_int, default=None,
                     help=f"reflow: the rank r of each layer's correction B·A in a new student (default: {RANK})")
    run.add_argument("--init", type=Path, default=None,
                     help="reflow: start a new student from this tiny-flux-fast folder's correction (its rank ≤ --rank)")
    run.add_argument("--world", type=int, choices=(1, 2), default=None,
                     help="the world to learn: 1 (tiny-sd) or 2 (tiny-sd 2); default: the checkpoint's, or 1 for a new one")
    run.add_argument("--dataset-size", type=checks.positive_int, default=None,
                     help="unet, flux, ground: how many scenes to draw and encode once for the stage (default: the stage's own, "
                          "100,000 for the unet and flux, 50,000 for ground)")
    run.add_argument("--tune-t5", action="store_true",
                     help="flux: train T5's encoder with the transformer (the flow-matching loss teaches it which words belong "
                          "together, which span corruption on the world's captions cannot; see train/flux.py)")
    run.add_argument("--t5-consistency", type=checks.finite_float, default=0.0,
                     help="flux, with --tune-t5: weight of a term that keeps each colour word's T5 vector the same whichever "
                          "shape word follows it (train/flux.py's colour_consistency; default: %(default)s, off)")
    run.add_argument("--sigma-location", type=checks.finite_float, default=0.0,
                     help="flux: the centre of the logit-normal draw of σ (SD3's is 0); below 0 trains more at the lower "
                          "noise levels, where tiny-flux settles its held-out colours (default: %(default)s)")
    run.add_argument("--compile", action="store_true", help="unet, flux: torch.compile the UNet or the transformer (GPU; faster after a minute of compiling)")
    run.add_argument("--max-steps", type=checks.positive_int, default=None,
                     help="stop each stage after this many steps, if its --minutes do not end it first (the same steps on "
                          "any machine: minutes alone give a fast GPU many more)")
    run.add_argument("--smoke", action="store_true", help="a few tiny steps per stage on the CPU, to check the machinery")
    exp = sub.add_parser("export", help="write a diffusers pipeline folder from a checkpoint")
    exp.add_argument("checkpoint", type=Path)
    exp.add_argument("folder", type=Path)
    exp.add_argument("--force", action="store_true", help="replace FOLDER even if it holds other files (they are deleted)")
    imp = sub.add_parser("import", help="make a checkpoint from a pipeline folder, to train it further")
    imp.add_argument("folder", type=Path)
    imp.add_argument("checkpoint", type=Path)
    reb = sub.add_parser("rebase", help="move tiny-flux-fast's low-rank correction onto a retrained tiny-flux (train/distill.py)")
    reb.add_argument("old_base", type=Path, help="the tiny-flux folder the correction was made for (e.g. from git archive)")
    reb.add_argument("--fast", type=Path, default=TINY_FLUX_FAST, help="the tiny-flux-fast folder, rewritten in place (default: the shipped one)")
    reb.add_argument("--minutes", type=checks.positive_float, default=5.0, help="CPU minutes of matching (default: %(default)s)")
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    try:
        if args.command == "import":
            print(f"wrote {import_folder(args.folder, args.checkpoint)}")
        elif args.command == "rebase":
            log = rebase_correction(args.fast, args.old_base, args.minutes)
            print(f"rebased {args.fast}: the pictures' gap to the student it was (RMS, latents, 1/2/4 steps) "
                  f"{log['gap_before']} with the SVD alone, {log['gap_after']} after {log['total_steps']} steps")
        elif args.command == "export":
            print(f"wrote {export(args.checkpoint, args.folder, force=args.force)}")
        else:
            run_stages(args)
    except (ValueError, TypeError, OSError, ModelLoadError) as err:  # a user's mistake: one line; a bug keeps its traceback
        print(f"{parser.prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


def stage_plan(stages: str, minutes: str) -> list[tuple[str, float]]:
    """``"clip,vae"`` and ``"1.5,4"`` → ``[("clip", 1.5), ("vae", 4.0)]``, or ``ValueError`` saying what is wrong."""
    names = [s.strip() for s in stages.split(",")]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise ValueError(f"--stages: unknown stage(s) {unknown}; choose from {list(STAGES)}")
    budgets = []
    for m in minutes.split(","):
        try:
            budgets.append(checks.real_number("--minutes", float(m)))
        except ValueError:
            raise ValueError(f"--minutes: {m.strip()!r} is not a number of minutes; give one per stage, e.g. --minutes 1.5,4") from None
        if budgets[-1] <= 0:
            raise ValueError(f"--minutes: every stage needs a budget > 0 minutes (got {m.strip()})")
    if len(budgets) != len(names):
        raise ValueError(f"--minutes gives {len(budgets)} budget(s) for {len(names)} stage(s) ({','.join(names)}); give one per stage")
    return list(zip(names, budgets))


FAMILY = {"t5": "tiny-flux", "flux": "tiny-flux", "pairs": "tiny-flux-fast", "reflow": "tiny-flux-fast"}  # else tiny-sd


def checkpoint_family(ckpt: Path, stages: list[str]) -> str:
    """``"tiny-sd"``, ``"tiny-flux"`` or ``"tiny-flux-fast"``: which model ``stages`` train; ``ValueError`` if they mix
    models, or if the checkpoint already holds another (one checkpoint, one model)."""
    families = {FAMILY.get(stage, "tiny-sd") for stage in stages}
    done = {FAMILY.get(stage, "tiny-sd") for stage in read_log(ckpt) if stage in STAGES}
    if len(families | done) > 1:
        raise ValueError(f"--stages t5 and flux train tiny-flux, pairs and reflow tiny-flux-fast, the others tiny-sd; {ckpt} "
                         f"would hold {' and '.join(sorted(families | done))}: train each into its own --out folder")
    return families.pop()


def checkpoint_world(ckpt: Path, asked: int | None) -> int:
    """The world version a checkpoint learns: fixed by its first run (and written to its log), never mixed."""
    log = read_log(ckpt)
    if "world" in log or any(stage in log for stage in STAGES):
        world = log.get("world", 1)  # checkpoints from before version 2 learned version 1
        if asked not in (None, world):
            raise ValueError(f"{ckpt} learned the version-{world} world; a checkpoint learns one world: "
                             f"train --world {asked} into a new --out folder")
        return world
    world = asked or 1
    write_log(ckpt, {**log, "world": world})
    return world


def run_stages(args) -> None:
    plan = stage_plan(args.stages, args.minutes)
    if args.two_objects is not None and not 0 <= args.two_objects <= 1:
        raise ValueError(f"--two-objects is a share of scenes, in [0, 1] (got {args.two_objects:g})")
    for option in ("name_backgrounds", "name_all"):
        share = getattr(args, option)
        if share is not None and not 0 <= share <= 1:
            raise ValueError(f"--{option.replace('_', '-')} is a share of scenes, in [0, 1] (got {share:g})")
    for option in ("binding", "token_loss", "local", "clean", "clean_grey", "object_colour", "keep_generated", "t5_consistency"):
        if getattr(args, option) < 0:
            raise ValueError(f"--{option.replace('_', '-')} is a loss weight, ≥ 0 (got {getattr(args, option):g})")
    if args.token_loss and "flux" not in [stage for stage, _ in plan]:
        raise ValueError("--token-loss grounds tiny-flux's words: it needs --stages flux (the ground stage weighs its own token loss)")
    if args.sigma_location and "flux" not in [stage for stage, _ in plan]:
        raise ValueError("--sigma-location moves where tiny-flux's noise levels are drawn: it needs --stages flux")
    if args.tune_t5 and "flux" not in [stage for stage, _ in plan]:
        raise ValueError("--tune-t5 trains T5 with tiny-flux's transformer: it needs --stages flux (the t5 stage always trains T5)")
    if args.t5_consistency and not args.tune_t5:
        raise ValueError("--t5-consistency shapes the T5 that --tune-t5 trains: add --tune-t5")
    if args.local_teacher and not args.local:
        raise ValueError("--local-teacher chooses the targets of the --local term: add --local W (say 1)")
    if args.clean_grey and not args.clean:
        raise ValueError("--clean-grey weighs part of the --clean term: add --clean W (say 1)")
    if args.bank_size is not None and not args.keep_generated:
        raise ValueError("--bank-size chooses what --keep-generated keeps: add --keep-generated W (say 1)")
    if args.colour_reference is not None and not (args.keep_generated or args.local_teacher):
        raise ValueError("--colour-reference chooses the decoder whose pictures --keep-generated or --local-teacher hold to: "
                         "add --keep-generated W (say 1), or --local W --local-teacher")
    if args.colour_reference is not None and not (args.colour_reference / "vae" / "config.json").is_file():
        raise ValueError(f"--colour-reference {args.colour_reference} has no vae/config.json: pass an exported pipeline folder "
                         "(say illustrated_sd/assets/tiny-sd)")
    if args.out.exists() and not args.out.is_dir():
        raise ValueError(f"--out {args.out} is a file; the checkpoint is a folder: choose a new folder name")
    family = checkpoint_family(args.out, [stage for stage, _ in plan])
    world = checkpoint_world(args.out, args.world if family == "tiny-sd" else args.world or 2)
    if family != "tiny-sd" and world != 2:
        raise ValueError(f"tiny-flux learns the version-2 world (tiny-sd 2's latents); got --world {world}: pass --world 2")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if (args.rank or args.init) and "reflow" not in [stage for stage, _ in plan]:
        raise ValueError("--rank and --init shape a new tiny-flux-fast student: they need --stages reflow")
    if args.init is not None and correction_rank(args.init) > (args.rank or RANK):  # before the pairs' minutes are spent
        raise ValueError(f"--init {args.init} has a correction of rank {correction_rank(args.init)}: pass --rank "
                         f"{correction_rank(args.init)} or more")
    batch, max_steps = (4, args.max_steps or 3) if args.smoke else (args.batch_size, args.max_steps)
    for stage, budget in plan:
        extra = {"anneal": args.anneal} if stage in ("unet", "ground", "flux", "reflow") else {}
        extra["world"] = world
        if stage in ("unet", "flux"):
            extra["compile"] = args.compile
        if stage in ("unet", "flux", "ground") and args.dataset_size:
            extra["dataset_size"] = args.dataset_size
        if stage == "pairs":
            extra["teacher"] = args.teacher
        if stage == "reflow":
            extra.update(rank=args.rank, init=args.init)
        if stage == "decoder":
            extra.update(equal_objects=args.equal_objects, local=args.local, clean=args.clean, clean_grey=args.clean_grey,
                         object_colour=args.object_colour,
                         keep_generated=args.keep_generated, colour_reference=args.colour_reference, local_teacher=args.local_teacher,
                         bank_size=4 if args.smoke else args.bank_size or BANK)
        if stage in ("ground", "flux"):
            extra.update(binding=args.binding, two_objects=args.two_objects, name_backgrounds=args.name_backgrounds, name_all=args.name_all)
        if stage == "flux":
            extra.update(token_loss=args.token_loss, tune_t5=args.tune_t5, t5_consistency=args.t5_consistency,
                         sigma_location=args.sigma_location)
        if args.smoke and stage in ("unet", "ground", "flux"):
            extra["dataset_size"] = 12
        steps = STAGES[stage](args.out, budget, batch, device, args.seed, max_steps=max_steps, log_every=1 if args.smoke else 20, **extra)
        print(f"{stage}: {steps} steps on {device}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
