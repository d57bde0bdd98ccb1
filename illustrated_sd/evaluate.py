"""Grade a model of the world: generate from prompts whose truth we know, and check the pictures.

    python -m illustrated_sd.evaluate --out docs/evaluation.json          # the embedded default model, ~9 CPU minutes
    python -m illustrated_sd.evaluate --only pairs --seeds 1               # a quick look at one group

Every prompt is drawn with 3 seeds by default: with one picture per prompt, a group of 40 prompts
moves by 2.5 points per picture, and a model can pass or miss a target by luck.

Reports, over prompts in the world's plainest sentence forms:
- single objects ("a red circle on the left"): colour, shape and position accuracy;
- two objects ("a red circle on the left and a blue star on the right"): both objects right;
- the held-out colour+shape pairs, never seen in training, separately;
- the pointing game: for each object's colour and shape word, does the argmax of its cross-attention
  heatmap (all steps, all layers) fall inside that object's detected mask? For a diffusion transformer, the same
  game is played by the word's own reading of the picture too (text→image attention: ``pointing_game_text_to_image``).
"""

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import checks
from .cli import OneLineParser, one_line, parse
from .trace.files import atomic_write, check_replaceable, check_writable_folder
from .plot.heatmaps import heatmap_iou, points_inside
from .models.loading import ModelLoadError, load_pipeline, model_defaults
from .world import COLORS, HELD_OUT, POSITIONS, SHAPES, SHAPES_2, as_uint8
from .world.detect import detect
from .world.vocabulary import PAIRS, POSITION_PHRASES


def prompt_set(seed: int = 0, single_positions: int = 3, pairs: int = 40, world: int = 1):
    """The evaluation prompts: ``(prompt, [(color, shape, position), …], held_out)``; ``world=2`` uses its nine shapes."""
    rng = np.random.default_rng(seed)
    combos = [(c, s) for c in COLORS for s in (SHAPES_2 if world == 2 else SHAPES)]
    seen = [cs for cs in combos if cs not in HELD_OUT]
    cases = []
    for color, shape in seen:
        for position in rng.choice(list(POSITIONS), size=single_positions, replace=False):
            cases.append((f"a {color} {shape} {POSITION_PHRASES[position][0]}", [(color, shape, position)], False))
    for color, shape in HELD_OUT:
        for position in POSITIONS:
            cases.append((f"a {color} {shape} {POSITION_PHRASES[position][0]}", [(color, shape, position)], True))
    for _ in range(pairs):
        (c1, s1), (c2, s2) = (seen[i] for i in rng.choice(len(seen), size=2, replace=False))
        p1, p2 = PAIRS[rng.integers(len(PAIRS))]
        text = f"a {c1} {s1} {POSITION_PHRASES[p1][0]} and a {c2} {s2} {POSITION_PHRASES[p2][0]}"
        cases.append((text, [(c1, s1, p1), (c2, s2, p2)], False))
    return [(text.replace("a o", "an o"), objects, held) for text, objects, held in cases]


GROUPS = {"single": lambda case: len(case[1]) == 1 and not case[2], "held-out": lambda case: case[2],
          "pairs": lambda case: len(case[1]) == 2}


def prompt_group(cases, group: str):
    """The cases of one group: ``"single"`` (seen colour+shape pairs), ``"held-out"`` or ``"pairs"``."""
    if group not in GROUPS:
        raise ValueError(f"unknown prompt group {group!r}; choose from {list(GROUPS)}")
    return [case for case in cases if GROUPS[group](case)]


def match_object(detections, position: str, n_objects: int, world: int = 1):
    """The detection that stands for the object meant to be at ``position``: with one object in world 1,
    the largest found; otherwise the one nearest the named position (``None`` if nothing was found).
    (World 2's pictures may hold objects the prompt does not name, so size says nothing there.)"""
    if not detections:
        return None
    if n_objects == 1 and world == 1:
        return detections[0]
    cx, cy = POSITIONS[position]
    return min(detections, key=lambda d: (d.center[0] - cx) ** 2 + (d.center[1] - cy) ** 2)


def world_of(pipe) -> int:
    """The version of the synthetic world ``pipe``'s model learned (1 for models that do not say)."""
    return getattr(pipe, "world", None) or 1


def draw(pipe, prompt: str, steps: int, guidance: float, seed: int, **options):
    """One traced generation of ``prompt`` with ``guidance`` as the model's guidance scale s (``pipe.guidance_option``:
    tiny-flux's is real CFG, ``true_cfg_scale``). ``options`` go to the call (``edits``, ``record``)."""
    return pipe(prompt, num_inference_steps=steps, seed=seed, progress=False, **pipe.guidance_option(guidance), **options)


