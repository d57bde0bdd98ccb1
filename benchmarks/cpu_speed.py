"""Seconds per image of an embedded model on this machine's CPU: traced (the default recording) vs plain diffusers,
same components, the model's own steps and guidance (tiny-sd 2: 25 steps, guidance 7.5; tiny-flux: 25 steps, true
CFG 4), rounds alternating, the order reversed every other round.

    python benchmarks/cpu_speed.py --threads 2 --out docs/cpu_speed.json
    python benchmarks/cpu_speed.py --model tiny-flux --rounds 20 --out docs/cpu_speed_tiny_flux.json
    python benchmarks/cpu_speed.py --model tiny-flux-fast --untrained --steps 1 --rounds 20 --out docs/cpu_speed_tiny_flux_fast.json

``--untrained`` times a model the package has not shipped yet (tiny-flux, tiny-flux-fast before their training) with
weights from three smoke steps of its training stages: the same architecture, and speed does not depend on the
weights' values. ``--steps`` defaults to the model's own (25; tiny-flux-fast 4).
"""

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import illustrated_sd as isd
from illustrated_sd.paths import TINY_SD

PROMPT = "a yellow triangle on the left and a purple heart on the right"


def untrained(name: str, root: Path) -> Path:
    """``name``'s folder exported from smoke-trained stages into ``root``, beside a link to the shipped tiny-sd (whose
    parts it shares); tiny-flux-fast beside the tiny-flux it is distilled from."""
    from illustrated_sd.train.__main__ import main as train  # the benchmark, not the runtime, may train

    if name not in ("tiny-flux", "tiny-flux-fast"):
        raise SystemExit(f"--untrained knows tiny-flux and tiny-flux-fast, not {name!r}")
    (root / "tiny-sd").symlink_to(TINY_SD)
    train(["run", "--smoke", "--stages", "t5,flux", "--minutes", "1,1", "--out", str(root / "ckpt")])
    train(["export", str(root / "ckpt"), str(root / "tiny-flux")])
    if name == "tiny-flux-fast":
        train(["run", "--smoke", "--stages", "pairs,reflow", "--minutes", "1,1", "--teacher", str(root / "tiny-flux"),
               "--out", str(root / "fast-ckpt")])
        train(["export", str(root / "fast-ckpt"), str(root / name)])
    return root / name


def calls(pipe, steps: int):
    """The traced call and plain diffusers' call with the same settings: the model's defaults for ``steps`` steps."""
    if isinstance(pipe, isd.FlowPipeline):
        d = pipe.call_defaults()
        plain_kwargs = {k: d[k] for k in ("guidance_scale", "max_sequence_length", "negative_prompt")}
        if pipe.family == "flux":
            plain_kwargs["true_cfg_scale"] = d["true_cfg_scale"]
        guidance = d[next(iter(pipe.guidance_option(1.0)))]  # the model's default for the option it reads
    else:
        guidance, plain_kwargs = 7.5, dict(guidance_scale=7.5)

    def traced():
        pipe(PROMPT, num_inference_steps=steps, seed=0, progress=False, **pipe.guidance_option(guidance))

    def plain():
        pipe.pipeline(PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **plain_kwargs)

    return traced, plain, guidance


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd", help="an embedded model's name or a folder (default tiny-sd)")
    parser.add_argument("--untrained", action="store_true", help="time a model not shipped yet, with smoke-trained weights")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", "--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's own)")
    parser.add_argument("--out", type=Path, default=Path("docs/cpu_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        pipe = isd.load_pipeline(untrained(args.model, Path(tmp)) if args.untrained else args.model)
        args.steps = args.steps or (pipe.call_defaults()["num_inference_steps"] if isinstance(pipe, isd.FlowPipeline) else 25)
        traced, plain, guidance = calls(pipe, args.steps)
        runs = {"traced": [], "plain": []}
        traced(), plain()  # warm-up
        for i in range(args.rounds):
            for name, fn in (("traced", traced), ("plain", plain))[::1 if i % 2 == 0 else -1]:
                start = time.perf_counter()
                fn()
                runs[name].append(time.perf_counter() - start)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}",
        "model": args.model + (" (untrained: smoke weights, the same architecture)" if args.untrained else ""),
        "steps": args.steps, "guidance": guidance, "prompt": PROMPT, "rounds": args.rounds,
        **{f"{name}_s_min": round(min(v), 3) for name, v in runs.items()},
        **{f"{name}_s_median": round(statistics.median(v), 3) for name, v in runs.items()},
    }
    result["traced_over_plain_median"] = round(result["traced_s_median"] / result["plain_s_median"], 3)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
