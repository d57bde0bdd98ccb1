"""tiny-sd 2 (a UNet, ε-prediction, DDIM) against tiny-flux (a transformer, flow matching, Euler) on the same world,
prompts and seeds: the side-by-side measurements of issue 32, written as JSON (docs/denoisers.json).

1. **few steps**: at 2, 4, 8 and 25 steps, the share of single-object prompts drawn as asked (colour, shape and place
   of the named object, by the world's detector) and the final picture's sharpness (``evaluate.sharpness``, the
   Laplacian's variance), each model at its own guidance;
2. **binding**: pair prompts ("a red heart on the left and a blue star on the right"): both objects right, and
   *colour leakage*, an object drawn in the colour the prompt gave the other one (notebooks 01 and 04b teach CLIP's
   causal leak; tiny-flux reads the prompt with a bidirectional T5);
3. **the first x̂₀**: how sharp the decoded x̂₀ is along the way, against the final picture (``evaluate.x0_sharpness``).

    python scripts/compare_denoisers.py --prompts 40 --out docs/denoisers.json
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import illustrated_sd as isd
from illustrated_sd.evaluate import adherence, draw, match_object, prompt_group, prompt_set, sharpness, x0_sharpness
from illustrated_sd.models.loading import model_defaults
from illustrated_sd.world.detect import detect


def spread(cases, n: int):
    """``n`` cases spread evenly over ``cases`` (every k-th), so they cover the colours, shapes and places."""
    return cases[:: max(1, len(cases) // n)][:n]


def few_steps(pipe, cases, step_counts, guidance: float, seed: int) -> dict:
    """``{steps: {"adherence": share, "sharpness": mean}}`` over single-object ``cases``, case i drawn with seed + i."""
    out = {}
    for steps in step_counts:
        right, sharp = [], []
        for i, (text, objects, _) in enumerate(cases):
            trace = draw(pipe, text, steps, guidance, seed + i)
            right.append(adherence(detect(trace.image, version=2), objects, 2)[0])
            sharp.append(sharpness(trace.image))
        out[str(steps)] = {"adherence": round(float(np.mean(right)), 4), "sharpness": round(float(np.mean(sharp)), 1)}
    return out


def binding(pipe, cases, steps: int, guidance: float, seed: int) -> dict:
    """Pair ``cases``: both objects right, and colour leakage (either object in the other's named colour)."""
    both, leaked = [], []
    for i, (text, objects, _) in enumerate(cases):
        found = detect(draw(pipe, text, steps, guidance, seed + i).image, version=2)
        both.append(adherence(found, objects, 2)[0])
        (c1, _, p1), (c2, _, p2) = objects
        d1, d2 = match_object(found, p1, 2, 2), match_object(found, p2, 2, 2)
        leaked.append(c1 != c2 and ((d1 is not None and d1.color == c2) or (d2 is not None and d2.color == c1)))
    return {"both_right": round(float(np.mean(both)), 4), "colour_leakage": round(float(np.mean(leaked)), 4), "prompts": len(cases)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny-sd,tiny-flux", help="two or more models: embedded names or folders")
    parser.add_argument("--prompts", type=int, default=40, help="single-object prompts, and as many pair prompts")
    parser.add_argument("--steps", default="2,4,8,25", help="the step counts of the few-steps comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/denoisers.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cases = prompt_set(world=2)
    singles, pairs = spread(prompt_group(cases, "single"), args.prompts), spread(prompt_group(cases, "pairs"), args.prompts)
    step_counts = [int(s) for s in args.steps.split(",")]
    result = {"written_by": "scripts/compare_denoisers.py", "prompts": args.prompts, "seed": args.seed, "steps": step_counts,
              "torch_threads": torch.get_num_threads(), "models": {}}
    for name in args.models.split(","):
        started = time.time()
        pipe = isd.load_pipeline(name)
        defaults = model_defaults(name)
        guidance, steps = defaults["guidance"], defaults["steps"]
        result["models"][name] = {
            "pipeline": repr(pipe), "guidance": guidance, "default_steps": steps,
            "few_steps": few_steps(pipe, singles, step_counts, guidance, args.seed),
            "binding": binding(pipe, pairs, steps, guidance, args.seed),
            "first_x0": x0_sharpness(pipe, singles, steps=steps, guidance=guidance, seed=args.seed, every=max(1, steps // 6)),
            "seconds": round(time.time() - started, 1)}
        print(name, json.dumps(result["models"][name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