def evaluate(pipe, cases, steps: int = 25, guidance: float = 7.5, seed: int = 0, examples_dir: Path | None = None,
             seeds: int = 1) -> dict:
    """Generate each case and grade it; returns the summary figures and every case's result.

    Case ``i`` is drawn with seed ``seed + i``; with ``seeds`` = k > 1 every case is drawn k times (seeds
    ``seed + i + 10_000·j``), so that the figures rest on k× as many pictures. Pictures are read with the
    detector of the world the model learned (:func:`world_of`).

    Returns:
        ``{"summary": {figure: rate}, "settings": {…}, "cases": rows}``. ``rows`` holds every case for the first seed,
        then every case again for the next; each row is ``{"prompt", "held_out", "seed", "objects"}``, one entry per
        object asked: ``color``, ``shape``, ``position`` (read right?), ``read`` (``[colour, shape]`` the detector
        read where the object should be, or ``None``), ``points`` (does each word's image→text map point inside it)
        and, for a diffusion transformer, ``reads`` (the same for the word's text→image map).
    """
    world = world_of(pipe)
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    rows = []
    draws = [(i, j) for j in range(seeds) for i in range(len(cases))]
    for i, j in tqdm(draws, desc="evaluating", unit="prompt"):
        text, objects, held_out = cases[i]
        trace = draw(pipe, text, steps, guidance, seed + i + 10_000 * j)
        found = detect(trace.image, version=world)
        row = {"prompt": text, "held_out": held_out, "seed": seed + i + 10_000 * j, "objects": []}
        for color, shape, position in objects:
            d = match_object(found, position, len(objects), world)
            row["objects"].append({
                "color": d is not None and d.color == color,
                "shape": d is not None and d.shape == shape,
                "position": d is not None and d.position == position,
                "read": None if d is None else [d.color, d.shape],  # what the detector saw there: a wrong grade's why
                "points": {w: d is not None and points_inside(trace.cross_attention(w), d.mask) for w in (color, shape)},
                **({"reads": {w: d is not None and points_inside(trace.text_to_image(w), d.mask) for w in (color, shape)}}
                   if reads_the_picture(trace) else {}),
            })
        rows.append(row)
        if examples_dir is not None and i % 10 == 0 and j == 0:
            with atomic_write(Path(examples_dir) / f"{i:03d}.png", "example image") as tmp:
                trace.image.save(tmp, format="png")

    def rate(values):
        values = list(values)
        return round(float(np.mean(values)), 4) if values else None

    single = [r for r in rows if len(r["objects"]) == 1 and not r["held_out"]]
    held = [r for r in rows if r["held_out"]]
    pairs = [r for r in rows if len(r["objects"]) == 2]
    summary = {}
    for name, group in (("single", single), ("held_out", held)):
        for key in ("color", "shape", "position"):
            summary[f"{name}_{key}_accuracy"] = rate(r["objects"][0][key] for r in group)
        summary[f"{name}_prompts"] = len(group)
    summary["pair_both_right"] = rate(all(o["color"] and o["shape"] for o in r["objects"]) for r in pairs)
    summary["pair_prompts"] = len(pairs)
    summary["pointing_game"] = rate(p for r in rows if not r["held_out"] for o in r["objects"] for p in o["points"].values())
    summary["pointing_game_held_out"] = rate(p for r in held for o in r["objects"] for p in o["points"].values())
    for kind, words in (("color", COLORS), ("shape", SHAPES_2 if world == 2 else SHAPES)):  # which words find their object
        summary[f"pointing_game_{kind}_words"] = rate(p for r in rows if not r["held_out"] for o in r["objects"]
                                                      for w, p in o["points"].items() if w in words)
    if any("reads" in o for r in rows for o in r["objects"]):  # a diffusion transformer: where each word reads the picture
        summary["pointing_game_text_to_image"] = rate(p for r in rows if not r["held_out"] for o in r["objects"]
                                                      for p in o["reads"].values())
    return {"summary": summary, "settings": {"steps": steps, "guidance": guidance, "seed": seed, "seeds": seeds, "model": pipe.name,
                                             "scheduler": type(pipe.scheduler).__name__, "world": world}, "cases": rows}


# ---- the phenomena the course shows: guidance, the blurry first x̂₀, samplers -------------------------------

def adherence(found, objects, world: int) -> tuple[bool, int]:
    """Whether every named ``(color, shape, position)`` object is in the picture as named, and how many
    detected objects the prompt did not name (each named object claims the detection nearest its place)."""
    claimed, right = set(), True
    for color, shape, position in objects:
        d = match_object(found, position, len(objects), world)
        right &= d is not None and (d.color, d.shape, d.position) == (color, shape, position)
        if d is not None:
            claimed.add(id(d))
    return right, sum(id(d) not in claimed for d in found)


def diversity(images) -> float:
    """How different pictures of one prompt are: the mean RMS pixel distance (in [0, 1]) over all pairs."""
    x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255) for im in images])
    pairs = [(a, b) for a in range(len(x)) for b in range(a + 1, len(x))]
    return float(np.mean([((x[a] - x[b]) ** 2).mean().sqrt().item() for a, b in pairs])) if pairs else 0.0


def sharpness(image) -> float:
    """The variance of the image's Laplacian (grey levels 0–255): high for crisp edges, low for a blur."""
    grey = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32))[None, None]
    kernel = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32)[None, None]
    return float(F.conv2d(grey, kernel).var())


