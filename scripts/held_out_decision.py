"""When does a model choose the colour of a held-out pair? Its x̂₀, step by step, read for the two colours it wavers between.

tiny-flux draws "an orange heart" (a pair training never drew) orange most of the time and yellow now and then, with
nothing in between: the objects it draws are either the world's orange or its yellow (``held_out_reading.py``). A
sampler fixes the picture's coarse content in its first, noisiest steps (notebook 05; notebook 11 for flow matching),
so this asks at which step the choice is made. Each held-out prompt asking for ``--colour`` is drawn as the held-out
grade draws it (``python -m illustrated_sd.evaluate --only held-out``: its prompts, seeds, steps and guidance); every
step's x̂₀ is decoded and the final object's pixels (the detector's mask on the final picture) are read as the
nearer of ``--colour`` and ``--against`` in the green channel, where the world's orange and yellow differ most
(135 against 210). A run's colour has *settled* after n steps when the x̂₀ of every later step reads as the finished
picture does (the picture read by the detector, as the grade reads it). When the outcome is fixed is not measured
here (that would take resampling from each step): only when the x̂₀ stops changing its reading.

    python scripts/held_out_decision.py [--model tiny-flux] [--colour orange] [--against yellow] [--seeds 9] [--seen circle] [--out docs/flux_candidates/held-out-decision.json]
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import illustrated_sd as isd
from illustrated_sd.evaluate import draw, prompt_group, prompt_set, world_of
from illustrated_sd.models.loading import model_defaults
from illustrated_sd.world import COLORS, HELD_OUT
from illustrated_sd.world.detect import detect


@torch.no_grad()
def decisions(model: str, colour: str, against: str, seeds: int, seen: str | None = None, prompts: int | None = None) -> dict:
    """Draw the held-out prompts asking for ``colour`` (the grade's seeds) and read each step's x̂₀ (see the module).

    Returns ``{"runs", "read_as_asked", "left_out", "share_matching_the_end" [S] (per step, the runs whose x̂₀
    already reads as their final picture), "median_green_by_step": {"asked", "other"} [S] (the object's green level in
    each step's x̂₀, the median over each group's runs), "decided_at": {"asked": [step, …], "other": [step, …]}, "steps"}``:
    ``decided_at`` counts the steps after which a run settled (see the module; 0: every x̂₀ read as the picture, S: not even
    the last); ``asked`` holds the runs whose picture the detector read as ``colour``, ``other`` those read as ``against``; runs whose
    object the detector did not find, or read in a third colour, are left out (``left_out`` counts them). ``seen``
    (a shape, say ``"circle"``) draws each prompt with its held-out shape word replaced by it, the same seeds: a pair
    training drew, for comparison. ``prompts`` keeps the first so many prompts."""
    pipe = isd.load_pipeline(model)
    defaults = model_defaults(model)
    world = world_of(pipe)
    all_cases = prompt_group(prompt_set(world=world), "held-out")
    cases = [(i, text if seen is None else text.replace(f" {objects[0][1]} ", f" {seen} ", 1))
             for i, (text, objects, _) in enumerate(all_cases) if objects[0][0] == colour][:prompts]
    if not cases:
        raise ValueError(f"no held-out prompt asks for {colour!r}: ask for one of the held-out pairs' colours "
                         f"({', '.join(sorted({c for c, _ in HELD_OUT}))})")
    midpoint = (COLORS[colour][1] + COLORS[against][1]) / 2  # the green level halfway between the two colours
    asked_is_greener = COLORS[colour][1] > COLORS[against][1]
    reads, greens, ended, others = [], [], [], 0
    for j in range(seeds):
        for i, text in cases:  # case i of the grade, drawn with the grade's seed
            # recorded as the grade records (its attention too): the pictures are the grade's to the last bit, which
            # matters here, where a run hovering between two colours can be tipped by a rounding difference
            trace = draw(pipe, text, defaults["steps"], defaults["guidance"], i + 10_000 * j)
            found = detect(trace.image, version=world)
            if not found or found[0].color not in (colour, against):
                others += 1  # drawn in a third colour, or not found: not a choice between the two
                continue
            mask = torch.from_numpy(found[0].mask)
            frames = pipe.decode_latents(trace.pred_x0)  # every step's x̂₀ as a picture
            green = np.array([np.asarray(f.convert("RGB"), dtype=float)[..., 1][mask.numpy()].mean() for f in frames])
            greens.append(green)
            reads.append((green > midpoint) == asked_is_greener)  # [S]: True where the x̂₀ reads as the asked colour
            ended.append(found[0].color == colour)  # the picture as the grade reads it (the detector)
    reads, final = np.array(reads), np.array(ended)  # [runs, S], [runs]
    matching = reads == final[:, None]  # [runs, S]: the x̂₀ already reads as the finished picture does
    # settled after n steps: the x̂₀ of step n + 1 and every later one read as the picture (n = S: not even the last)
    decided = [0 if row.all() else len(row) if not row[-1] else int(len(row) - np.argmin(row[::-1])) for row in matching]
    return {"model": model, "colour": colour, "against": against, "seeds": seeds, "seen_shape": seen, "steps": int(reads.shape[1]),
            "prompts": [text for _, text in cases], "runs": int(len(reads)), "read_as_asked": int(final.sum()), "left_out": others,
            "share_matching_the_end": [round(float(x), 3) for x in matching.mean(0)],
            "median_green_by_step": {"asked": [round(float(g)) for g in np.median(np.array(greens)[final], 0)] if final.any() else None,
                                     "other": [round(float(g)) for g in np.median(np.array(greens)[~final], 0)] if (~final).any() else None},
            "decided_at": {"asked": [d for d, f in zip(decided, final) if f], "other": [d for d, f in zip(decided, final) if not f]}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-flux")
    parser.add_argument("--colour", default="orange", help="the held-out pairs' colour to follow (default: %(default)s)")
    parser.add_argument("--against", default="yellow", help="the colour it is drawn as instead (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=9)
    parser.add_argument("--seen", default=None, metavar="SHAPE", help="draw the prompts with their held-out shape replaced by SHAPE (a seen pair)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for name in (args.colour, args.against):
        if name not in COLORS:
            parser.error(f"{name!r} is not one of the world's colours ({', '.join(COLORS)})")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    result = decisions(args.model, args.colour, args.against, args.seeds, args.seen)
    print(json.dumps({k: v for k, v in result.items() if k not in ("share_matching_the_end", "median_green_by_step")}))
    for group, levels in result["median_green_by_step"].items():
        print(f"median green level of the object's pixels by step, runs ending {group}:", levels)
    print("share of runs whose x̂₀ already reads as their picture, by step:", result["share_matching_the_end"])
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
