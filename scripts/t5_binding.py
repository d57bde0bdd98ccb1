"""Does a text encoder bind a colour to its shape? The vector of a pair prompt's shape word, compared with the same
word's vector in the prompt whose two colours are swapped.

    "a red circle on the left and a blue square on the right"     the vector of "circle"
    "a blue circle on the left and a red square on the right"     the vector of "circle" again

and the vector of a colour word, compared with the same word's vector in the swapped prompt, where it describes the
other object ("red" of the circle, then "red" of the square).

Flux gives every text token the same RoPE position (its ``txt_ids`` are zeros), so the transformer reads T5's vectors
as a *set*: if "circle" has the same vector after "red" as after "blue", and "red" the same vector before "circle" as
before "square", the two prompts hand it the same set and it cannot know which colour goes where. Cosines of 1.000
mean exactly that. CLIP's causal tower (tiny-sd 2's, beside it) writes the words before a word into its vector.

    python scripts/t5_binding.py --model NAME=FOLDER ... [--prompts 48] [--out docs/t5_binding.json]

Each FOLDER is a tiny-flux pipeline folder (default: the shipped one, as ``shipped``).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import illustrated_sd as isd
from illustrated_sd.models.transformers import TINY_FLUX
from illustrated_sd.world import COLORS, SHAPES_2
from illustrated_sd.world.scenes import with_articles
from illustrated_sd.world.vocabulary import PAIRS, POSITION_PHRASES

def pair_prompts(n: int, seed: int = 0) -> list[tuple[str, str, str, str]]:
    """``n`` pairs of prompts ``(prompt, swapped, shape_1, shape_2)``: two objects of different colours and shapes at a
    pair of the world's places, and the same prompt with the two colours swapped."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c1, c2 = rng.choice(list(COLORS), 2, replace=False)
        s1, s2 = rng.choice(list(SHAPES_2), 2, replace=False)
        p1, p2 = PAIRS[rng.integers(len(PAIRS))]
        text = lambda a, b: with_articles(f"a {a} {s1} {POSITION_PHRASES[p1][0]} and a {b} {s2} {POSITION_PHRASES[p2][0]}")  # noqa: E731
        out.append((text(c1, c2), text(c2, c1), str(s1), str(s2)))
    return out


@torch.no_grad()
def word_cosines(tokenizer, encoder, prompts, length: int) -> dict[str, list[float]]:
    """``{"shape": [...], "colour": [...]}``: the cosine of each shape word's vector in a prompt and in its swapped twin
    (both shapes of every pair), and of each colour word's vector in the prompt and where the twin puts it. Each prompt
    is padded to ``length`` slots with no attention mask, as the pipelines hand it to their encoders (a bidirectional
    encoder reads the padding too)."""
    cosines = {"shape": [], "colour": []}
    for prompt, swapped, *shapes in prompts:
        ids = [tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids
               for text in (prompt, swapped)]
        states = [encoder(i)[0][0] for i in ids]
        tokens = [[t.lstrip("▁").removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(i[0])] for i in ids]
        for shape in shapes:  # the world's words are one piece each
            at = tokens[0].index(shape)
            cosines["shape"].append(F.cosine_similarity(states[0][at], states[1][at], dim=0).item())
        for colour in (w for w in tokens[0] if w in COLORS):
            here, there = tokens[0].index(colour), tokens[1].index(colour)
            cosines["colour"].append(F.cosine_similarity(states[0][here], states[1][there], dim=0).item())
    return cosines


def summary(cosines: dict[str, list[float]]) -> dict:
    """Per kind of word: the mean and least cosine, and the share at 0.999 or more (the same vector, as good as)."""
    return {kind: {"mean": round(float(np.mean(c)), 4), "min": round(float(np.min(c)), 4),
                   "at_least_0.999": round(float(np.mean(np.array(c) >= 0.999)), 4)} for kind, c in cosines.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], help="NAME=FOLDER of a tiny-flux pipeline (repeatable)")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("docs/t5_binding.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    models = dict(m.split("=", 1) for m in args.model) or {"shipped": "tiny-flux"}
    prompts = pair_prompts(args.prompts)
    result = {"prompts": len(prompts), "example": prompts[0][:2], "t5": {}}
    for name, folder in models.items():
        pipe = isd.load_pipeline(folder).pipeline
        result["t5"][name] = summary(word_cosines(pipe.tokenizer_2, pipe.text_encoder_2, prompts, TINY_FLUX["max_sequence_length"]))
        print(f"T5 ({name}): {result['t5'][name]}", flush=True)
    sd = isd.load_pipeline().pipeline
    result["clip_tiny_sd"] = summary(word_cosines(sd.tokenizer, sd.text_encoder, prompts, sd.tokenizer.model_max_length))
    print(f"CLIP (tiny-sd 2): {result['clip_tiny_sd']}", flush=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