def guidance_curve(pipe, cases, scales=(0.0, 1.0, 2.0, 4.0, 7.5, 12.0, 20.0), seeds: int = 3, steps: int = 25, seed: int = 0) -> dict:
    """Prompt adherence, unmentioned objects and diversity across seeds at each guidance scale.

    Scale 0 is the unconditional model alone (ε̂ = ε_u): how often the named objects appear by chance.

    Returns ``{scale: {"adherence", "unmentioned_objects", "diversity"}}``: the share of pictures with every
    named object right, the mean number of objects the prompt did not name, and :func:`diversity` of a
    prompt's ``seeds`` pictures (mean over prompts). Case ``i`` uses seeds ``seed + i + 10_000·j``.
    """
    world, curve = world_of(pipe), {}
    for scale in tqdm(scales, desc="guidance scales"):
        right, extra, spread = [], [], []
        for i, (text, objects, _) in enumerate(cases):
            images = []
            for j in range(seeds):
                trace = draw(pipe, text, steps, scale, seed + i + 10_000 * j)
                ok, unnamed = adherence(detect(trace.image, version=world), objects, world)
                right.append(ok)
                extra.append(unnamed)
                images.append(trace.image)
            spread.append(diversity(images))
        curve[float(scale)] = {"adherence": round(float(np.mean(right)), 4), "unmentioned_objects": round(float(np.mean(extra)), 3),
                               "diversity": round(float(np.mean(spread)), 4)}
    return curve


def x0_sharpness(pipe, cases, steps: int = 25, guidance: float = 7.5, seed: int = 0, every: int = 4) -> dict:
    """How sharp the decoded predicted x̂₀ is along the way, against the final image (:func:`sharpness`).

    Returns the median over prompts of ``sharpness(x̂₀ at step k) / sharpness(final image)`` for
    ``k = 0, every, 2·every, …``: below 1 means blurrier than the result.
    """
    ratios = []
    for i, (text, _, _) in enumerate(tqdm(cases, desc="x̂₀ sharpness")):
        trace = draw(pipe, text, steps, guidance, seed + i)
        chosen = list(range(0, trace.num_steps, every))
        final = sharpness(trace.image)
        ratios.append([sharpness(im) / final for im in pipe.decode_latents(trace.pred_x0[chosen])])
    chosen = list(range(0, steps, every))
    return {"steps": chosen, "median_ratio": [round(float(np.median([r[k] for r in ratios])), 3) for k in range(len(chosen))],
            "prompts": len(cases)}


def sampler_agreement(pipe, cases, samplers=("ddim", "euler", "dpm++", "euler_ancestral"), steps: int = 25, guidance: float = 7.5,
                      seed: int = 0) -> dict:
    """Do samplers, from the same seed, draw the same named objects in the same places, and how much do
    their pictures differ otherwise?

    Returns ``agreement`` (share of prompts and samplers whose detected named objects — colour, shape,
    position — equal the first sampler's) and ``mean_pixel_difference`` (mean |Δ| in grey levels 0–255
    against the first sampler's picture), overall and per sampler. The pipeline's sampler is restored.
    """
    world, before = world_of(pipe), pipe.scheduler
    readings, images = {}, {}
    try:
        for name in samplers:
            pipe.set_scheduler(name)
            for i, (text, objects, _) in enumerate(tqdm(cases, desc=name)):
                trace = draw(pipe, text, steps, guidance, seed + i)
                found = detect(trace.image, version=world)
                readings[name, i] = [(d.color, d.shape, d.position) if (d := match_object(found, p, len(objects), world)) else None
                                     for _, _, p in objects]
                images[name, i] = np.asarray(trace.image.convert("RGB"), dtype=np.float32)
    finally:
        pipe.pipeline.scheduler = before
    first, result = samplers[0], {}
    for name in samplers[1:]:
        result[name] = {"agreement": round(float(np.mean([readings[name, i] == readings[first, i] for i in range(len(cases))])), 4),
                        "mean_pixel_difference": round(float(np.mean([np.abs(images[name, i] - images[first, i]).mean()
                                                                      for i in range(len(cases))])), 2)}
    return {"reference": first, "agreement": round(float(np.mean([r["agreement"] for r in result.values()])), 4),
            "mean_pixel_difference": round(float(np.mean([r["mean_pixel_difference"] for r in result.values()])), 2),
            "samplers": result, "prompts": len(cases)}


# ---- interventions (issue 17): what taking a word out does, and whether its heatmap foretold it ---------------

