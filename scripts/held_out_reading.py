"""What a model draws instead of a held-out colour+shape pair, and how much of the miss is the decoder's.

The held-out grade (``python -m illustrated_sd.evaluate --only held-out``) says right or wrong; this says what the
detector read where the object should be. Two readings of the four pairs training never drew together:

- **drawn**: the held-out prompts, drawn and graded as the evaluator does (its prompts and seeds), tallied by what
  was read (``{"orange heart": {"orange heart": n, "yellow heart": m, …}}``);
- **round trip**: rendered pictures of the same pairs, encoded and decoded by the model's VAE with no denoiser at
  all: what the decoder returns of a latent its encoder made (a reference, not a ceiling: a denoiser's latents are
  not the encoder's). Beside it, the same reading of the rendered **originals**: what the detector itself misreads
  is not the decoder's.

    python scripts/held_out_reading.py [--model tiny-flux] [--seeds 3] [--prompts N] [--scenes 96] [--out docs/held_out_reading.json]
"""

import argparse
import collections
import json
from pathlib import Path

import torch

import illustrated_sd as isd
from illustrated_sd.evaluate import evaluate, model_defaults, objects_read, prompt_group, prompt_set, round_trip, world_of
from illustrated_sd.world import HELD_OUT, render, sample_scenes


def tally(pairs) -> dict:
    """``[(asked "colour shape", read "colour shape" or None), …]`` → ``{asked: {read: count}}``, most read first."""
    counts = collections.defaultdict(collections.Counter)
    for asked, read in pairs:
        counts[asked][read or "nothing"] += 1
    return {asked: dict(c.most_common()) for asked, c in sorted(counts.items())}


@torch.no_grad()
def drawn(pipe, model: str, seeds: int, prompts: int | None = None) -> dict:
    """The evaluator's held-out grade, read out: what was drawn for each held-out pair (its prompts, seeds, and the
    model's own steps and guidance)."""
    cases = prompt_group(prompt_set(world=world_of(pipe)), "held-out")[:prompts]
    defaults = model_defaults(model)
    rows = evaluate(pipe, cases, steps=defaults["steps"], guidance=defaults["guidance"], seeds=seeds)["cases"]
    asked = {text: objects[0] for text, objects, _ in cases}  # held-out prompts name one object each, and are unique
    pairs = []
    for row in rows:
        color, shape, _ = asked[row["prompt"]]
        read = row["objects"][0]["read"]
        pairs.append((f"{color} {shape}", read and " ".join(read)))
    return tally(pairs)


@torch.no_grad()
def decoded(pipe, n: int) -> tuple[dict, dict]:
    """Rendered held-out scenes (one object each), read by the detector as rendered and after a VAE round trip:
    ``(originals, round_trip)``, each a :func:`tally`."""
    world = world_of(pipe)
    scenes = sample_scenes([2026, 12, 6], n, held_out=True, n_objects=1, version=world)
    images, _ = render(scenes)
    originals, returned = [], []
    for start in range(0, n, 32):
        batch, pictures = scenes[start:start + 32], images[start:start + 32].to(pipe.device)
        for found, pictures_read in ((originals, pictures.float()), (returned, round_trip(pipe.vae, pictures))):
            found += [(f"{obj.color} {obj.shape}", d and f"{d.color} {d.shape}") for obj, d in objects_read(batch, pictures_read, world)]
    return tally(originals), tally(returned)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-flux", help="an embedded model's name or a pipeline folder")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per held-out prompt (the evaluator's default: 3)")
    parser.add_argument("--prompts", type=int, default=None, help="the first N held-out prompts only (default: all 36)")
    parser.add_argument("--scenes", type=int, default=96, help="rendered held-out scenes to round-trip through the VAE")
    parser.add_argument("--out", type=Path, default=Path("docs/held_out_reading.json"))
    args = parser.parse_args(argv)
    pipe = isd.load_pipeline(args.model)
    originals, returned = decoded(pipe, args.scenes)
    result = {"written_by": "scripts/held_out_reading.py", "model": pipe.name, "held_out": [" ".join(p) for p in HELD_OUT],
              "torch_threads": torch.get_num_threads(), "drawn": drawn(pipe, args.model, args.seeds, args.prompts), "seeds": args.seeds,
              "originals": originals, "round_trip": returned, "scenes": args.scenes}
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("drawn", "originals", "round_trip")}, indent=1))
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
