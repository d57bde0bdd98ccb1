"""python -m illustrated_sd.train run|export … (see ``illustrated_sd.train``)."""

import argparse
import sys
from pathlib import Path

import torch

from .export import export, import_folder
from .decoder import train_decoder
from .grounding import train_grounding
from .stages import train_clip, train_unet, train_vae

# "ground" and "decoder" are optional: "ground" fine-tunes a trained UNet so that each object's words are
# looked at on the object; "decoder" sharpens the VAE's decoder while its encoder (and so the UNet) stays valid
STAGES = {"clip": train_clip, "vae": train_vae, "unet": train_unet, "ground": train_grounding, "decoder": train_decoder}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m illustrated_sd.train", description="Train the embedded tiny Stable Diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train stages for a time budget each, resuming from --out")
    run.add_argument("--stages", default="clip,vae,unet", help="comma-separated, in order (default: %(default)s)")
    run.add_argument("--minutes", default="1.5,4,3.5", help="time budget per stage, comma-separated (default: %(default)s)")
    run.add_argument("--out", type=Path, required=True, help="checkpoint folder (created, or resumed from)")
    run.add_argument("--batch-size", type=int, default=256)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--anneal", action="store_true", help="unet: let the learning rate fall over the second half of the budget (the last run)")
    run.add_argument("--binding", type=float, default=0.0, help="ground: weight of the binding loss (default: %(default)s, off)")
    run.add_argument("--two-objects", type=float, default=0.3, help="ground: share of two-object scenes (default: %(default)s)")
    run.add_argument("--smoke", action="store_true", help="a few tiny steps per stage on the CPU, to check the machinery")
    exp = sub.add_parser("export", help="write a diffusers pipeline folder from a checkpoint")
    exp.add_argument("checkpoint", type=Path)
    exp.add_argument("folder", type=Path)
    imp = sub.add_parser("import", help="make a checkpoint from a pipeline folder, to train it further")
    imp.add_argument("folder", type=Path)
    imp.add_argument("checkpoint", type=Path)
    args = parser.parse_args(argv)

    if args.command == "import":
        print(f"wrote {import_folder(args.folder, args.checkpoint)}")
        return 0
    if args.command == "export":
        print(f"wrote {export(args.checkpoint, args.folder)}")
        return 0
    stages = args.stages.split(",")
    minutes = [float(m) for m in args.minutes.split(",")]
    if len(minutes) != len(stages) or any(s not in STAGES for s in stages):
        parser.error(f"--stages takes names from {list(STAGES)} and --minutes one number per stage")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    batch, max_steps = (4, 3) if args.smoke else (args.batch_size, None)
    for stage, budget in zip(stages, minutes):
        extra = {"anneal": args.anneal} if stage in ("unet", "ground") else {}
        if stage == "ground":
            extra.update(binding=args.binding, two_objects=args.two_objects)
        if args.smoke and stage in ("unet", "ground"):
            extra["dataset_size"] = 12
        steps = STAGES[stage](args.out, budget, batch, device, args.seed, max_steps=max_steps, log_every=1 if args.smoke else 20, **extra)
        print(f"{stage}: {steps} steps on {device}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