def intervention_effects(pipe, cases, steps: int = 25, guidance: float = 7.5, seed: int = 0, top: float = 0.1) -> dict:
    """Take words out of single-object prompts and read what changes (:mod:`illustrated_sd.recording.edits`).

    For each case ``(prompt, [(colour, shape, position)], held_out)`` (drawn with seed ``seed + i``): the plain
    picture; the colour, the shape and the place removed (``Remove``); the colour's slot only silenced
    (``Reweight`` 0, prompt-to-prompt's way); the article ("a" or "an") removed; and the shape swapped for the next
    world shape with the plain picture's maps injected (``Swap``, per-head source), beside the same prompt and
    seed without the swap. Then, without guidance (scale 1, where the model follows its prompt least), the plain
    picture beside the colour's attention doubled (``Reweight(colour, 2)``).

    Returns the shares of pictures with the named colour (plain / colour removed / colour silenced; unguided plain /
    doubled), the object
    at the named place (plain / place removed), the named shape (plain / shape removed), swaps whose object centre
    stays within one latent pixel of the plain picture's (swapped / same seed, no swap), and per word class
    (colour, shape, position, function) the mean correlation and IoU (top ``top`` of pixels) of the causal map
    with the word's heatmap (:func:`illustrated_sd.lessons.causal.agreement`). ``"held_out"`` repeats the shares over the
    held-out cases alone (colour+shape pairs training never showed).
    """
    from .lessons.causal import causal_map
    from .recording.edits import Reweight, Swap
    from .recording.recorders import RecordOptions

    world, shapes = world_of(pipe), (SHAPES_2 if world_of(pipe) == 2 else SHAPES)
    counts = {k: [] for k in ("colour_plain", "colour_removed", "colour_silenced", "place_plain", "place_removed",
                              "shape_plain", "shape_removed", "swap_kept", "same_seed_kept", "swap_shape",
                              "colour_unguided", "colour_doubled")}
    classes = {"colour": [], "shape": [], "position": [], "function": []}
    held = [held_out for _, _, held_out in cases]
    for i, (text, objects, _) in enumerate(tqdm(cases, desc="interventions")):
        color, shape, position = objects[0]
        run = lambda prompt=text, scale=guidance, **kw: draw(pipe, prompt, steps, scale, seed + i, **kw)  # noqa: E731
        read = lambda trace: match_object(detect(trace.image, version=world), position, 1, world)  # noqa: E731
        base = run(record=RecordOptions(per_head=True))
        plain = read(base)
        counts["colour_plain"].append(plain is not None and plain.color == color)
        counts["place_plain"].append(plain is not None and plain.position == position)
        counts["shape_plain"].append(plain is not None and plain.shape == shape)
        edited = {}
        article = text.split()[0]  # "a" or "an": a word that names nothing in the picture
        for cls, word in (("colour", color), ("shape", shape), ("position", position), ("function", article)):
            result = causal_map(pipe, text, word, top=top, base=base, num_inference_steps=steps, guidance_scale=guidance, seed=seed + i)
            edited[cls] = result.edited
            classes[cls].append((result.correlation, result.iou))
        d = read(edited["colour"])
        counts["colour_removed"].append(d is not None and d.color == color)
        d = read(edited["shape"])
        counts["shape_removed"].append(d is not None and d.shape == shape)
        found = detect(edited["position"].image, version=world)
        counts["place_removed"].append(any(f.position == position and f.color == color for f in found))
        d = read(run(edits=[Reweight(color, 0.0)]))
        counts["colour_silenced"].append(d is not None and d.color == color)
        other = shapes[(shapes.index(shape) + 1) % len(shapes)]
        swapped_text = re.sub(rf"\b{shape}\b", other, text)
        latent_pixel = pipe.vae_scale_factor / base.height
        for key, trace in (("swap_kept", run(swapped_text, edits=[Swap(base)])), ("same_seed_kept", run(swapped_text))):
            d = read(trace)
            counts[key].append(plain is not None and d is not None
                               and np.hypot(*np.subtract(d.center, plain.center)) <= latent_pixel)
            if key == "swap_kept":
                counts["swap_shape"].append(d is not None and d.shape == other)
        for key, edits in (("colour_unguided", []), ("colour_doubled", [Reweight(color, 2.0)])):
            d = read(run(scale=1.0, edits=edits))
            counts[key].append(d is not None and d.color == color)
    rate = lambda v: round(float(np.mean(v)), 4) if v else None  # noqa: E731
    return {**{k: rate(v) for k, v in counts.items()},
            "held_out": {k: rate([x for x, h in zip(v, held) if h]) for k, v in counts.items()}, "held_out_prompts": sum(held),
            "agreement": {cls: {"correlation": rate([c for c, _ in v]), "iou": rate([u for _, u in v])} for cls, v in classes.items()},
            "prompts": len(cases), "top": top}


def colour_removal(pipe, cases, seeds: int = 4, steps: int = 25, guidance: float = 7.5, seed: int = 10_000) -> dict:
    """How often ``Remove(colour)`` really takes the colour away, over many pictures: each single-object case drawn with
    ``seeds`` seeds (``seed + i + 1000·j``: far from the seeds :func:`intervention_effects` uses), plain and with its
    colour word removed, both read by the world's detector.

    Returns ``{"pictures": n, "colour_plain": share, "colour_removed": share, "colour_removed_when_plain_right": share,
    "by_colour": {colour: share removed-but-still-there}}``: the shares of pictures in which the object at the named
    place has the named colour.
    """
    from .recording.edits import Remove

    world, rows = world_of(pipe), []
    draws = [(i, j) for j in range(seeds) for i in range(len(cases))]
    for i, j in tqdm(draws, desc="Remove(colour)", unit="prompt"):
        text, objects, _ = cases[i]
        color, _, position = objects[0]
        kept = []
        for edits in ([], [Remove(color)]):
            trace = draw(pipe, text, steps, guidance, seed + i + 1000 * j, edits=edits)
            d = match_object(detect(trace.image, version=world), position, 1, world)
            kept.append(d is not None and d.color == color)
        rows.append((color, *kept))
    rate = lambda v: round(float(np.mean(v)), 4) if len(v) else None  # noqa: E731
    return {"pictures": len(rows), "prompts": len(cases), "seeds": seeds,
            "colour_plain": rate([p for _, p, _ in rows]), "colour_removed": rate([r for _, _, r in rows]),
            "colour_removed_when_plain_right": rate([r for _, p, r in rows if p]),
            "by_colour": {c: rate([r for colour, _, r in rows if colour == c]) for c in sorted({c for c, _, _ in rows})}}


