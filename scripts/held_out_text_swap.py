"""Where does tiny-flux lose a held-out pair's colour? Its text encoders read swapped prompts.

tiny-flux reads a prompt twice: T5's token vectors (the joint attention) and CLIP's pooled vector (every block's
shift, scale and gate). A held-out pair ("an orange heart") was never in a training caption, so each encoder meets a
sentence it never read. Here the held-out prompts are drawn as ``python -m illustrated_sd.evaluate --model tiny-flux
--only held-out`` draws them (the same prompts and seeds) with one reading changed:

- CLIP reads a *seen* pair (the held-out shape word replaced by a shape that colour was trained with: "an orange
  circle"), T5 the prompt as it is; or CLIP reads the prompt without the held-out colour;
- T5 reads the seen pair: the shape follows T5, so this draws the seen pair's shape too, and a better colour then
  says little about where the held-out one slips;
- T5's colour word *alone* takes its vector from the seen pair's prompt, every other vector (the shape word's, CLIP's
  pooled one) as it is: what the colour word's own vector does.

A variant that stops the colour slipping points at what it changed, as long as it changed nothing else.

    python scripts/held_out_text_swap.py [--model tiny-flux] [--seeds 3] [--only VARIANT] [--out docs/flux_candidates/part4x2-cpu-text-swap.json]
"""

import argparse
import collections
import json
import re
from pathlib import Path

import torch

import illustrated_sd as isd
from illustrated_sd.evaluate import evaluate, prompt_group, prompt_set
from illustrated_sd.models.loading import model_defaults
from illustrated_sd.world import HELD_OUT

SEEN_SHAPE = {"star": "circle", "heart": "circle", "triangle": "square", "circle": "square"}  # each pair's colour is trained with these


def seen_pair(text: str) -> str:
    """``"an orange heart on the left"`` → ``"an orange circle on the left"``: the held-out pair made a trained one."""
    for colour, shape in HELD_OUT:
        text = text.replace(f"{colour} {shape}", f"{colour} {SEEN_SHAPE[shape]}")
    return text


def without_colour(text: str) -> str:
    """``"an orange heart on the left"`` → ``"a heart on the left"``."""
    for colour, shape in HELD_OUT:
        text = re.sub(rf"\ban? {colour} {shape}", f"a {shape}", text)
    return text


def readers(encode, clip, t5):
    """FluxPipeline's ``encode`` (its ``encode_prompt``: CLIP reads ``prompt``, T5 ``prompt_2``) with CLIP reading
    ``clip(prompt)`` and T5 reading ``t5(prompt)``."""
    def each(change, prompt):
        return [change(p) for p in prompt] if isinstance(prompt, list) else change(prompt)

    def encode_prompt(prompt, prompt_2=None, **kwargs):
        return encode(prompt=each(clip, prompt), prompt_2=each(t5, prompt if prompt_2 is None else prompt_2), **kwargs)
    return encode_prompt


def as_is(text: str) -> str:
    return text


def colour_from_seen_pair(encode, tokenizer):
    """FluxPipeline's ``encode`` with one T5 vector changed: the held-out pair's colour word takes its vector from the
    seen pair's prompt (``seen_pair``), every other vector (the shape's included) and CLIP's pooled vector as they are.
    This isolates the colour word: swapping the whole prompt for T5 also swaps the shape it draws."""
    held_out = [(tokenizer(c, add_special_tokens=False).input_ids[0], tokenizer(s, add_special_tokens=False).input_ids[0])
                for c, s in HELD_OUT]

    def encode_prompt(prompt, prompt_2=None, **kwargs):
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        embeds, pooled, text_ids = encode(prompt=prompt, prompt_2=prompt_2, **kwargs)
        seen = encode(prompt=prompt, prompt_2=[seen_pair(p) for p in prompts], **kwargs)[0]
        embeds = embeds.clone()
        for row, text in enumerate(prompts):
            ids = tokenizer(text).input_ids
            for i in range(len(ids) - 1):
                if (ids[i], ids[i + 1]) in held_out:
                    embeds[row, i] = seen[row, i]
        return embeds, pooled, text_ids
    return encode_prompt


VARIANTS = {"as the pipeline reads it": (as_is, as_is), "CLIP reads a seen pair": (seen_pair, as_is),
            "T5 reads a seen pair": (as_is, seen_pair), "CLIP reads it without the colour": (without_colour, as_is),
            "T5's colour word alone from a seen pair": (None, None)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--model", default="tiny-flux", help="an embedded model's name or a tiny-flux folder (beside tiny-sd's)")
    parser.add_argument("--only", default=None, help="one variant's name (default: all)")
    parser.add_argument("--out", type=Path, default=Path("docs/flux_candidates/part4x2-cpu-text-swap.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pipe = isd.load_pipeline(args.model)
    defaults = {key: model_defaults("tiny-flux")[key] for key in ("steps", "guidance")}
    cases = prompt_group(prompt_set(world=2), "held-out")
    flux = pipe.pipeline
    encode = flux.encode_prompt
    result = {"command": "python scripts/held_out_text_swap.py", "model": args.model, "seeds": args.seeds, "torch_threads": torch.get_num_threads()}
    try:
        for name, (clip, t5) in VARIANTS.items():
            if args.only not in (None, name):
                continue
            flux.encode_prompt = readers(encode, clip, t5) if clip else colour_from_seen_pair(encode, flux.tokenizer_2)
            rows = evaluate(pipe, cases, seeds=args.seeds, **defaults)
            missed = collections.Counter(f"{c['prompt'].split()[1]} → {(o['read'] or ['nothing'])[0]}"
                                         for c in rows["cases"] for o in c["objects"] if not o["color"])
            summary = rows["summary"]
            result[name] = {"colour": summary["held_out_color_accuracy"], "shape": summary["held_out_shape_accuracy"],
                            "pictures": summary["held_out_prompts"], "colours_missed": dict(missed.most_common())}
            print(f"{name:34s} colour {summary['held_out_color_accuracy']:.1%}  shape {summary['held_out_shape_accuracy']:.1%}  "
                  f"missed {dict(missed.most_common())}", flush=True)
    finally:
        flux.encode_prompt = encode
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
