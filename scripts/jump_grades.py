"""How far can tiny-flux jump? The teacher (tiny-flux, real guidance, two passes a step) against its reflow student
(tiny-flux-fast, the guidance an input, one pass) on the held-out prompts and the pairs, at 1, 2, 4 and 25 steps
(issue 33), written as JSON (docs/jump.json):

- **adherence**: colour, shape and place of each named object as the world's detector reads it (``evaluate``'s
  grading), every prompt drawn with ``--seeds`` seeds;
- **diversity**: how different one prompt's pictures are across those seeds (``evaluate.diversity``, mean RMS pixel
  distance, 0–1): what a model that jumps may give up;
- **straightness** of the path from noise to picture at 25 steps: the straight distance from start to end over the
  length walked, ``|x_end − x_start| / Σ |x_{k+1} − x_k|`` (1: a straight line; reflow's promise).

    python scripts/jump_grades.py --seeds 3 --out docs/jump.json               # the CPU: about 10 minutes
    python scripts/jump_grades.py --seeds 3 --device cuda --out docs/jump.json
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import illustrated_sd as isd
from illustrated_sd import checks
from illustrated_sd.evaluate import adherence, diversity, draw, match_object, prompt_group, prompt_set, world_of
from illustrated_sd.trace.files import atomic_write
from illustrated_sd.lessons.flow_matching import straightness
from illustrated_sd.models.loading import model_defaults, weights_sha256
from illustrated_sd.world.detect import detect


def grade(pipe, cases, steps: int, guidance: float, seeds: int, seed: int = 0) -> dict:
    """Every case drawn ``seeds`` times (seed ``seed + i + 10_000·j``, as ``evaluate`` draws): the share of objects read
    with the right colour, shape and place, of pictures with every object right (``evaluate.adherence``), and the mean
    diversity of a prompt's pictures."""
    world = world_of(pipe)
    right = {"color": [], "shape": [], "position": []}
    whole, spread = [], []
    for i, (text, objects, _) in enumerate(tqdm(cases, desc=f"{pipe.name}, {steps} steps", leave=False)):
        images = []
        for j in range(seeds):
            image = draw(pipe, text, steps, guidance, seed + i + 10_000 * j).image
            found = detect(image, version=world)
            for color, shape, position in objects:
                d = match_object(found, position, len(objects), world)
                for key, want in (("color", color), ("shape", shape), ("position", position)):
                    right[key].append(d is not None and getattr(d, key) == want)
            whole.append(adherence(found, objects, world)[0])
            images.append(image)
        spread.append(diversity(images))
    return {**{key: round(float(np.mean(v)), 4) for key, v in right.items()}, "all_right": round(float(np.mean(whole)), 4),
            "diversity": round(float(np.mean(spread)), 4), "pictures": len(whole)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny-flux,tiny-flux-fast", help="names or folders, comma-separated (default: %(default)s)")
    parser.add_argument("--groups", default="held-out,pairs", help="prompt groups (default: %(default)s)")
    parser.add_argument("--steps", type=lambda text: [checks.positive_int(k) for k in text.split(",")], default=[1, 2, 4, 25],
                        help="step counts for both models, comma-separated (default: 1,2,4,25)")
    parser.add_argument("--seeds", type=checks.positive_int, default=3, help="pictures per prompt (default: %(default)s)")
    parser.add_argument("--limit", type=checks.positive_int, default=None, help="the first N prompts of each group (a quick check)")
    parser.add_argument("--paths", type=checks.positive_int, default=12, help="prompts whose 25-step paths are measured (default: %(default)s)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("docs/jump.json"))
    args = parser.parse_args(argv)
    steps = args.steps
    torch.manual_seed(0)
    everything = prompt_set(world=2)
    groups = {name: prompt_group(everything, name)[: args.limit] for name in args.groups.split(",")}
    result = {"settings": {"steps": steps, "seeds": args.seeds, "device": str(args.device), "prompts": {k: len(v) for k, v in groups.items()}},
              "weights_sha256": {name: weights_sha256(name) for name in args.models.split(",")}}  # which weights were graded
    start = time.time()
    for name in args.models.split(","):
        pipe = isd.load_pipeline(name, device=args.device)
        guidance = model_defaults(name)["guidance"]
        result[name] = {"guidance": guidance, "passes_per_step": 1 if pipe.transformer.config.guidance_embeds else 2}
        for group, cases in groups.items():
            result[name][group] = {str(k): grade(pipe, cases, k, guidance, args.seeds) for k in steps}
        paths = next(iter(groups.values()))[: args.paths]
        result[name]["straightness_25_steps"] = round(float(np.median(
            [straightness(draw(pipe, text, 25, guidance, i).latents) for i, (text, _, _) in enumerate(paths)])), 4)
    result["seconds"] = round(time.time() - start, 1)
    with atomic_write(args.out, "grades") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