def background_obedience(pipe, cases, seeds: int = 2, steps: int = 25, guidance: float = 7.5, seed: int = 20_000) -> dict:
    """Whether the background the prompt asks for is the one drawn: each single-object case's object phrase (the
    prompt up to its place) with "on a plain <colour> background" for every world background colour, drawn with
    ``seeds`` seeds, the picture's background read by :func:`~illustrated_sd.world.detect.background_of`.

    Returns ``{"pictures": n, "obeyed": share, "by_background": {colour: share}, "drawn_instead": {colour: {colour: n}}}``.
    """
    from .world.detect import background_of
    from .world.vocabulary import BACKGROUNDS

    rows = []
    # (a white object on a white background would ask for what cannot be seen: those pairs are left out)
    draws = [(i, j, bg) for j in range(seeds) for i in range(len(cases)) for bg in BACKGROUNDS if cases[i][1][0][0] != bg]
    for i, j, bg in tqdm(draws, desc="backgrounds", unit="prompt"):
        text = f"{cases[i][0]} on a plain {bg} background"
        trace = draw(pipe, text, steps, guidance, seed + i + 1000 * j)
        rows.append((bg, background_of(trace.image)))
    rate = lambda v: round(float(np.mean(v)), 4) if len(v) else None  # noqa: E731
    instead = {bg: {} for bg in BACKGROUNDS}
    for asked, drawn in rows:
        if drawn != asked:
            instead[asked][drawn] = instead[asked].get(drawn, 0) + 1
    return {"pictures": len(rows), "prompts": len(cases), "seeds": seeds, "obeyed": rate([a == d for a, d in rows]),
            "by_background": {bg: rate([a == d for a, d in rows if a == bg]) for bg in BACKGROUNDS}, "drawn_instead": instead}


NEAR = 2  # pixels: how close to an object a mark may lie in ghost_smudges' second count (stray_marks' own default is 4)


def ghost_smudges(pipe, cases, seeds: int = 2, steps: int = 25, guidance: float = 7.5, seed: int = 30_000) -> dict:
    """How often a picture holds a faint coloured smudge away from its objects (:func:`~illustrated_sd.world.detect.stray_marks`):
    every case drawn with ``seeds`` seeds, and — to know what the detector finds where there is none — as many of the
    world's own rendered held-out scenes.

    Returns ``{"pictures": n, "with_marks": share, "marks_per_picture": mean, "by_guidance": …, "world_renders_with_marks": share,
    "vae_round_trips_with_marks": share, "near_objects": …}``; the pictures are also drawn at guidance 1 (no guidance), to
    see whether guidance makes the smudges or only keeps them, and the world's pictures are also sent through the VAE
    alone (encode, decode), to see whether the decoder draws them without the UNet. ``near_objects`` counts again with
    marks allowed as close as ``NEAR`` pixels to an object (a smudge that touches it): there the objects' own soft edges
    are sometimes read as marks too, so it gives the world's renders' share beside the guided pictures'.
    """
    from .world import render, sample_scenes
    from .world.detect import stray_marks

    world = world_of(pipe)
    rows, near = {guidance: [], 1.0: []}, []
    draws = [(i, j, s) for s in rows for j in range(seeds) for i in range(len(cases))]
    for i, j, s in tqdm(draws, desc="smudges", unit="picture"):
        trace = draw(pipe, cases[i][0], steps, s, seed + i + 1000 * j)
        rows[s].append(len(stray_marks(trace.image, version=world)))
        if s == guidance:
            near.append(len(stray_marks(trace.image, version=world, clearance=NEAR)))
    images, _ = render(sample_scenes([seed, 7], len(rows[guidance]), held_out=True, version=world))
    renders = as_uint8(images)
    false = [len(stray_marks(picture, version=world)) > 0 for picture in renders]
    false_near = [len(stray_marks(picture, version=world, clearance=NEAR)) > 0 for picture in renders]
    # the same pictures through the VAE alone (encode, decode; no UNet): does the decoder draw the marks?
    decoded = [len(stray_marks(picture, version=world)) > 0 for picture in as_uint8(round_trip(pipe.vae, images))]
    share = lambda counts: round(float(np.mean([c > 0 for c in counts])), 4)  # noqa: E731
    return {"pictures": len(rows[guidance]), "prompts": len(cases), "seeds": seeds, "with_marks": share(rows[guidance]),
            "marks_per_picture": round(float(np.mean(rows[guidance])), 3),
            "by_guidance": {str(s): {"with_marks": share(c), "marks_per_picture": round(float(np.mean(c)), 3)} for s, c in rows.items()},
            "world_renders_with_marks": round(float(np.mean(false)), 4),
            "vae_round_trips_with_marks": round(float(np.mean(decoded)), 4),
            "near_objects": {"clearance": NEAR, "with_marks": share(near), "world_renders_with_marks": round(float(np.mean(false_near)), 4)}}


# ---- attention at scale (issue 19): every heatmap of a traced prompt set against the detector's masks ---------

