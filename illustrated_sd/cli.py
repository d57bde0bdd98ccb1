"""The command line: ``illustrated-sd explain "a red circle on the left" --out DIR``."""

import argparse
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="illustrated-sd", description="Stable Diffusion that shows its work.")
    sub = parser.add_subparsers(dest="command", required=True)
    explain = sub.add_parser("explain", help="generate one image and write an explained report (report.html) of how it was made",
                             description="Generate one image, record how it was made, and write to --out: report.html (one "
                                         "self-contained page explaining each part), the figures as PNGs, the image, "
                                         "and the trace (trace.safetensors, readable with isd.Trace.load).")
    explain.add_argument("prompt", help='what to draw, e.g. "a red circle on the left"')
    explain.add_argument("--out", default="outputs/explain", help="folder to write into (default: %(default)s)")
    explain.add_argument("--steps", type=int, default=25, help="denoising steps (default: %(default)s)")
    explain.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default: %(default)s)")
    explain.add_argument("--seed", type=int, default=0, help="seed of the initial noise (default: %(default)s)")
    explain.add_argument("--negative", default=None, help="negative prompt")
    explain.add_argument("--model", default=None, help="diffusers folder or Hub id (default: the embedded tiny model)")
    explain.add_argument("--device", default="cpu", help="cpu, cuda, … (default: %(default)s)")
    explain.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="(default: %(default)s)")
    explain.add_argument("--scheduler", default=None, help="ddim, euler, dpm++, pndm, … (default: the model's)")
    return parser


def explain(args) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import illustrated_sd as isd
    from illustrated_sd.report import write_report

    pipe = isd.load_pipeline(args.model, device=args.device, dtype=DTYPES[args.dtype], scheduler=args.scheduler)
    trace = pipe(args.prompt, num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed, negative_prompt=args.negative)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Write everything into a scratch folder first and move it in at the end: no half-written output.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp:
        tmp = Path(tmp)
        trace.save(tmp / "trace.safetensors")
        write_report(trace, tmp, scheduler=pipe.scheduler, decode=pipe.decode_latents)
        (tmp / "summary.txt").write_text(summary(trace) + "\n")
        out.mkdir(exist_ok=True)
        for f in tmp.iterdir():
            shutil.move(str(f), out / f.name)
    return out


def summary(trace) -> str:
    lines = [repr(trace), f"tokens: {trace.tokens}"]
    if trace.truncated_text:
        lines.append(f"dropped (over 77 tokens): {trace.truncated_text}")
    for token in trace.tokens[1:-1]:
        heat = trace.cross_attention(token)
        y, x = divmod(int(heat.argmax()), heat.shape[1])
        lines.append(f"  {token!r:>14}: attention peaks at latent pixel (row {y}, col {x}) of {tuple(heat.shape)}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            out = explain(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"illustrated-sd: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}/\nopen {out / 'report.html'} in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
