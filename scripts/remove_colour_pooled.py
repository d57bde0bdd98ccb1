"""Does CLIP's pooled vector keep a removed colour in tiny-flux's pictures?

``Remove(colour)`` takes the colour word out of the attention (T5's slot), but Flux also reads CLIP's pooled vector of
the whole prompt, which sets every block's shift, scale and gate (AdaLN) and still names the colour. Here the same
measurement as ``python -m illustrated_sd.evaluate --model tiny-flux --remove-colour 4`` (the held-out single-object
prompts, the same seeds) runs twice: as the pipeline is, and with CLIP reading the prompt without its colour words
(FluxPipeline's ``prompt`` goes to CLIP, ``prompt_2`` to T5; T5 still reads the whole prompt).

    python scripts/remove_colour_pooled.py [--seeds 4] [--out docs/flux_candidates/part4-cpu-remove-colour-pooled.json]
"""

import argparse
import json
import re
from pathlib import Path

import torch

import illustrated_sd as isd
from illustrated_sd.evaluate import colour_removal, prompt_group, prompt_set
from illustrated_sd.models.loading import model_defaults
from illustrated_sd.world import COLORS
from illustrated_sd.world.scenes import with_articles

COLOUR_WORDS = re.compile(rf"\b({'|'.join(COLORS)}) ")


def without_colours(text: str) -> str:
    """``"an orange heart on the left"`` → ``"a heart on the left"``."""
    return with_articles(re.sub(r"\ban ", "a ", COLOUR_WORDS.sub("", text)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("docs/flux_candidates/part4-cpu-remove-colour-pooled.json"))
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    pipe = isd.load_pipeline("tiny-flux")
    defaults = {key: model_defaults("tiny-flux")[key] for key in ("steps", "guidance")}
    cases = prompt_group(prompt_set(world=2), "held-out")
    result = {"command": "python scripts/remove_colour_pooled.py", "as_is": colour_removal(pipe, cases, seeds=args.seeds, **defaults)}
    flux, encode = pipe.pipeline, pipe.pipeline.encode_prompt

    def clip_without_colours(prompt, prompt_2=None, **kwargs):  # CLIP reads `prompt`, T5 `prompt_2` (default: the same)
        prompt_2 = prompt if prompt_2 is None else prompt_2
        clip_prompt = [without_colours(p) for p in prompt] if isinstance(prompt, list) else without_colours(prompt)
        return encode(prompt=clip_prompt, prompt_2=prompt_2, **kwargs)

    flux.encode_prompt = clip_without_colours
    try:
        result["pooled_without_colours"] = colour_removal(pipe, cases, seeds=args.seeds, **defaults)
    finally:
        flux.encode_prompt = encode
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name in ("as_is", "pooled_without_colours"):
        r = result[name]
        print(f"{name:24s} colour drawn {r['colour_plain']:.1%}; after Remove(colour) {r['colour_removed']:.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