def write_prompt_file(path, world: int = 2, seeds: int = 4, seed: int = 0) -> int:
    """The evaluation prompts (:func:`prompt_set`), each drawn with ``seeds`` seeds (``seed``, ``seed + 1``, …), as a
    JSONL prompt file for ``illustrated-sd batch``; returns how many rows it wrote."""
    rows = [{"prompt": text, "seed": seed + k} for text, _, _ in prompt_set(world=world) for k in range(seeds)]
    with atomic_write(Path(path), "prompt file") as tmp:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return len(rows)


def reads_the_picture(trace) -> bool:
    """Whether ``trace`` recorded where its words read the picture (a diffusion transformer's text→image attention)."""
    return "text_to_image" in (getattr(trace, "attention", None) or {})


def attention_at_scale(folder, world: int = 2, threshold: float = 0.4) -> dict:
    """Heatmaps against masks over a folder of ``illustrated-sd batch`` (compact traces will do) of evaluation prompts.

    For every object the picture drew right (the detector reads its colour and shape at its place), and for each of
    its words (colour, shape, position): DAAM's heatmap–mask IoU (:func:`heatmap_iou`) and the pointing game (does the
    heatmap's peak fall on the object?). Returns, per word class, the mean IoU and the pointing rate, with counts; for
    a diffusion transformer also ``"text_to_image"``: the same two scores for where each word *reads* the picture.
    """
    from .trace.sets import TraceSet

    cases = {text: objects for text, objects, _ in prompt_set(world=world)}
    traces = TraceSet(folder)
    scores = {kind: {"iou": [], "points": []} for kind in ("colour", "shape", "position")}
    reading = {kind: {"iou": [], "points": []} for kind in scores}  # text→image, where the trace has it
    named = drawn = 0
    for i, row in enumerate(tqdm(traces.rows, desc="heatmaps against masks")):
        objects = cases.get(row["prompt"])
        if objects is None:
            raise ValueError(f"{row['prompt']!r} ({row['file']}) is not an evaluation prompt of world {world}; write the set "
                             "with python -m illustrated_sd.evaluate --write-prompts FILE")
        trace = traces[i]
        found = detect(trace.image, version=world)
        for color, shape, position in objects:
            named += 1
            d = match_object(found, position, len(objects), world)
            if d is None or (d.color, d.shape) != (color, shape):
                continue  # a heatmap of an object that is not there has nothing to agree with
            drawn += 1
            for kind, word in (("colour", color), ("shape", shape), ("position", position)):
                maps = [(scores, trace.cross_attention(word))]
                if reads_the_picture(trace):
                    maps.append((reading, trace.text_to_image(word)))
                for table, heat in maps:
                    table[kind]["iou"].append(heatmap_iou(heat, d.mask, threshold))
                    table[kind]["points"].append(points_inside(heat, d.mask))
    mean = lambda v: round(float(np.mean(v)), 4) if v else None  # noqa: E731
    summarize = lambda table: {kind: {"iou": mean(s["iou"]), "pointing": mean(s["points"]), "words": len(s["iou"])}  # noqa: E731
                               for kind, s in table.items()}
    result = {"traces": len(traces), "objects_named": named, "objects_drawn_right": drawn, "threshold": threshold, **summarize(scores)}
    if reading["colour"]["iou"]:
        result["text_to_image"] = summarize(reading)
    return result


def vae_sha256(model_folder) -> str:
    """The SHA-256 of a pipeline folder's VAE weights file: which decoder a stored measurement was made with (notebook
    02 checks that ``docs/decoder_marks.json`` measured the embedded decoder, not one shipped before it)."""
    from .models.loading import weights_sha256

    return weights_sha256(model_folder, "vae")


@torch.no_grad()
def round_trip(vae, images: torch.Tensor) -> torch.Tensor:
    """Encode ``images`` ``[N, 3, H, W]`` in [-1, 1] (the posterior's mode: its mean) and decode them again:
    ``[N, 3, H, W]`` float in [-1, 1], on the VAE's device. The VAE alone, no UNet: what the decoder does to a latent
    it was made for."""
    latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mode()
    return vae.decode(latents).sample.float().clamp(-1, 1)


@torch.no_grad()
def vae_psnr(pipe, n: int = 256, seed: int = 424242) -> dict:
    """Round-trip ``n`` world images (a seed training never used) through the VAE.

    Reports the PSNR in dB on [0, 1] pixels, and how many objects the detector still reads right
    (colour and shape) after the round trip: a ceiling for the whole model, since every generated
    picture passes through the same decoder. Beside it, the same reading of the original pictures:
    the detector's own ceiling, so that what the round trip loses is the VAE's.
    """
    from .world import render, sample_scenes

    world = world_of(pipe)
    scenes = sample_scenes(seed, n, version=world)
    images, _ = render(scenes)
    vae = pipe.vae
    scores, right, right_originals = [], [], []
    for start in range(0, n, 32):
        batch = images[start : start + 32].to(pipe.device, vae.dtype)
        recon = round_trip(vae, batch)
        mse = (((recon + 1) / 2 - (batch.float() + 1) / 2) ** 2).mean(dim=(1, 2, 3))
        scores.append(10 * torch.log10(1 / mse))
        right += _objects_read_right(scenes[start : start + 32], recon, world)
        right_originals += _objects_read_right(scenes[start : start + 32], batch.float(), world)
    scores = torch.cat(scores)
    return {"vae_psnr_db_mean": round(scores.mean().item(), 2), "vae_psnr_db_min": round(scores.min().item(), 2), "vae_images": n,
            "vae_roundtrip_objects_right": round(float(np.mean(right)), 4),
            "originals_objects_right": round(float(np.mean(right_originals)), 4)}


def objects_read(scenes, images: torch.Tensor, world: int) -> list[tuple]:
    """For each object of ``scenes``, in order: ``(object, detection)``, what the detector read where it should be in
    ``images`` ``[B, 3, H, W]`` in [-1, 1] (``detection`` is ``None`` where it found nothing there)."""
    read = []
    for scene, picture in zip(scenes, as_uint8(images), strict=True):
        found = detect(picture, version=world)
        read += [(obj, match_object(found, obj.position, len(scene.objects), world)) for obj in scene.objects]
    return read


def _objects_read_right(scenes, images: torch.Tensor, world: int) -> list[bool]:
    """For each object of ``scenes``: does the detector read its colour and shape in ``images`` ``[B, 3, H, W]`` in [-1, 1]?"""
    return [d is not None and (d.color, d.shape) == (obj.color, obj.shape) for obj, d in objects_read(scenes, images, world)]


def main(argv=None) -> int:
    parser = OneLineParser(prog="python -m illustrated_sd.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="diffusers folder (default: the embedded model)")
    parser.add_argument("--out", type=Path, default=Path("outputs/evaluation.json"))
    parser.add_argument("--steps", type=checks.positive_int, default=None, help="default: the model's own (25 for the embedded models)")
    parser.add_argument("--guidance", type=checks.finite_float, default=None,
                        help="default: the model's own (tiny-sd: 7.5; tiny-flux: real CFG 4)")
    parser.add_argument("--seed", type=checks.natural_int, default=0, help="prompt i is drawn with seed SEED + i (default: %(default)s)")
    parser.add_argument("--only", choices=list(GROUPS), default=None, help="grade one group of prompts only")
    parser.add_argument("--seeds", type=checks.positive_int, default=3, help="draw every prompt this many times (default: %(default)s)")
    parser.add_argument("--limit", type=checks.positive_int, default=None, help="grade only the first N prompts (a quick check)")
    parser.add_argument("--examples", type=Path, default=None, help="save every 10th image here")
    parser.add_argument("--phenomena", type=checks.positive_int, default=0, metavar="N",
                        help="also measure, on N single-object prompts, the guidance curve, the x̂₀ sharpness and the "
                             "samplers' agreement (what the course shows), and the guidance curve on N pair prompts; 0 = skip (default)")
    parser.add_argument("--interventions", type=checks.natural_int, default=0, metavar="N",
                        help="also take words out of N held-out and single-object prompts (issue 17's measurements); 0 = skip (default)")
    parser.add_argument("--interventions-only", action="store_true", help="measure the interventions only (with --interventions N)")
    parser.add_argument("--backgrounds", type=checks.natural_int, default=0, metavar="K",
                        help="only measure whether the background the prompt asks for is drawn: 12 single-object prompts with "
                             "'on a plain <colour> background' for each background colour, K seeds each (0 = skip, default)")
    parser.add_argument("--smudges", type=checks.natural_int, default=0, metavar="K",
                        help="only measure how often a faint coloured smudge sits away from the objects: 24 single-object "
                             "prompts, K seeds each, guided and unguided (0 = skip, default)")
    parser.add_argument("--remove-colour", type=checks.natural_int, default=0, metavar="K",
                        help="only measure how often Remove(colour) takes the colour away: every held-out single-object prompt "
                             "drawn with K seeds unlike the interventions' (0 = skip, default)")
    parser.add_argument("--phenomena-only", action="store_true",
                        help="measure the phenomena only, not the accuracy (to run the two side by side: scripts/evaluate_gpu.sh)")
    parser.add_argument("--device", default="cpu", help="where to generate (cuda is faster; figures differ from the CPU's in rare cases)")
    parser.add_argument("--write-prompts", type=Path, default=None, metavar="FILE",
                        help="only write the evaluation prompts, each with --seeds seeds, as a JSONL file for illustrated-sd batch")
    parser.add_argument("--trace-set", type=Path, default=None, metavar="DIR",
                        help="only measure heatmaps against the detector's masks (IoU, pointing) over DIR, made by illustrated-sd "
                             "batch from --write-prompts' file (scripts/attention_at_scale.sh)")
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    try:
        run(args)
    except (ValueError, TypeError, OSError, ModelLoadError) as err:
        print(f"{parser.prog}: error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


def phenomena_prompts(cases, n: int) -> tuple[list, list]:
    """``n`` single-object and ``n`` two-object prompts of ``cases`` for the phenomena, spread evenly over each
    group (every k-th), so they cover the colours, shapes and places."""
    groups = [prompt_group(cases, group) for group in ("single", "pairs")]
    return tuple(g[:: max(1, len(g) // n)][:n] for g in groups)


def run(args) -> None:
    """Grade the model as ``args`` say and write ``args.out``; every path is checked before the first picture."""
    device = checks.device(args.device)
    if args.write_prompts is not None:  # a prompt file for `illustrated-sd batch`, nothing else
        world = world_of(load_pipeline(args.model))
        print(f"wrote {write_prompt_file(args.write_prompts, world=world, seeds=args.seeds, seed=args.seed)} prompts to {args.write_prompts}")
        return
    check_replaceable(args.out, "--out file")
    check_writable_folder(args.out.parent)
    if args.examples is not None:
        check_writable_folder(args.examples)
    if args.phenomena_only and not args.phenomena:
        raise ValueError("--phenomena-only needs --phenomena N (how many prompts to measure them on)")
    if args.interventions_only and not args.interventions:
        raise ValueError("--interventions-only needs --interventions N (how many prompts to take words out of)")
    pipe = load_pipeline(args.model, device=device)
    # each model is graded as it is meant to run (model_defaults): SD's 7.5 would over-guide tiny-flux's real CFG
    defaults = model_defaults(args.model)
    args.steps = defaults["steps"] if args.steps is None else args.steps
    args.guidance = defaults["guidance"] if args.guidance is None else args.guidance
    everything = prompt_set(world=world_of(pipe))
    single = prompt_group(everything, "single")
    every_kth = lambda cases, n: cases[:: max(1, len(cases) // n)][:n]  # noqa: E731  n cases spread over the group
    measured = dict(steps=args.steps, guidance=args.guidance)
    alone = [  # (seeds asked for, its key, how): each of these measurements runs by itself, the first asked for
        (args.backgrounds, "background_obedience", lambda k: background_obedience(pipe, every_kth(single, 12), seeds=k, **measured)),
        (args.smudges, "ghost_smudges", lambda k: ghost_smudges(pipe, every_kth(single, 24), seeds=k, **measured)),
        (args.remove_colour, "colour_removal", lambda k: colour_removal(pipe, prompt_group(everything, "held-out"), seeds=k, **measured)),
    ]
    asked = [(seeds, key, measure) for seeds, key, measure in alone if seeds]
    if asked:
        seeds, key, measure = asked[0]
        start = time.time()
        result = {"settings": {"steps": args.steps, "guidance": args.guidance, "model": pipe.name, "world": world_of(pipe)},
                  key: measure(seeds)}
        result[key]["seconds"] = round(time.time() - start, 1)
    elif args.trace_set is not None:  # heatmaps against masks over a traced prompt set, nothing else
        start = time.time()
        result = {"settings": {"trace_set": str(args.trace_set), "world": world_of(pipe)},
                  "attention_at_scale": attention_at_scale(args.trace_set, world=world_of(pipe))}
        result["attention_at_scale"]["seconds"] = round(time.time() - start, 1)
    elif args.phenomena_only or args.interventions_only:  # no accuracy grading
        result = {"settings": {"steps": args.steps, "seed": args.seed, "seeds": args.seeds, "model": pipe.name, "world": world_of(pipe)}}
    else:
        cases = everything if args.only is None else prompt_group(everything, args.only)
        cases = cases[: args.limit]
        start = time.time()
        result = evaluate(pipe, cases, steps=args.steps, guidance=args.guidance, examples_dir=args.examples, seeds=args.seeds,
                          seed=args.seed)
        result["settings"]["seconds"] = round(time.time() - start, 1)
        result["summary"].update(vae_psnr(pipe))
    if args.phenomena:
        start = time.time()
        chosen, pairs = phenomena_prompts(everything, args.phenomena)
        result["phenomena"] = {"guidance_curve": guidance_curve(pipe, chosen, seeds=args.seeds, steps=args.steps, seed=args.seed),
                               # with two objects to get right, the prompt's words matter more: guidance too
                               "guidance_curve_pairs": guidance_curve(pipe, pairs, seeds=args.seeds, steps=args.steps, seed=args.seed),
                               "x0_sharpness": x0_sharpness(pipe, chosen, steps=args.steps, guidance=args.guidance, seed=args.seed),
                               "x0_sharpness_unguided": x0_sharpness(pipe, chosen, steps=args.steps, guidance=1.0, seed=args.seed),
                               # (the flow models have one sampler: the Euler step of the straight path)
                               **({} if getattr(pipe, "family", None) else
                                  {"sampler_agreement": sampler_agreement(pipe, chosen, steps=args.steps, guidance=args.guidance, seed=args.seed)}),
                               "prompts": [text for text, _, _ in chosen], "pair_prompts": [text for text, _, _ in pairs],
                               "seconds": round(time.time() - start, 1)}
    if args.interventions:
        start = time.time()
        held, single = prompt_group(everything, "held-out"), prompt_group(everything, "single")
        chosen = (held + single[:: max(1, len(single) // args.interventions)])[: args.interventions]
        result["interventions"] = {**intervention_effects(pipe, chosen, steps=args.steps, guidance=args.guidance, seed=args.seed),
                                   "seconds": round(time.time() - start, 1)}
    result["settings"]["torch_threads"] = torch.get_num_threads()
    result["settings"]["device"] = str(device)  # cuda and the CPU draw the same pictures but for rare pixels
    with atomic_write(args.out, "--out file") as tmp:
        tmp.write_text(json.dumps(result, indent=1))
    shown = {key: result[key] for key in ("summary", "phenomena", "interventions", "attention_at_scale", "colour_removal", "background_obedience") if key in result}
    print(json.dumps(shown, indent=1))


if __name__ == "__main__":
    sys.exit(main())
